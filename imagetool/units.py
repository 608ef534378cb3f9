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


# --- DSP0004 programmatic units (OVF capacities and memory) -------------------

# OVF files give sizes as a quantity and a unit such as ``byte * 2^30``
# (DMTF DSP0004 "CIM Infrastructure Specification", annex C.1, programmatic
# units; DSP0243 "Open Virtualization Format Specification" uses them for
# Disk/@capacityAllocationUnits and rasd:AllocationUnits). A unit comes from
# a file someone else wrote, so it is bounded before any arithmetic: a few
# short terms, small bases and exponents, a factor of at most 2^60, and the
# product checked against the caller's limit, so no input costs more than a
# handful of small multiplications.
MAX_UNIT_CHARS = 64
MAX_UNIT_TERMS = 6
MAX_UNIT_FACTOR = 1 << 60
MAX_DISK_BYTES = 8 << 40        # the local engine's largest disk
MAX_MEMORY_BYTES = 16 << 40     # above any memory size oVirt allows a VM

_UNIT_TERM = re.compile(r"^(?:byte|(\d{1,4})(?:\^(\d{1,2}))?)$")
_LEGACY_UNITS = {"bytes": 1, "kilobytes": 1 << 10, "megabytes": 1 << 20,
                 "gigabytes": 1 << 30, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}


def unit_factor(units: str | None) -> int:
    """Bytes per unit of ``byte * 2^30``, ``byte * 10^6``, ``MegaBytes``...

    None or blank is bytes. ValueError (a one-line reason) for anything else.
    """
    if units is None or not units.strip():
        return 1
    if len(units) > MAX_UNIT_CHARS:
        raise ValueError(f"unit {units[:24]!r}... is longer than {MAX_UNIT_CHARS} characters")
    u = units.strip()
    if u.lower() in _LEGACY_UNITS:
        return _LEGACY_UNITS[u.lower()]
    terms = [t.strip() for t in u.split("*")]
    if len(terms) > MAX_UNIT_TERMS:
        raise ValueError(f"unit {units!r} has more than {MAX_UNIT_TERMS} terms")
    if terms.count("byte") != 1:
        raise ValueError(f"unit {units!r} is not based on bytes")
    factor = 1
    for t in terms:
        m = _UNIT_TERM.match(t)
        if not m:
            raise ValueError(f"cannot read the unit {units!r}")
        if m.group(1):
            base, exp = int(m.group(1)), int(m.group(2) or 1)
            if base < 1 or base > 1024 or exp > 64:
                raise ValueError(f"unit {units!r} is out of range")
            factor *= base ** exp
            if factor > MAX_UNIT_FACTOR:
                raise ValueError(f"unit {units!r} is out of range (over 2^60 bytes)")
    return factor


def scaled(quantity: int, units: str | None, limit: int) -> int:
    """``quantity`` of ``units`` in bytes; ValueError above ``limit`` bytes."""
    value = quantity * unit_factor(units)
    if value > limit:
        raise ValueError(f"{quantity} x {units!r} is more than {format_size(limit)}")
    return value


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 disk``, ``0 disks``, ``2 disks`` (``plural`` when not noun + s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def format_seconds(seconds: float) -> str:
    """``0.5 s``: one decimal, a space before the unit, as every line prints."""
    return f"{seconds:.1f} s"
