"""Helpers shared by the command modules: output and size options."""

from __future__ import annotations

import functools
import json
from dataclasses import fields
from typing import Any, Callable

import click

from imagetool.units import format_seconds, format_size, parse_size


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
JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def option_group(cls: type, name: str, options: list[Callable]) -> Callable:
    """Click decorator: ``options``, one per field of the dataclass ``cls``,
    handed to the command as one argument ``name: cls``."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in fields(cls)})
            return fn(*args, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper
    return decorate


def checksum_json(entry: dict) -> dict:
    """``entry`` with its guest-data checksum in the one shape every
    ``--json`` gives (``GuestChecksum.to_json``, upload's). Library results
    carry a bare ``checksum`` value beside its ``algorithm`` (and
    ``block_size`` where it is not imageio's default); both move into the
    object. Entries without a checksum are unchanged."""
    from imagetool.checksum import DEFAULT_BLOCK_SIZE, GuestChecksum

    value = entry.get("checksum")
    if not isinstance(value, str):
        return entry
    out = {k: v for k, v in entry.items() if k not in ("algorithm", "block_size")}
    out["checksum"] = GuestChecksum(value, entry["algorithm"],
                                    entry.get("block_size") or DEFAULT_BLOCK_SIZE).to_json()
    return out


def moved(r: Any) -> str:
    """``1.00 GiB in 2.0 s (512.00 MiB/s)``: what a transfer result moved."""
    rate = r.bytes / r.seconds if r.seconds else 0
    return (f"{format_size(r.bytes)} in {format_seconds(r.seconds)} "
            f"({format_size(int(rate))}/s)")


def emit(as_json: bool, doc: Any, line: str) -> None:
    """A command's result: ``doc`` as JSON with ``--json``, else ``line``."""
    if as_json:
        emit_json(doc)
    else:
        click.echo(line)


def emit_json(obj: Any) -> None:
    """Print one JSON document on stdout (for ``--json``)."""
    click.echo(json.dumps(obj, indent=2, sort_keys=True))
