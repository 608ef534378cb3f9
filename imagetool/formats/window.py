"""Images stored inside another file: a byte range ``[offset, offset+length)``.

An OVA is a tar whose disk members are qcow2 (as the oVirt engine writes
them) or streamOptimized VMDK (VMware, VirtualBox) images, and sometimes
raw ones; ovirt-imageio's client reads them in place (its ``member=``
argument) instead of extracting them. This module does the same for
imagetool: ``open_image(path, offset=..., length=...)`` opens the member's
guest data as a read-only Backend without copying it anywhere; the format
registry (``imagetool.formats.FORMATS``) holds what each format does here.
"""

from __future__ import annotations

import os
from typing import Iterator

from imagetool.errors import FormatError
from imagetool.iocore.backend import Extent
from imagetool.formats import registry
from imagetool.formats.detect import ImageInfo, sniff
from imagetool.formats.raw import open_readonly, read_full, reading
from imagetool.formats.readonly import ReadOnlyBackend


def _check_window(path: str, offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"invalid byte range offset={offset} length={length}")
    size = os.path.getsize(path)
    if offset + length > size:
        raise FormatError(f"byte range {offset}+{length} is past the end of the "
                          f"file ({size} bytes)", path)


def detect_window(path: str | os.PathLike, offset: int, length: int) -> str:
    """The registered format the first bytes of the range say (raw when no
    magic claims them), as ``detect`` for a whole file.

    A VMDK text descriptor is "vmdk" too: the VMDK reader then says why it
    cannot be read from inside a file. Formats recognised but not handled
    (vhd, vhdx, vdi, qed, LUKS) raise UnsupportedFormat.
    """
    path = os.fspath(path)
    _check_window(path, offset, length)
    with reading(path) as fd:
        head = os.pread(fd, min(length, 512), offset)
        tail = os.pread(fd, 512, offset + length - 512) if length >= 512 else b""
    return sniff(head, tail, path, in_file=True) or registry.fallback()


class RawWindow(ReadOnlyBackend):
    """Read-only raw guest data at a byte range of a file (Backend protocol)."""

    _refusal = "an image inside another file is read-only"

    def __init__(self, path: str | os.PathLike, offset: int, length: int):
        self.path = self._label = os.fspath(path)
        _check_window(self.path, offset, length)
        self.offset = offset
        self.length = self._size = length
        self._fd = open_readonly(self.path)

    def _unmerged_extents(self) -> Iterator[Extent]:
        """One data extent: a tar member's holes are not worth finding."""
        return iter([Extent(0, self.length)])

    def _read_guest(self, offset: int, view: memoryview) -> None:
        if read_full(self._fd, view, self.offset + offset) < len(view):
            raise FormatError("file truncated while reading", self.path)

    def clone(self) -> "RawWindow":
        return RawWindow(self.path, self.offset, self.length)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"RawWindow({self.path!r}, offset={self.offset}, length={self.length})"


def raw_info(path: str, offset: int, length: int) -> ImageInfo:
    """ImageInfo of raw guest data at a byte range (actual size = its length)."""
    return ImageInfo(format="raw", virtual_size=length, actual_size=length,
                     filename=path)


def qcow2_info(path: str, offset: int, length: int) -> ImageInfo:
    """ImageInfo of a qcow2 image at a byte range."""
    from imagetool.formats import qcow2
    with reading(path) as fd:
        return qcow2.header_info(qcow2.parse_header(fd, path, offset, length), length)
