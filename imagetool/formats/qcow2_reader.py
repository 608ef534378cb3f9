"""Read-only guest data of a qcow2 image (and its backing chain).

The L1/L2 tables map guest clusters to host offsets. A range of guest bytes
is first translated into runs ("segments") of one kind each: data at
contiguous host offsets (read with one pread), zeros, compressed clusters,
or unallocated (read through to the backing file, or zeros). Both
``read_into`` and ``extents`` are built on that translation.

Every table entry is validated before use (alignment, inside the file); a
bad one raises CorruptImage naming the file.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import re
import stat
import threading
import zlib
from array import array
from bisect import bisect_right
from typing import Iterator

from imagetool.errors import (CorruptImage, FormatError, UnsupportedFeature,
                              UnsupportedFormat)
from imagetool.formats import qcow2
from imagetool.iocore.backend import Extent, undo_on_error
from imagetool.formats.detect import detect
from imagetool.formats.raw import RawBackend, open_readonly, read_full
from imagetool.formats.readonly import (COMPRESSED, DATA, UNALLOC, ZERO,
                                        LockedLRU, ReadOnlyBackend, add_segment,
                                        fill_zero, segment_extents)

_L1_OFFSET_MASK = qcow2.L1E_OFFSET_MASK
_L2_OFFSET_MASK = qcow2.L2E_OFFSET_MASK
_L2_COMPRESSED = qcow2.OFLAG_COMPRESSED
_L2_ZERO = qcow2.OFLAG_ZERO
_DESC_MASK = qcow2.L2E_COMPRESSED_MASK

MAX_CHAIN_DEPTH = 128
_L2_CACHE_BYTES = 8 << 20
_COMP_CACHE_BYTES = 4 << 20
_tls = threading.local()
# A scheme prefix ("nbd:", "json:", "http:"); one letter is a Windows drive.
_PROTOCOL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def _load_table(fd: int, path: str, offset: int, length: int, what: str) -> array:
    return qcow2.big_endian(array("Q", qcow2.read_exact(fd, path, offset, length, what)))


class Qcow2Backend(ReadOnlyBackend):
    """Read-only Backend over a qcow2 file's guest data.

    ``shallow=False`` (default): unallocated clusters read through the
    backing chain and ``extents()`` describe guest data. ``shallow=True``:
    this layer only; unallocated clusters read as zeros and are reported as
    ``Extent(zero=True, hole=True)``.

    ``backing``: an open backend that serves the unallocated clusters in
    place of the file the header names (which is then never opened). A
    storage engine passes the parent volume it recorded itself, so a
    backing file name written by a client cannot point the reads at any
    other file. The backend is owned: closed with this one.
    """

    def __init__(self, path: str | os.PathLike, shallow: bool = False,
                 _chain: tuple[str, ...] = (), *,
                 backing: "Qcow2Backend | RawBackend | None" = None,
                 offset: int = 0, length: int | None = None):
        self.path = self._label = os.fspath(path)
        self.shallow = shallow
        # An image stored at [offset, offset+length) of the file (a tar member).
        self._base = offset
        self._window = length
        self._chain = _chain
        self._fd = open_readonly(self.path)
        self._closed = False
        self.backing: Qcow2Backend | RawBackend | None = backing
        with undo_on_error(self.close):
            self._setup()

    def _setup(self) -> None:
        h = self.header = qcow2.parse_header(self._fd, self.path, self._base,
                                             self._window)
        qcow2.check_readable(h)
        if self._window is not None and h.backing_file:
            raise UnsupportedFeature(
                "an image inside another file cannot have a backing file", self.path)
        self._size = h.virtual_size
        self._file_size = h.file_size
        self._cb = h.cluster_bits
        self._cs = h.cluster_size
        self._ext = h.extended_l2
        self._l2_bits = h.l2_bits
        self._sc_bits = self._cb - 5 if self._ext else self._cb
        self._l1 = (_load_table(self._fd, self.path, self._base + h.l1_table_offset,
                                h.l1_needed * 8, "L1 table")
                    if h.l1_needed else array("Q"))
        self._lock = threading.Lock()
        self._l2_cache = LockedLRU(max(2, _L2_CACHE_BYTES // self._cs))
        self._comp_cache = LockedLRU(max(2, _COMP_CACHE_BYTES // self._cs))
        self._zstd = h.compression_type == 1
        self._raw_backing_index: tuple[list[Extent], list[int]] | None = None
        if self.backing is None and h.backing_file and not self.shallow:
            self.backing = self._open_backing(h)

    # --- backing chain ---------------------------------------------------

    def _open_backing(self, h: qcow2.Header) -> "Qcow2Backend | RawBackend":
        name = h.backing_file or ""
        if _PROTOCOL_RE.match(name):
            raise UnsupportedFeature(
                f"backing file {name!r} is not a local file", self.path)
        base = os.path.dirname(os.path.abspath(self.path))
        bpath = name if os.path.isabs(name) else os.path.join(base, name)
        real = os.path.realpath(bpath)
        chain = self._chain + (os.path.realpath(self.path),)
        if real in chain:
            raise CorruptImage(f"backing chain loop at {name!r}", self.path)
        if len(chain) >= MAX_CHAIN_DEPTH:
            raise CorruptImage(
                f"backing chain deeper than {MAX_CHAIN_DEPTH}", self.path)
        try:
            mode = os.stat(bpath).st_mode
        except OSError as e:
            raise FormatError(f"backing file {name!r} not found", self.path) from e
        # Opening a FIFO or character device named by a hostile image
        # could block forever or read endless bytes.
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise UnsupportedFeature(
                f"backing file {name!r} is not a regular file or block device",
                self.path)
        fmt = detect(bpath) if h.backing_format is None else h.backing_format
        if fmt == "raw":
            return RawBackend(bpath, "r")
        if fmt == "qcow2":
            return Qcow2Backend(bpath, _chain=chain)
        raise UnsupportedFormat(
            f"backing file format {fmt!r} is not supported", self.path)

    # --- Backend protocol ------------------------------------------------

    _format = "qcow2"

    def _unmerged_extents(self) -> Iterator[Extent]:
        return self.extents_range(0, self._size)

    def extents_range(self, start: int, end: int) -> Iterator[Extent]:
        """Unmerged extents covering ``[start, end)`` (clipped to size)."""
        return segment_extents(self._map, max(0, start), min(end, self._size),
                               1 << (self._cb + self._l2_bits),
                               None if self.backing is None else self._backing_extents)

    def own_extents(self) -> Iterator[Extent]:
        """This layer's own extents, as if it had no backing: what its
        clusters hold is data or zero, what they leave to the backing is a
        hole. From the descriptor already open and checked, never the path
        again (an incremental point's changed ranges)."""
        return segment_extents(self._map, 0, self._size,
                               1 << (self._cb + self._l2_bits), None)

    def _read_guest(self, offset: int, view: memoryview) -> None:
        for gstart, length, kind, host in self._map(offset, offset + len(view)):
            part = view[gstart - offset:gstart - offset + length]
            if kind == DATA:
                self._read_host(host, part)
            elif kind == ZERO:
                fill_zero(part)
            elif kind == UNALLOC:
                self._read_backing(gstart, part)
            else:
                cluster = self._decompress(host)
                within = gstart & (self._cs - 1)
                part[:] = cluster[within:within + length]

    def clone(self) -> "Qcow2Backend":
        """A new backend with its own descriptors on the same image.

        The parsed header, L1 table and caches are immutable or locked, so
        clones share them instead of parsing the file again. The descriptor
        is a duplicate of this one (every read is positional, so sharing the
        file offset does not matter), never the path opened again: a file
        swapped in under that name after the checks made on opening (a
        symlink planted in a backup repository) is not read.
        """
        other = copy.copy(self)
        other._fd = os.dup(self._fd)
        other._closed = False
        other.backing = None
        if self.backing is not None:
            with undo_on_error(lambda: os.close(other._fd)):
                other.backing = self.backing.clone()
        return other

    def close(self) -> None:
        """Close this image and its backing chain; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.backing is not None:
            self.backing.close()
        os.close(self._fd)

    def __repr__(self) -> str:
        return f"Qcow2Backend({self.path!r}, shallow={self.shallow})"

    # --- translation -----------------------------------------------------

    def _map(self, start: int, end: int) -> list[list[int]]:
        """Segments ``[gstart, length, kind, host]`` covering [start, end).

        Adjacent segments are merged when they have the same kind (and, for
        data, contiguous host offsets). Compressed segments carry the L2
        descriptor in ``host`` and are never merged.
        """
        out: list[list[int]] = []
        cb, cs = self._cb, self._cs
        span_bits = cb + self._l2_bits
        l2_mask = (1 << self._l2_bits) - 1
        emit = functools.partial(add_segment, out)

        pos = start
        while pos < end:
            l1i = pos >> span_bits
            span_end = min((l1i + 1) << span_bits, end)
            l2_off = self._l1[l1i] & _L1_OFFSET_MASK
            if not l2_off:
                emit(pos, span_end - pos, UNALLOC, 0)
                pos = span_end
                continue
            table = self._l2_table(l2_off)
            while pos < span_end:
                cstart = (pos >> cb) << cb
                cend = min(cstart + cs, span_end)
                idx = (pos >> cb) & l2_mask
                if self._ext:
                    self._map_extended(table[2 * idx], table[2 * idx + 1],
                                       pos, cstart, cend, emit)
                else:
                    entry = table[idx]
                    if entry & _L2_COMPRESSED:
                        emit(pos, cend - pos, COMPRESSED, entry & _DESC_MASK)
                    elif entry & _L2_ZERO:
                        emit(pos, cend - pos, ZERO, 0)
                    else:
                        host = entry & _L2_OFFSET_MASK
                        if host:
                            self._check_data(host)
                            emit(pos, cend - pos, DATA, host + pos - cstart)
                        else:
                            emit(pos, cend - pos, UNALLOC, 0)
                pos = cend
        return out

    def _map_extended(self, entry: int, bitmap: int, pos: int, cstart: int,
                      cend: int, emit) -> None:
        """One extended-L2 cluster: 32 subclusters with alloc/zero bits."""
        if entry & _L2_COMPRESSED:
            emit(pos, cend - pos, COMPRESSED, entry & _DESC_MASK)
            return
        host = entry & _L2_OFFSET_MASK
        alloc = bitmap & 0xFFFFFFFF
        zeros = bitmap >> 32
        if alloc & zeros:
            raise CorruptImage("corrupt qcow2 image: subcluster both allocated "
                               "and zero", self.path)
        if alloc:
            if not host:
                raise CorruptImage("corrupt qcow2 image: allocated subclusters "
                                   "in an unallocated cluster", self.path)
            self._check_data(host)
        sc_bits = self._sc_bits
        while pos < cend:
            i = (pos - cstart) >> sc_bits
            bit = 1 << i
            kind = DATA if alloc & bit else ZERO if zeros & bit else UNALLOC
            # Extend over following subclusters of the same kind.
            j = i + 1
            while j < 32 and cstart + (j << sc_bits) < cend:
                b = 1 << j
                k = DATA if alloc & b else ZERO if zeros & b else UNALLOC
                if k != kind:
                    break
                j += 1
            stop = min(cstart + (j << sc_bits), cend)
            emit(pos, stop - pos, kind, host + pos - cstart if kind == DATA else 0)
            pos = stop

    def _check_data(self, host: int) -> None:
        if host & (self._cs - 1) or host >= self._file_size:
            raise CorruptImage(
                f"corrupt qcow2 image: data cluster offset 0x{host:x} invalid",
                self.path)

    def _l2_table(self, l2_off: int) -> array:
        table = self._l2_cache.get(l2_off)
        if table is not None:
            return table
        if l2_off & (self._cs - 1) or l2_off + self._cs > self._file_size:
            raise CorruptImage(
                f"corrupt qcow2 image: L2 table offset 0x{l2_off:x} invalid",
                self.path)
        table = _load_table(self._fd, self.path, self._base + l2_off, self._cs,
                            "L2 table")
        self._l2_cache.put(l2_off, table)
        return table

    # --- reading ---------------------------------------------------------

    def _read_host(self, host: int, part: memoryview) -> None:
        if self._window is not None:
            # Never read past the image into what follows it in the file.
            avail = max(0, min(len(part), self._file_size - host))
            if avail < len(part):
                fill_zero(part[avail:])
                part = part[:avail]
        # The last cluster may stop short of its end in the file.
        fill_zero(part[read_full(self._fd, part, self._base + host):])

    def _read_backing(self, gstart: int, part: memoryview) -> None:
        if self.backing is None:
            fill_zero(part)
            return
        got = self.backing.read_into(gstart, part) if gstart < self.backing.size else 0
        fill_zero(part[got:])       # past the backing's end: zeros

    def _decompress(self, desc: int) -> bytes:
        data = self._comp_cache.get(desc)
        if data is not None:
            return data
        coff, cend = qcow2.compressed_span(desc, self._cb)
        csize = cend - coff
        if coff == 0 or coff >= self._file_size or csize <= 0:
            raise CorruptImage(
                f"corrupt qcow2 image: compressed cluster at 0x{coff:x} invalid",
                self.path)
        comp = qcow2.pread(self._fd, min(csize, self._file_size - coff),
                           self._base + coff)
        data = self._inflate(comp, coff)
        self._comp_cache.put(desc, data)
        return data

    def _inflate(self, comp: bytes, coff: int) -> bytes:
        cs = self._cs
        try:
            if self._zstd:
                # A decompression context is costly to create and not
                # thread-safe: keep one per thread.
                dctx = getattr(_tls, "zstd", None)
                if dctx is None:
                    import zstandard
                    dctx = _tls.zstd = zstandard.ZstdDecompressor()
                reader = dctx.stream_reader(io.BytesIO(comp),
                                            read_across_frames=True)
                parts = []
                got = 0
                while got < cs:
                    chunk = reader.read(cs - got)
                    if not chunk:
                        break
                    parts.append(chunk)
                    got += len(chunk)
                data = b"".join(parts)
            else:
                # qemu writes raw deflate with a 4 KiB window (wbits -12);
                # a 32 KiB window decodes that and any larger-window writer.
                data = zlib.decompressobj(-15).decompress(comp, cs)
        except Exception as e:  # zlib.error, zstandard.ZstdError
            raise CorruptImage(
                f"corrupt qcow2 image: compressed cluster at 0x{coff:x}: {e}",
                self.path) from e
        if len(data) != cs:
            raise CorruptImage(
                f"corrupt qcow2 image: compressed cluster at 0x{coff:x} "
                f"decompresses to {len(data)} bytes, not {cs}", self.path)
        return data

    # --- extents through the chain ----------------------------------------

    def _backing_extents(self, start: int, end: int) -> Iterator[Extent]:
        b = self.backing
        bsize = b.size
        if start < bsize:
            stop = min(end, bsize)
            if isinstance(b, Qcow2Backend):
                yield from b.extents_range(start, stop)
            else:
                yield from self._raw_extents(start, stop)
        if end > bsize:
            s = max(start, bsize)
            yield Extent(s, end - s, zero=True, hole=True)

    def _raw_extents(self, start: int, end: int) -> Iterator[Extent]:
        with self._lock:
            cached = self._raw_backing_index
        if cached is None:
            exts = list(self.backing.extents())
            cached = (exts, [e.start for e in exts])
            with self._lock:
                self._raw_backing_index = cached
        index, starts = cached
        i = max(0, bisect_right(starts, start) - 1)
        while i < len(index) and index[i].start < end:
            e = index[i]
            s, t = max(e.start, start), min(e.end, end)
            if s < t:
                yield Extent(s, t - s, e.zero, e.hole)
            i += 1
