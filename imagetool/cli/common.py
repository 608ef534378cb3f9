"""Helpers shared by the command modules: output, progress, size options."""

from __future__ import annotations

import json
import os
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


def bar_size(stream: Any = None) -> dict:
    """tqdm size options: follow the terminal, or 80x100 where it reports a
    zero size (a fresh pty, some serial consoles say 0x0, and tqdm would
    then draw empty lines or hide every positioned bar)."""
    stream = sys.stderr if stream is None else stream
    try:
        columns, lines = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        columns = lines = 0
    opts: dict = {"dynamic_ncols": True} if columns > 0 else {"ncols": 80}
    if lines <= 0:
        opts["nrows"] = 100
    return opts


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
               unit_divisor=1024, leave=True, **bar_size())
    try:
        yield bar.update
    finally:
        bar.close()
