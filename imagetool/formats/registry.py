"""The format registry: every image format imagetool reads, and what each can do.

Every list of supported formats is this registry's: probing asks
the entries in order which one the first bytes of a file are (``magic``),
``open_image`` and ``inspect`` call the entry's ``open`` and ``inspect``,
``convert`` and downloads write the ``writable`` ones, and an upload
stores a file as it is when its ``disk_format`` says which engine format
that is. ``imagetool.formats`` registers raw, qcow2 and vmdk; a new format
is one more ``register`` call.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from imagetool.iocore.backend import Backend

# What ``inspect`` returns: an ``ImageInfo`` of the module that probes, which
# imports this one (so it is not imported back here).
ImageInfo = Any


class Format(NamedTuple):
    """How to recognise, open and describe an image of one format, in a file
    or at a byte range of one."""

    open: Callable[[str, str, bool], Backend]           # (path, mode, shallow)
    inspect: Callable[[str, str], ImageInfo]            # (path, content type)
    open_window: Callable[[str, int, int], Backend]     # (path, offset, length)
    inspect_window: Callable[[str, int, int], ImageInfo]
    # (the first 512 bytes, path): whether they are this format's; may raise
    # UnsupportedFormat (a version not read). None: what no magic claims.
    magic: Callable[[bytes, str], bool] | None = None
    read_only: bool = True                              # open_image takes mode "r" only
    writable: bool = False                              # convert and downloads write it
    disk_format: str | None = None      # the engine's format of a volume holding the
    #                                     file's own bytes (raw, cow); None: converted


FORMATS: dict[str, Format] = {}


def register(name: str, fmt: Format) -> None:
    """Add a format; ``detect`` tries the formats with a magic in the order
    they were registered."""
    if name in FORMATS:
        raise ValueError(f"format {name!r} is already registered")
    FORMATS[name] = fmt


def unregister(name: str) -> None:
    del FORMATS[name]


def recognise(head: bytes, path: str) -> str | None:
    """The registered format whose magic ``head`` (a file's first 512 bytes)
    carries, or None."""
    for name, f in list(FORMATS.items()):
        if f.magic is not None and f.magic(head, path):
            return name
    return None


def fallback() -> str:
    """The format of what no magic claims (raw)."""
    return next(name for name, f in FORMATS.items() if f.magic is None)
