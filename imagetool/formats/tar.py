"""The tar container of an OVA: member headers written in place, members listed.

An OVA is one tar file (DMTF "Open Virtualization Format Specification",
DSP0243). The oVirt engine writes it with GNU headers from Python's tarfile
(sizes above 8 GiB - 1 in base-256), pads small members to 512 bytes and
ends the archive with two zero blocks; its importer reads the name and size
fields of each 512-byte header and nothing else (no long names, no pax
headers). We write the same, and read tars from other producers strictly:
regular files only, names that cannot escape a directory, no member past
the end of the file.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import time
from dataclasses import dataclass

from imagetool.errors import FormatError
from imagetool.formats.raw import reading

BLOCK = 512
# tar headers hold names of up to 100 bytes; the engine's reader nothing longer.
MAX_NAME = 99
MAX_MEMBERS = 1024


class TarError(FormatError):
    """The file is not a tar we accept (truncated, hostile names, odd members)."""


@dataclass
class Member:
    """One regular file of the tar: ``offset`` is where its data starts."""

    name: str
    offset: int
    size: int


def round_up(n: int) -> int:
    """``n`` rounded up to whole 512-byte blocks."""
    return -(-n // BLOCK) * BLOCK


def header(name: str, size: int, mtime: float | None = None) -> bytes:
    """One 512-byte GNU header for a regular file (as the engine writes them)."""
    check_name(name)
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(time.time() if mtime is None else mtime)
    info.mode = 0o644
    buf = info.tobuf(format=tarfile.GNU_FORMAT)
    if len(buf) != BLOCK:       # would need a long-name record
        raise ValueError(f"tar member name too long: {name!r}")
    return buf


def end_of_archive() -> bytes:
    return bytes(2 * BLOCK)


def check_name(name: str) -> None:
    """Refuse names that are absolute, climb with ``..`` or are too long."""
    if not name or "\0" in name:
        raise TarError(f"invalid member name {name!r}")
    if name.startswith("/") or "\\" in name:
        raise TarError(f"member name {name!r} is an absolute path or has a backslash")
    if ".." in name.split("/"):
        raise TarError(f"member name {name!r} climbs out of the archive with '..'")
    if len(name.encode()) > MAX_NAME:
        raise TarError(f"member name {name[:40]!r}... is longer than {MAX_NAME} bytes")


def members(path: str | os.PathLike) -> list[Member]:
    """The members of a tar file, in archive order, read from their headers.

    Raises TarError for a header with a bad checksum, a member reaching past
    the end of the file, a missing end-of-archive marker (a truncated file),
    a name that is absolute or contains ``..``, duplicates, and any member
    that is not a regular file (links, devices, pax or long-name records).

    Regular files are types ``0`` and NUL, and ``7`` (contiguous): POSIX
    ("pax", ustar Interchange Format) says an implementation without
    contiguous-file support treats type 7 as a regular file, and its data
    is stored as type 0's is. A GNU sparse member (type ``S``) is refused by
    name: its header holds a map of data runs and the member's bytes are
    only those runs, so reading it as a regular file (as Python's
    ``TarInfo.isreg()`` would let us) gives the wrong guest data.
    """
    path = os.fspath(path)
    with reading(path) as fd:
        size = os.fstat(fd).st_size
        out: list[Member] = []
        seen: set[str] = set()
        pos = 0
        while True:
            if pos + BLOCK > size:
                raise TarError(f"truncated tar: no end-of-archive marker after "
                               f"{len(out)} members ({size} bytes)", path)
            buf = os.pread(fd, BLOCK, pos)
            if buf == bytes(BLOCK):
                return out
            try:
                info = tarfile.TarInfo.frombuf(buf, "utf-8", "strict")
            except (tarfile.HeaderError, UnicodeDecodeError) as e:
                raise TarError(f"not a tar, or a damaged header at offset {pos}: "
                               f"{e}", path) from None
            name = info.name
            if info.type == tarfile.GNUTYPE_SPARSE:
                raise TarError(f"member {name!r} at offset {pos} is a GNU sparse file "
                               "(type 'S'), whose data is not stored as written; "
                               "re-create the OVA without --sparse", path)
            if not info.isreg():
                raise TarError(f"member {name!r} at offset {pos} is not a regular "
                               f"file (type {info.type!r}); OVAs hold files only", path)
            norm = posixpath.normpath(name)
            try:
                check_name(name)
            except TarError as e:
                raise TarError(str(e).split(": ", 1)[-1], path) from None
            if norm in seen:
                raise TarError(f"member {name!r} appears twice", path)
            seen.add(norm)
            data = pos + BLOCK
            if data + info.size > size:
                raise TarError(f"truncated tar: member {name!r} needs "
                               f"{info.size} bytes from offset {data}, the file "
                               f"has {size}", path)
            out.append(Member(name, data, info.size))
            if len(out) > MAX_MEMBERS:
                raise TarError(f"more than {MAX_MEMBERS} members", path)
            pos = data + round_up(info.size)
