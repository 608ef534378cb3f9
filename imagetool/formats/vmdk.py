"""Read-only guest data of a VMDK image, in pure Python.

Supported layouts (the VMware "Virtual Disk Format 1.1" specification's
``createType`` values):

- ``streamOptimized``: one sparse extent with deflate-compressed grains and
  markers (what OVA packages carry), with the grain directory either in the
  leading header (as qemu-img writes it) or at the end of the stream behind
  a footer (as VMware and VirtualBox write it);
- ``monolithicSparse``: one sparse extent with an embedded descriptor;
- ``monolithicFlat``, ``twoGbMaxExtentFlat`` and ``twoGbMaxExtentSparse``:
  a text descriptor file naming raw (FLAT), sparse (SPARSE) or ZERO
  extents stored next to it.

Sparse extents can be read from a byte window ``(offset, length)`` of a
bigger file, so an image inside an uncompressed tar (an OVA) is read in
place. Every offset and size taken from the file is checked against that
window and against fixed bounds before anything is allocated or read, and
decompression is bounded by the grain size; a bad structure raises
CorruptImage naming the file and what is wrong. Extent file names from a
descriptor must be plain names in the descriptor's directory.

Extents: allocated grains are data, unallocated grains ``zero+hole``, and
zeroed grains (grain table entry 1 with the zeroed-grain flag, or in a
compressed extent) ``zero``. Flat extents report the holes of their file.

Thread safety: all reads are positional and the table/grain caches are
locked, so one backend may serve several threads; ``clone()`` gives a
worker its own descriptors while sharing the parsed metadata.
"""

from __future__ import annotations

import copy
import os
import re
import stat
import struct
import sys
import zlib
from array import array
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterator

from imagetool.errors import (CorruptImage, FormatError, UnsupportedFeature,
                              UnsupportedFormat)
from imagetool.iocore.backend import Extent, undo_on_error
from imagetool.formats.detect import ImageInfo, disk_usage, is_vmdk_descriptor
from imagetool.formats.raw import fd_size, open_readonly, read_full, reading, seek_extents
from imagetool.formats.readonly import (COMPRESSED, DATA, UNALLOC, ZERO,
                                        LockedLRU, ReadOnlyBackend, add_segment,
                                        fill_zero, segment_extents)

SECTOR = 512
MAGIC = b"KDMV"
GD_AT_END = 0xFFFFFFFFFFFFFFFF

FLAG_ZERO_GRAIN = 0x4
FLAG_COMPRESSED = 0x10000
FLAG_MARKERS = 0x20000

MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3

# Bounds on what a header may declare. Writers use 64 KiB grains and 512
# entries per grain table; QEMU refuses more than 512 entries.
MAX_GRAIN_SECTORS = 2048                  # 1 MiB grains
MAX_GTES = 512
MAX_GD_ENTRIES = 32 << 20                 # QEMU's "L1 size too big" bound
MAX_VIRTUAL_SIZE = 1 << 62
MAX_DESCRIPTOR_FILE = 1 << 20
MAX_EMBEDDED_DESCRIPTOR = 64 << 10        # bytes parsed of an embedded one
MAX_EXTENTS = 8192

_GT_CACHE_BYTES = 8 << 20
_GRAIN_CACHE_BYTES = 4 << 20

# struct SparseExtentHeader, little-endian, packed (VDF 1.1).
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")

_EXTENT_RE = re.compile(
    r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)'
    r'(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
_KV_RE = re.compile(r'^([A-Za-z][A-Za-z0-9_.]*)\s*=\s*"?([^"]*)"?\s*$')


def _le_u32(raw: bytes) -> array:
    """Little-endian 32-bit table entries (grain directory, grain table)."""
    table = array("I", raw)
    if sys.byteorder != "little":
        table.byteswap()
    return table


