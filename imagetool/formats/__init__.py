"""Local disk images: detect, inspect and open raw, qcow2 and vmdk files.

Public API::

    detect(path) -> "raw" | "qcow2" | "vmdk"
    inspect(path, *, offset=0, length=None) -> ImageInfo
    open_image(path, mode="r", format=None, shallow=False, *, offset=0,
               length=None) -> Backend

``offset``/``length`` read an image stored inside another file (a disk
member of an OVA's tar): qcow2 without a backing file, single-file VMDK,
or raw (imagetool.formats.window).

All errors are ``imagetool.errors.FormatError`` subclasses.
"""

from __future__ import annotations

import os

from imagetool.errors import UnsupportedFeature
from imagetool.formats import qcow2, qcow2_reader
from imagetool.formats.base import Backend, Extent, merge_extents
from imagetool.formats.detect import ImageInfo, detect, disk_usage, probe
from imagetool.formats.raw import RawBackend

__all__ = ["Backend", "Extent", "ImageInfo", "RawBackend", "detect",
           "allocated_ranges", "inspect", "merge_extents", "open_image", "probe"]


def inspect(path: str | os.PathLike, *, offset: int = 0,
            length: int | None = None) -> ImageInfo:
    """Describe an image file without refusing features it uses.

    Encrypted or otherwise unusable qcow2 images are still described (so
    ``info`` can show why they are refused); only unreadable or corrupt
    headers raise.
    """
    path = os.fspath(path)
    if offset or length is not None:
        from imagetool.formats import window
        if length is None:
            length = os.path.getsize(path) - offset
        return window.inspect_window(path, offset, length)
    fmt, content = probe(path)
    if fmt == "qcow2":
        return qcow2.inspect(path)
    if fmt == "vmdk":
        from imagetool.formats import vmdk
        return vmdk.inspect_vmdk(path)
    with RawBackend(path, "r") as b:  # size also right for block devices
        size = b.size
    return ImageInfo(format="raw", virtual_size=size, actual_size=disk_usage(path),
                     content_type=content, filename=path)


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
        from imagetool.formats import window
        if length is None:
            length = os.path.getsize(path) - offset
        return window.open_window(path, offset, length, format)
    if format is None:
        # "w" creates or truncates, so what the old file held is irrelevant.
        format = "raw" if mode == "w" else detect(path)
    if format == "raw":
        return RawBackend(path, mode)
    if format in ("qcow2", "vmdk") and mode != "r":
        raise UnsupportedFeature(
            f"{format} can only be opened read-only here (mode {mode!r})", path)
    if format == "qcow2":
        return qcow2_reader.Qcow2Backend(path, shallow=shallow)
    if format == "vmdk":
        from imagetool.formats import vmdk
        return vmdk.open_vmdk(path)
    raise ValueError(f"unknown image format {format!r}")


def allocated_ranges(path: str | os.PathLike,
                     format: str | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of the guest ranges an image allocates itself: for a
    qcow2 layer, read shallow, its own clusters and not its backing file's."""
    with open_image(path, "r", format=format, shallow=True) as b:
        return [(e.start, e.end) for e in b.extents() if not e.hole]
