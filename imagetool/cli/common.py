"""Helpers shared by the command modules: output, progress, size options."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import click
from tqdm import tqdm

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


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool | None = None) -> Iterator[Any]:
    """A tqdm byte bar on a terminal; a no-op callable when piped.

    Yields ``update(nbytes)``.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n: None
        return
    bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True,
               unit_divisor=1024, dynamic_ncols=True, leave=True)
    try:
        yield bar.update
    finally:
        bar.close()