class _FileRange:
    """A byte range ``[base, base+length)`` of an open file.

    Offsets given to ``pread`` are relative to the window; anything outside
    it is refused before reading.
    """

    def __init__(self, path: str, label: str, base: int, length: int):
        self.path = path
        self.label = label
        self.base = base
        self.length = length
        self.fd = open_readonly(path, label)

    def reopen(self) -> "_FileRange":
        other = copy.copy(self)
        other.fd = open_readonly(self.path, self.label)
        return other

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def corrupt(self, what: str) -> CorruptImage:
        return CorruptImage(f"corrupt vmdk image: {what}", self.label)

    def check(self, offset: int, size: int, what: str) -> None:
        if offset < 0 or size < 0 or offset + size > self.length:
            raise self.corrupt(
                f"{what} at offset {offset} ({size} bytes) is past the end "
                f"of the file ({self.length} bytes)")

    def pread(self, offset: int, size: int, what: str) -> bytes:
        """Exactly ``size`` bytes at window ``offset``, or CorruptImage."""
        self.check(offset, size, what)
        buf = bytearray(size)
        try:
            got = read_full(self.fd, memoryview(buf), self.base + offset)
        except OSError as e:
            raise FormatError(f"cannot read {what}: {e.strerror}", self.label) from e
        if got < size:
            raise self.corrupt(f"{what} at offset {offset}: file truncated")
        return bytes(buf)

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` from window ``offset``; zeros past the window end."""
        avail = max(0, min(len(view), self.length - offset))
        try:
            done = read_full(self.fd, view[:avail], self.base + offset)
        except OSError as e:
            raise FormatError(f"cannot read: {e.strerror}", self.label) from e
        fill_zero(view[done:])


# --- extents of one image -------------------------------------------------

class _ZeroExtent:
    """A ZERO extent: no file, reads as zeros."""

    kind = "ZERO"

    def __init__(self, size: int):
        self.size = size

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        yield Extent(start, end - start, zero=True, hole=True)

    def read_into(self, offset: int, view: memoryview) -> None:
        fill_zero(view)

    def reopen(self) -> "_ZeroExtent":
        return self

    def close(self) -> None:
        pass

    def files(self) -> list[str]:
        return []


class _FileExtent:
    """An extent stored in a file range ``win`` (FLAT or SPARSE)."""

    win: _FileRange

    def reopen(self):
        other = copy.copy(self)       # shares any parsed metadata and caches
        other.win = self.win.reopen()
        return other

    def close(self) -> None:
        self.win.close()

    def files(self) -> list[str]:
        return [self.win.path]


class _FlatExtent(_FileExtent):
    """A FLAT extent: guest bytes stored as they are at an offset of a file."""

    kind = "FLAT"

    def __init__(self, win: _FileRange, size: int):
        self.win = win
        self.size = size

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        """Data and holes of the file range (``seek_extents``)."""
        try:
            yield from seek_extents(self.win.fd, start, end, self.win.base)
        except OSError as e:
            raise FormatError(f"cannot read: {e.strerror}", self.win.label) from e

    def read_into(self, offset: int, view: memoryview) -> None:
        self.win.read_into(offset, view)


@dataclass
class _Header:
    version: int
    flags: int
    capacity: int          # sectors
    grain_sectors: int
    desc_offset: int       # sectors
    desc_size: int         # sectors
    num_gtes: int
    rgd_offset: int
    gd_offset: int
    overhead: int
    compress: int


def _parse_header(win: _FileRange, raw: bytes, what: str) -> _Header:
    magic, *fields, _unclean, _newline_chars, compress = _HEADER.unpack_from(raw)
    h = _Header(*fields, compress)      # the fields in the header's order
    if magic != MAGIC:
        raise win.corrupt(f"{what}: bad magic {magic!r} (expected KDMV)")
    if h.version not in (1, 2, 3):
        raise UnsupportedFeature(
            f"vmdk sparse extent version {h.version} is not supported "
            f"(only 1, 2 and 3)", win.label)
    return h


class _SparseExtent(_FileExtent):
    """A hosted sparse extent (KDMV): header, grain directory, grain tables."""

    kind = "SPARSE"

    # --- metadata ----------------------------------------------------------

    def __init__(self, win: _FileRange):
        self.win = win
        if win.length < SECTOR:
            raise win.corrupt(f"file too short for a vmdk header "
                              f"({win.length} bytes)")
        h = _parse_header(win, win.pread(0, SECTOR, "header"), "header")
        self.leading = h
        if h.gd_offset == GD_AT_END:
            h = self._footer(h)
        self.header = h
        if h.compress not in (0, 1):
            raise UnsupportedFeature(
                f"vmdk compression algorithm {h.compress} is not supported "
                f"(only deflate)", win.label)
        self.compressed = h.compress == 1 or bool(h.flags & FLAG_COMPRESSED)
        self.markers = bool(h.flags & FLAG_MARKERS)
        self.zero_grain = bool(h.flags & FLAG_ZERO_GRAIN) or self.compressed
        g = h.grain_sectors
        if g < 1 or g > MAX_GRAIN_SECTORS or g & (g - 1):
            raise win.corrupt(f"grain size {g} sectors is not a power of two "
                              f"from 1 to {MAX_GRAIN_SECTORS}")
        if not 1 <= h.num_gtes <= MAX_GTES:
            raise win.corrupt(f"{h.num_gtes} entries per grain table "
                              f"(expected 1 to {MAX_GTES})")
        if h.capacity * SECTOR > MAX_VIRTUAL_SIZE:
            raise win.corrupt(f"capacity {h.capacity} sectors is too large")
        self.grain = g * SECTOR
        self.size = h.capacity * SECTOR
        self.gt_span = self.grain * h.num_gtes
        n_gd = -(-self.size // self.gt_span)
        if n_gd > MAX_GD_ENTRIES:
            raise win.corrupt(f"grain directory of {n_gd} entries is too large")
        if n_gd and h.gd_offset == 0:
            raise win.corrupt("no grain directory (offset 0)")
        self.gd = array("I")
        if n_gd:
            gd_off = h.gd_offset * SECTOR
            if h.gd_offset >= win.length:
                raise win.corrupt(
                    f"grain directory at sector {h.gd_offset} is past the end "
                    f"of the file ({win.length} bytes)")
            self.gd = _le_u32(win.pread(gd_off, n_gd * 4, "grain directory"))
        self._gt_cache = LockedLRU(max(2, _GT_CACHE_BYTES // (h.num_gtes * 4)))
        self._grain_cache = LockedLRU(max(2, _GRAIN_CACHE_BYTES // self.grain))
        self.descriptor = self._embedded_descriptor()

    def _footer(self, leading: _Header) -> _Header:
        """The real header of a stream whose grain directory is at its end."""
        win = self.win
        if not leading.flags & FLAG_MARKERS or win.length < 3 * SECTOR:
            raise win.corrupt("grain directory is at the end of the stream "
                              "but there is no footer")
        marker = win.pread(win.length - 3 * SECTOR, SECTOR, "footer marker")
        _val, size, mtype = struct.unpack_from("<QII", marker)
        raw = win.pread(win.length - 2 * SECTOR, SECTOR, "footer")
        if size != 0 or mtype != MARKER_FOOTER or raw[:4] != MAGIC:
            raise win.corrupt("grain directory is at the end of the stream "
                              "but there is no footer")
        h = _parse_header(win, raw, "footer")
        if h.gd_offset == GD_AT_END:
            raise win.corrupt("footer has no grain directory offset")
        return h

    def _embedded_descriptor(self) -> dict:
        h, win = self.header, self.win
        if not h.desc_offset or not h.desc_size:
            return {}
        off, size = h.desc_offset * SECTOR, h.desc_size * SECTOR
        if h.desc_offset > win.length or h.desc_size > win.length:
            raise win.corrupt(f"embedded descriptor at sector {h.desc_offset} "
                              f"is past the end of the file")
        win.check(off, size, "embedded descriptor")
        text = win.pread(off, min(size, MAX_EMBEDDED_DESCRIPTOR),
                         "embedded descriptor")
        return _parse_descriptor(text, win.label)[0]

    # --- grain lookup -------------------------------------------------------

    def _gt(self, index: int) -> array | None:
        sector = self.gd[index]
        if sector == 0:
            return None
        table = self._gt_cache.get(sector)
        if table is not None:
            return table
        n = self.header.num_gtes
        if sector * SECTOR + n * 4 > self.win.length:
            raise self.win.corrupt(
                f"grain table {index} at sector {sector} is past the end of "
                f"the file ({self.win.length} bytes)")
        table = _le_u32(self.win.pread(sector * SECTOR, n * 4, "grain table"))
        self._gt_cache.put(sector, table)
        return table

    def _classify(self, grain_index: int, gte: int) -> int:
        if gte == 0:
            return UNALLOC
        if gte == 1 and self.zero_grain:
            return ZERO
        if gte * SECTOR >= self.win.length:
            raise self.win.corrupt(
                f"grain {grain_index} at sector {gte} is past the end of the "
                f"file ({self.win.length} bytes)")
        return COMPRESSED if self.compressed else DATA

    def _map(self, start: int, end: int) -> list[list[int]]:
        """Segments ``[vstart, length, kind, host]`` covering ``[start, end)``.

        ``host``: the data's window offset (DATA) or the grain's index
        (COMPRESSED). Adjacent segments of one kind merge (DATA only when
        contiguous in the file).
        """
        out: list[list[int]] = []
        grain, span = self.grain, self.gt_span
        n = self.header.num_gtes
        pos = start
        while pos < end:
            gdi = pos // span
            stop = min((gdi + 1) * span, end)
            table = self._gt(gdi)
            if table is None:
                add_segment(out, pos, stop - pos, UNALLOC, 0)
                pos = stop
                continue
            while pos < stop:
                gi = pos // grain
                gstart = gi * grain
                gend = min(gstart + grain, stop)
                gte = table[gi % n]
                kind = self._classify(gi, gte)
                host = (gte * SECTOR + pos - gstart if kind == DATA
                        else gi if kind == COMPRESSED else 0)
                add_segment(out, pos, gend - pos, kind, host)
                pos = gend
        return out

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        return segment_extents(self._map, start, end, self.gt_span)

    # --- reading ------------------------------------------------------------

    def read_into(self, offset: int, view: memoryview) -> None:
        for vstart, length, kind, host in self._map(offset, offset + len(view)):
            part = view[vstart - offset:vstart - offset + length]
            if kind == DATA:
                self.win.read_into(host, part)
            elif kind == COMPRESSED:
                data = self._grain_data(host)
                within = vstart - host * self.grain
                part[:] = data[within:within + length]
            else:
                fill_zero(part)

    def _grain_data(self, gi: int) -> bytes:
        """Decompressed grain ``gi`` (exactly one grain, zero padded)."""
        data = self._grain_cache.get(gi)
        if data is not None:
            return data
        gte = self._gt(gi // self.header.num_gtes)[gi % self.header.num_gtes]
        data = self._inflate_grain(gi, gte * SECTOR)
        self._grain_cache.put(gi, data)
        return data

    def _inflate_grain(self, gi: int, off: int) -> bytes:
        win, grain = self.win, self.grain
        # deflate's worst case grows data by ~0.1%; anything much bigger
        # than a grain is not a compressed grain.
        limit = 2 * grain + 4096
        if self.markers:
            head = win.pread(off, 12, f"grain {gi} marker")
            lba, size = struct.unpack("<QI", head)
            if size == 0:
                raise win.corrupt(f"grain {gi} at offset {off} points at a "
                                  f"metadata marker, not a grain")
            if size > limit:
                raise win.corrupt(f"grain {gi} at offset {off}: compressed "
                                  f"size {size} exceeds {limit} bytes")
            expected = gi * (grain // SECTOR)
            if lba != expected:
                raise win.corrupt(f"grain {gi} at offset {off}: marker says "
                                  f"sector {lba}, expected {expected}")
            win.check(off + 12, size, f"grain {gi} data")
            comp = win.pread(off + 12, size, f"grain {gi} data")
        else:
            comp = win.pread(off, min(limit, win.length - off),
                             f"grain {gi} data")
        want = min(grain, self.size - gi * grain)
        data = self._inflate(comp, gi, off)
        if len(data) < want:
            raise win.corrupt(f"grain {gi} at offset {off} decompresses to "
                              f"{len(data)} bytes, expected {want}")
        if len(data) < grain:
            data += bytes(grain - len(data))
        return data

    def _inflate(self, comp: bytes, gi: int, off: int) -> bytes:
        """zlib (what QEMU writes) or raw deflate, at most one grain."""
        # The message, not the exception: a kept exception would tie this
        # frame (and ``comp``) into a reference cycle.
        error = ""
        for wbits in (15, -15):
            d = zlib.decompressobj(wbits)
            try:
                data = d.decompress(comp, self.grain)
            except zlib.error as e:
                error = error or str(e)
                continue
            if d.unconsumed_tail:
                raise self.win.corrupt(
                    f"grain {gi} at offset {off} decompresses to more than "
                    f"the grain size ({self.grain} bytes)")
            return data
        raise self.win.corrupt(
            f"grain {gi} at offset {off}: bad deflate stream ({error})")


# --- descriptor -------------------------------------------------------------

@dataclass
class _ExtentLine:
    access: str
    sectors: int
    type: str
    name: str | None
    offset: int


def _parse_descriptor(raw: bytes, label: str) -> tuple[dict, list[_ExtentLine]]:
    """``(fields, extent lines)`` of descriptor text (up to the first NUL)."""
    raw = raw.split(b"\0", 1)[0]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    fields: dict[str, str] = {}
    extents: list[_ExtentLine] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _EXTENT_RE.match(line)
        if m:
            if len(extents) >= MAX_EXTENTS:
                raise CorruptImage(f"corrupt vmdk descriptor: more than "
                                   f"{MAX_EXTENTS} extents", label)
            extents.append(_ExtentLine(m.group(1), int(m.group(2)),
                                       m.group(3).upper(), m.group(4),
                                       int(m.group(5) or 0)))
            continue
        kv = _KV_RE.match(line)
        if kv and not kv.group(1).startswith("ddb."):
            fields[kv.group(1)] = kv.group(2)
    return fields, extents


def _check_parent(fields: dict, label: str) -> None:
    parent = fields.get("parentCID", "ffffffff").lower()
    if parent != "ffffffff" or fields.get("parentFileNameHint"):
        raise UnsupportedFeature(
            "vmdk delta disk with a parent is not supported; convert the "
            f"chain first: qemu-img convert -O qcow2 {label} out.qcow2", label)


def _extent_path(directory: str, name: str | None, label: str) -> str:
    if not name:
        raise CorruptImage("corrupt vmdk descriptor: extent without a file "
                           "name", label)
    if ("/" in name or "\\" in name or name in (".", "..")
            or os.path.isabs(name) or "\0" in name):
        raise CorruptImage(
            f"corrupt vmdk descriptor: extent file {name!r} is not in the "
            f"descriptor's directory", label)
    return os.path.join(directory, name)


def _open_descriptor_file(path: str) -> tuple[dict, list]:
    """Parse a text descriptor file and open the extents it names."""
    with reading(path) as fd:
        try:
            size = fd_size(fd)
            if size > MAX_DESCRIPTOR_FILE:
                raise CorruptImage(f"corrupt vmdk descriptor: {size} bytes is "
                                   f"too large for a descriptor file", path)
            raw = os.pread(fd, size, 0)
        except OSError as e:
            raise FormatError(f"cannot read: {e.strerror}", path) from e
    fields, lines = _parse_descriptor(raw, path)
    if not lines:
        raise CorruptImage("corrupt vmdk descriptor: no extents", path)
    _check_parent(fields, path)
    directory = os.path.dirname(os.path.abspath(path))
    # Names are checked before any extent file is touched.
    targets = []
    for line in lines:
        if line.access == "NOACCESS":
            raise UnsupportedFeature("vmdk extent with NOACCESS is not "
                                     "supported", path)
        if line.type not in ("FLAT", "VMFS", "SPARSE", "ZERO"):
            raise UnsupportedFeature(
                f"vmdk extent type {line.type} is not supported (FLAT, "
                f"SPARSE and ZERO are)", path)
        targets.append(None if line.type == "ZERO"
                       else _extent_path(directory, line.name, path))
    total = sum(line.sectors for line in lines) * SECTOR
    if total > MAX_VIRTUAL_SIZE:
        raise CorruptImage(f"corrupt vmdk descriptor: extents add up to "
                           f"{total} bytes", path)
    return fields, _open_all(zip(lines, targets), lambda lt: _open_extent(*lt, path))


def _open_all(items, open_one) -> list:
    """``open_one(item)`` of every item; on a failure those opened are closed."""
    opened: list = []
    with undo_on_error(lambda: [o.close() for o in opened]):
        for item in items:
            opened.append(open_one(item))
    return opened


def _open_extent(line: _ExtentLine, target: str | None, desc: str):
    size = line.sectors * SECTOR
    if target is None:
        return _ZeroExtent(size)
    label = f"{desc}: extent {line.name}"
    try:
        st = os.stat(target)
    except OSError as e:
        raise FormatError(f"extent file {line.name!r}: {e.strerror}", desc) from e
    # A FIFO or character device named by a hostile descriptor could block
    # forever or read endless bytes.
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise UnsupportedFeature(
            f"extent file {line.name!r} is not a regular file", desc)
    with reading(target, label) as fd:
        flen = fd_size(fd)
    if line.type == "SPARSE":
        win = _FileRange(target, target, 0, flen)
        with undo_on_error(win.close):
            ext = _SparseExtent(win)
        if ext.size < size:
            ext.close()
            raise CorruptImage(
                f"corrupt vmdk image: extent {line.name} holds {ext.size} "
                f"bytes, the descriptor declares {size}", desc)
        ext.size = size
        return ext
    base = line.offset * SECTOR
    if base + size > flen:
        raise CorruptImage(
            f"corrupt vmdk image: extent file {line.name} is {flen} bytes, "
            f"the descriptor declares {base + size}", desc)
    return _FlatExtent(_FileRange(target, target, base, size), size)


# --- the backend ------------------------------------------------------------

class VmdkBackend(ReadOnlyBackend):
    """Read-only Backend over a VMDK image's guest data."""

    _format = "vmdk"

    def __init__(self, path: str, label: str, subformat: str, parts: list,
                 window: tuple[int, int] | None):
        self.path = path
        self.label = self._label = label
        self.subformat = subformat
        self.window = window
        self._parts = parts
        self._starts = [0, *accumulate(p.size for p in parts)]
        self._size = self._starts.pop()
        self._closed = False

    def _unmerged_extents(self) -> Iterator[Extent]:
        for start, part in zip(self._starts, self._parts):
            for e in part.extents(0, part.size):
                yield Extent(start + e.start, e.length, e.zero, e.hole)

    def _read_guest(self, offset: int, view: memoryview) -> None:
        pos, end = offset, offset + len(view)
        for start, part in zip(self._starts, self._parts):
            pend = start + part.size
            if pend <= pos:
                continue
            if start >= end:
                break
            s, t = max(pos, start), min(end, pend)
            part.read_into(s - start, view[s - offset:t - offset])

    def clone(self) -> "VmdkBackend":
        """A backend with its own descriptors sharing the parsed metadata."""
        other = copy.copy(self)
        other._parts = _open_all(self._parts, lambda p: p.reopen())
        other._closed = False
        return other

    def close(self) -> None:
        """Close every extent file; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for p in self._parts:
            p.close()

    def files(self) -> list[str]:
        """The descriptor and extent files this image is made of."""
        files = (f for p in self._parts for f in p.files())
        return list(dict.fromkeys([self.path, *files]))   # in order, once each

    def __repr__(self) -> str:
        return f"VmdkBackend({self.label!r}, {self.subformat})"


def open_vmdk(path: str | os.PathLike, offset: int = 0,
              length: int | None = None, name: str | None = None) -> VmdkBackend:
    """Open a VMDK image, or a VMDK stored at ``[offset, offset+length)``.

    A byte window (a non-zero ``offset`` or a ``length``) holds a single
    sparse extent (streamOptimized, monolithicSparse); images made of a
    descriptor file and extent files are opened only as plain files.
    ``name`` labels errors (default: the path, with the window).
    """
    path = os.fspath(path)
    windowed = offset != 0 or length is not None
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid window offset={offset} length={length}")
    with reading(path) as fd:
        fsize = fd_size(fd)
        try:
            head = os.pread(fd, SECTOR, offset)
        except OSError as e:
            raise FormatError(f"cannot read: {e.strerror}", path) from e
    if length is None:
        length = max(0, fsize - offset)
    label = name or (f"{path}[{offset}:{offset + length}]" if windowed else path)
    if offset + length > fsize:
        raise FormatError(f"window ends at {offset + length}, past the end of "
                          f"the file ({fsize} bytes)", label)
    if head[:4] == MAGIC:
        win = _FileRange(path, label, offset, length)
        with undo_on_error(win.close):
            ext = _SparseExtent(win)
            desc = ext.descriptor
            _check_parent(desc, label)
        subformat = desc.get("createType") or (
            "streamOptimized" if ext.compressed else "monolithicSparse")
        return VmdkBackend(path, label, subformat, [ext],
                           (offset, length) if windowed else None)
    if head[:4] == b"COWD":
        raise UnsupportedFormat(
            "VMware 3 (COWD) vmdk images are not supported; convert it first: "
            f"qemu-img convert -O qcow2 {path} out.qcow2", label)
    if is_vmdk_descriptor(head):
        if windowed:
            raise UnsupportedFeature(
                "a vmdk descriptor with separate extent files can only be "
                "opened as a plain file", label)
        fields, parts = _open_descriptor_file(path)
        return VmdkBackend(path, path, fields.get("createType", "custom"),
                           parts, None)
    raise CorruptImage("not a vmdk image (no KDMV magic or descriptor)", label)


def inspect_vmdk(path: str | os.PathLike, offset: int = 0,
                 length: int | None = None, name: str | None = None):
    """ImageInfo of a VMDK (format "vmdk", ``subformat`` its createType).

    ``actual_size``: disk space of the descriptor and extent files, or the
    window's length for an image inside another file.
    """
    with open_vmdk(path, offset, length, name) as b:
        actual = (b.window[1] if b.window is not None
                  else sum(disk_usage(f) for f in b.files()))
        return ImageInfo(format="vmdk", virtual_size=b.size,
                         actual_size=actual, filename=os.fspath(path),
                         subformat=b.subformat)
