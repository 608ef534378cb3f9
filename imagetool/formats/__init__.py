"""Local disk images: detect, inspect and open raw, qcow2 and vmdk files.

Public API::

    detect(path) -> "raw" | "qcow2" | "vmdk" (a registered format)
    inspect(path, *, offset=0, length=None) -> ImageInfo
    open_image(path, mode="r", format=None, shallow=False, *, offset=0,
               length=None) -> Backend
    FORMATS[name] -> Format; WRITABLE    # the registry (formats.registry); what
                                         # convert writes

``offset``/``length`` read an image stored inside another file (a disk
member of an OVA's tar): qcow2 without a backing file, single-file VMDK,
or raw (imagetool.formats.window).

All errors are ``imagetool.errors.FormatError`` subclasses.
"""

from __future__ import annotations

import os

from imagetool.errors import UnsupportedFeature, UnsupportedFormat
from imagetool.formats import qcow2, qcow2_reader, window
from imagetool.formats.detect import (ImageInfo, detect, disk_usage, probe, qcow2_magic,
                                      vmdk_magic)
from imagetool.formats.raw import RawBackend
from imagetool.formats.registry import FORMATS, Format, register
from imagetool.iocore.backend import Backend, Extent, merge_extents

__all__ = ["FORMATS", "WRITABLE", "Backend", "Extent", "ImageInfo", "RawBackend", "detect",
           "allocated_ranges", "inspect", "merge_extents", "open_image", "probe"]


def _vmdk():
    from imagetool.formats import vmdk      # 750 lines, imported when used
    return vmdk


def _raw_info(path: str, content: str) -> ImageInfo:
    with RawBackend(path, "r") as b:  # size also right for block devices
        size = b.size
    return ImageInfo(format="raw", virtual_size=size, actual_size=disk_usage(path),
                     content_type=content, filename=path)


register("raw", Format(lambda p, mode, shallow: RawBackend(p, mode), _raw_info,
                       window.RawWindow, window.raw_info, read_only=False, writable=True,
                       disk_format="raw"))
register("qcow2", Format(lambda p, mode, shallow: qcow2_reader.Qcow2Backend(p, shallow=shallow),
                         lambda p, content: qcow2.inspect(p),
                         lambda p, o, n: qcow2_reader.Qcow2Backend(p, offset=o, length=n),
                         window.qcow2_info, magic=qcow2_magic, writable=True,
                         disk_format="cow"))
register("vmdk", Format(lambda p, mode, shallow: _vmdk().open_vmdk(p),
                        lambda p, content: _vmdk().inspect_vmdk(p),
                        lambda p, o, n: _vmdk().open_vmdk(p, o, n),
                        lambda p, o, n: _vmdk().inspect_vmdk(p, o, n), magic=vmdk_magic))
WRITABLE = tuple(name for name, f in FORMATS.items() if f.writable)


def _window(path: str, offset: int, length: int | None,
            format: str | None = None) -> tuple[int, Format]:
    """The length of the image at ``offset`` and its format (None: detected)."""
    if length is None:
        length = os.path.getsize(path) - offset
    format = format or window.detect_window(path, offset, length)
    if format not in FORMATS:
        raise UnsupportedFormat(f"unknown image format {format!r}", path)
    return length, FORMATS[format]


def inspect(path: str | os.PathLike, *, offset: int = 0,
            length: int | None = None) -> ImageInfo:
    """Describe an image file without refusing features it uses.

    Encrypted or otherwise unusable qcow2 images are still described (so
    ``info`` can show why they are refused); only unreadable or corrupt
    headers raise.
    """
    path = os.fspath(path)
    if offset or length is not None:
        length, f = _window(path, offset, length)
        return f.inspect_window(path, offset, length)
    fmt, content = probe(path)
    return FORMATS[fmt].inspect(path, content)


def open_image(path: str | os.PathLike, mode: str = "r",
               format: str | None = None, shallow: bool = False, *,
               offset: int = 0, length: int | None = None) -> Backend:
    """Open an image's guest data as a Backend.

    ``format`` None detects it (mode "w" means raw). raw supports modes "r", "r+" and "w"; qcow2
    is read-only ("r"): guest data through the backing chain, or with
    ``shallow=True`` this layer only (unallocated clusters are
    ``Extent(zero=True, hole=True)`` and read as zeros). vmdk is read-only
    and has no backing chain here. ``offset``/``length``: the image stored
    at that byte range of ``path`` (qcow2 without backing file, single-file
    VMDK or raw; read-only).
    """
    path = os.fspath(path)
    if offset or length is not None:
        if mode != "r" or shallow:
            raise UnsupportedFeature(
                "an image inside a byte range of a file is read-only", path)
        length, f = _window(path, offset, length, format)
        return f.open_window(path, offset, length)
    if format is None:
        # "w" creates or truncates, so what the old file held is irrelevant.
        format = "raw" if mode == "w" else detect(path)
    f = FORMATS.get(format)
    if f is None:
        raise ValueError(f"unknown image format {format!r}")
    if f.read_only and mode != "r":
        raise UnsupportedFeature(
            f"{format} can only be opened read-only here (mode {mode!r})", path)
    return f.open(path, mode, shallow)


def allocated_ranges(path: str | os.PathLike,
                     format: str | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of the guest ranges an image allocates itself: for a
    qcow2 layer, read shallow, its own clusters and not its backing file's."""
    with open_image(path, "r", format=format, shallow=True) as b:
        return [(e.start, e.end) for e in b.extents() if not e.hole]
