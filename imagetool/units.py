"""Byte sizes as people write them (``4M``, ``1.5G``) and as ints, and
the other conventions of text output: counts with their noun in the right
number (``1 disk``, ``2 disks``), durations with a space (``0.5 s``)."""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
           "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.I)


def parse_size(text: str | int) -> int:
    """Parse ``"4M"``, ``"1.5G"``, ``"512"``, ``"64KiB"`` into bytes.

    Suffixes are binary (K = 1024). Raises ValueError on anything else.
    """
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r} (examples: 512, 64K, 4M, 1.5G)")
    number, suffix = m.groups()
    value = float(number) * _SUFFIX[suffix.upper()]
    if value != int(value):
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """Format bytes for humans: ``1.50 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 disk``, ``0 disks``, ``2 disks`` (``plural`` when not noun + s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def format_seconds(seconds: float) -> str:
    """``0.5 s``: one decimal, a space before the unit, as every line prints."""
    return f"{seconds:.1f} s"
