"""Helpers shared by the command modules: output and size options."""

from __future__ import annotations

import json
from typing import Any

import click

from imagetool.units import parse_size


class SizeParam(click.ParamType):
    """A click parameter accepting ``4M``, ``1.5G``, ``512``."""

    name = "size"

    def convert(self, value: Any, param, ctx) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


SIZE = SizeParam()


def emit_json(obj: Any) -> None:
    """Print one JSON document on stdout (for ``--json``)."""
    click.echo(json.dumps(obj, indent=2, sort_keys=True))
