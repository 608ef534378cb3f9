"""Write a new qcow2 v3 image (compat 1.1, 16-bit refcounts) as a Backend.

Layout: cluster 0 holds the header, its extensions and the backing file
name. Guest data clusters are appended to the file in the order writes
arrive (one ``pwrite`` per request where the request is new data). The L2
tables live in memory; ``flush()`` writes the L2 tables, the L1 table, the
refcount blocks and the refcount table after the data, then the header that
points at them, and fsyncs. The metadata of the previous flush becomes free
space that later data reuses, so a flushed image is always valid and
``qemu-img check`` finds neither errors nor leaked clusters.

Refcounts are kept in memory for every host cluster and updated as clusters
are allocated and released, so a flush only converts them to big-endian.
A released cluster is reused only after the next flush, when no metadata on
disk refers to it any more.

Partial-cluster writes: an allocated cluster is written in place (a
compressed one is rewritten uncompressed); a new cluster is filled around
the data with zeros, or with the backing file's bytes when there is one
(copy on write, as qemu does). The backing file (its name is resolved
next to the image, as qemu does) is opened with ``open_image`` only when
needed: writers fed whole clusters never open it.

``zero()`` leaves whole clusters unallocated when there is no backing file
and sets the qcow2 zero flag when there is one (so the backing data is
hidden). ``read_into`` and ``extents`` show the guest view: clusters not
written in this layer read through the backing file (or as zeros without
one). With ``shallow=True`` they show this layer only: clusters not written
here read as zeros and are ``Extent(zero=True, hole=True)``.

Compression (``compress=True``): whole clusters are deflated (raw deflate,
4 KiB window, as qemu reads it) outside the lock, so several writer threads
compress in parallel; a cluster that does not shrink is stored plainly.
Compressed clusters are packed back to back into host clusters.
"""

from __future__ import annotations

import os
import threading
import zlib
from array import array
from typing import Iterator

from imagetool.errors import FormatError, UnsupportedFeature
from imagetool.formats import open_image
from imagetool.iocore.backend import (BackendBase, Extent, merge_extents, undo_on_error,
                                      union_ranges)
from imagetool.iocore.backends import Wrapper
from imagetool.formats.qcow2 import (
    EXT_BACKING_FORMAT, L2E_OFFSET_MASK as _OFFSET_MASK, OFLAG_COMPRESSED as _COMPRESSED,
    OFLAG_COPIED as _COPIED, OFLAG_ZERO as _ZERO_FLAG, V3_HEADER_LEN as _HEADER_LEN,
    big_endian, compressed_size_shift, compressed_span, pack_extensions, pack_header,
    parse_header, refcount_clusters)
from imagetool.formats.raw import read_full
from imagetool.formats.readonly import fill_zero

_REFCOUNT_ORDER = 4  # 16-bit refcounts
_MAX_REFCOUNT = 0xFFFF
_IOV_MAX = 1024

MIN_CLUSTER_SIZE = 512
MAX_CLUSTER_SIZE = 2 * 1024 * 1024


class Qcow2Writer(BackendBase):
    """A qcow2 image being written; see the module docstring.

    Create one with :meth:`create`. ``write``, ``zero``, ``read_into`` and
    ``flush`` may be called from several threads.
    """

    def __init__(self, fd: int, path: str, virtual_size: int, cluster_size: int,
                 backing_file: str | None, backing_format: str | None,
                 compress: bool, compress_level: int, shallow: bool = False,
                 base: int = 0):
        self.path = path
        self._fd = fd
        # Where the image starts in the file: 0, or a disk member's data
        # offset when the image is written straight into an OVA's tar.
        self._base = base
        self._size = virtual_size
        self.cluster_size = cluster_size
        self.backing_file = backing_file
        self.backing_format = backing_format
        self.compress = compress
        self.shallow = shallow
        self._backing = None  # guest data of the backing file, opened on demand
        self._level = compress_level
        self._cbits = cluster_size.bit_length() - 1
        self._l2_entries = cluster_size // 8
        self._l2_bits = self._l2_entries.bit_length() - 1
        self._nclusters = -(-virtual_size // cluster_size)
        self._l1_size = -(-self._nclusters // self._l2_entries)
        # Where a compressed descriptor's count of extra sectors starts.
        self._csize_shift = compressed_size_shift(self._cbits)

        self._lock = threading.Lock()
        self._closed = False
        self._l2: dict[int, array] = {}
        self._refcounts = array("H", [1])   # host cluster 0: the header
        self._end = 1                       # host clusters in use or freed
        self._free: list[list[int]] = []    # [start, count], reusable now
        self._pending: list[int] = []       # released since the last flush
        self._meta: tuple[int, int] | None = None  # (start, count) on disk
        self._ctail: int | None = None      # byte offset for the next compressed blob
        self._dirty = True
        # Host clusters of an image opened with open_existing that hold its
        # old data: never written in place (copy on write).
        self._frozen: set[int] = set()

    # --- creation --------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, virtual_size: int,
               cluster_size: int = 65536, backing_file: str | None = None,
               backing_format: str | None = None, compress: bool = False,
               compress_level: int = 6, shallow: bool = False,
               offset: int = 0) -> "Qcow2Writer":
        """Create (or truncate) ``path`` as an empty qcow2 image and return its writer.

        The new file is already a valid image (all clusters unallocated).
        ``offset``: write the image from that byte of ``path`` instead,
        keeping the bytes before it (an OVA's tar member); the file is
        not truncated, and each flush cuts it at the image's end.
        ``virtual_size`` is rounded up to a multiple of 512, as qemu only
        sees whole sectors of a qcow2 image.
        """
        path = os.fspath(path)
        if virtual_size < 0:
            raise ValueError(f"invalid virtual size {virtual_size}")
        virtual_size = -(-virtual_size // 512) * 512
        if (cluster_size < MIN_CLUSTER_SIZE or cluster_size > MAX_CLUSTER_SIZE
                or cluster_size & (cluster_size - 1)):
            raise ValueError(
                f"invalid cluster size {cluster_size}: a power of two "
                f"between {MIN_CLUSTER_SIZE} and {MAX_CLUSTER_SIZE}")
        if backing_format and not backing_file:
            raise ValueError("backing_format given without backing_file")
        header_need = _HEADER_LEN + 8 + len((backing_file or "").encode())
        if backing_format:
            header_need += 8 + ((len(backing_format.encode()) + 7) & ~7)
        if header_need > cluster_size or len((backing_file or "").encode()) > 1023:
            raise ValueError("backing file name too long for the header cluster")
        if offset < 0:
            raise ValueError(f"invalid offset {offset}")
        flags = (os.O_RDWR | os.O_CREAT | (0 if offset else os.O_TRUNC)
                 | getattr(os, "O_CLOEXEC", 0))
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise FormatError(f"cannot create: {e.strerror}", path) from e
        w = cls(fd, path, virtual_size, cluster_size, backing_file,
                backing_format, compress, compress_level, shallow, base=offset)
        # No fsync: a file nobody has seen yet needs no durability; the
        # first flush() makes everything durable.
        with undo_on_error(lambda: os.close(fd)), w._lock:
            w._write_metadata(sync=False)
            w._dirty = False
        return w

    @classmethod
    def open_existing(cls, path: str | os.PathLike) -> "Qcow2Writer":
        """Open an existing qcow2 image (made by this writer or alike) to change it.

        Copy on write towards the image as it was: clusters allocated before
        are never written in place (a write gets a new cluster, the old one
        is freed), and the old metadata is left as it was until the first
        flush writes the new metadata after it and then the header. Until
        that header write the file still reads as the old image; ``abort()``
        then also drops what was appended. Only plain images are accepted
        (v3, 16-bit refcounts, zlib, no snapshot, no feature bit, no bitmap,
        no external data file); anything else raises ``UnsupportedFeature``.
        The header is rewritten as this writer writes it (the backing file
        and its format kept).
        """
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise FormatError(f"cannot open: {e.strerror}", path) from e
        with undo_on_error(lambda: os.close(fd)):
            h = parse_header(fd, path)
            if (h.version != 3 or h.refcount_order != _REFCOUNT_ORDER or h.nb_snapshots
                    or h.incompatible_features or h.autoclear_features or h.crypt_method
                    or h.data_file or h.bitmaps or h.compression_type
                    or h.compatible_features or h.size % 512):
                raise UnsupportedFeature("not a plain qcow2 v3 image to change in place",
                                         path)
            w = cls(fd, path, h.size, h.cluster_size, h.backing_file, h.backing_format,
                    False, 6)
            w._load(h)
        return w

    def _load(self, h) -> None:
        """Rebuild the in-memory tables of an existing image (``open_existing``)."""
        cs = self.cluster_size
        self._orig_size = file_size = os.fstat(self._fd).st_size
        end = -(-file_size // cs)
        if h.l1_size < self._l1_size:
            raise FormatError("L1 table too small for the virtual size", self.path)
        refs = array("H", bytes(2 * end))
        meta: list[int] = []

        def take(offset: int, length: int, data: bool) -> None:
            if offset % cs or offset + length > end * cs:
                raise FormatError(f"table at {offset} outside the file", self.path)
            for hc in range(offset // cs, -(-(offset + length) // cs)):
                if data:
                    if refs[hc] >= _MAX_REFCOUNT:
                        raise FormatError("refcount overflow", self.path)
                    refs[hc] += 1
                else:
                    meta.append(hc)

        refs[0] = 1
        l1_bytes = self._l1_size * 8
        if h.l1_size:
            take(h.l1_table_offset, h.l1_size * 8, False)
        take(h.refcount_table_offset, h.refcount_table_clusters * cs, False)
        rt = big_endian(array("Q", os.pread(self._fd, h.refcount_table_clusters * cs,
                                          h.refcount_table_offset)))
        l1 = big_endian(array("Q", os.pread(self._fd, l1_bytes, h.l1_table_offset)))
        for e in rt:
            if e:
                take(e & ~(cs - 1) & _OFFSET_MASK, cs, False)
        frozen: set[int] = set()
        for idx, e in enumerate(l1):
            off = e & _OFFSET_MASK
            if not off:
                continue
            take(off, cs, False)
            t = big_endian(array("Q", os.pread(self._fd, cs, off)))
            if len(t) != self._l2_entries:
                raise FormatError("short L2 table", self.path)
            for j, entry in enumerate(t):
                if entry & _COMPRESSED:
                    coff, stop = compressed_span(entry, self._cbits)
                    for hc in range(coff // cs, (stop - 1) // cs + 1):
                        take(hc * cs, cs, True)
                elif entry & _OFFSET_MASK:
                    hc = (entry & _OFFSET_MASK) // cs
                    take(hc * cs, cs, True)
                    frozen.add(hc)
                    t[j] = entry | _COPIED
            if any(t):
                self._l2[idx] = t
        self._refcounts = refs
        self._end = end
        self._frozen = frozen
        # The old metadata stays on disk (refcount 0 in the new tables) until
        # the header points elsewhere: freed only after that flush.
        for hc in set(meta):
            if refs[hc]:
                raise FormatError(f"cluster {hc} is both metadata and data", self.path)
            self._pending.append(hc)
        pend = set(self._pending)
        self._free = _coalesce([[hc, 1] for hc in range(1, end)
                                if not refs[hc] and hc not in pend])

    def abort(self) -> None:
        """Close without writing metadata (an image from ``open_existing`` that was
        not flushed yet reads as before: what was appended is cut off)."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            try:
                size = getattr(self, "_orig_size", None)
                if size is not None and self._meta is None:
                    os.ftruncate(self._fd, size)
            finally:
                self._close_files()

    # --- Backend protocol ------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def write(self, offset: int, data: memoryview | bytes) -> None:
        """Write guest bytes at ``offset``; see the module docstring for partial clusters."""
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view))
        if not view:
            return
        cs = self.cluster_size
        blobs: dict[int, bytes] = {}
        if self.compress:
            # Deflate full clusters before taking the lock: zlib drops the GIL.
            first = -(-offset // cs)
            last = (offset + len(view)) // cs
            if offset + len(view) == self._size:
                last = self._nclusters
            for ci in range(first, last):
                start = ci * cs - offset
                chunk = view[start:start + cs]
                if len(chunk) < cs:
                    chunk = bytes(chunk) + bytes(cs - len(chunk))
                z = zlib.compressobj(self._level, zlib.DEFLATED, -12)  # raw, 4 KiB window
                blob = z.compress(chunk) + z.flush()
                if len(blob) < cs:
                    blobs[ci] = blob
        with self._lock:
            self._check_open()
            self._write_locked(offset, view, blobs)

    def zero(self, offset: int, length: int) -> None:
        """Make the range read as zeros (unallocated, or zero flag over a backing file)."""
        self._check_range(offset, length)
        if length == 0:
            return
        cs = self.cluster_size
        end = offset + length
        with self._lock:
            self._check_open()
            ci = offset // cs
            while ci * cs < end:
                cstart = ci * cs
                cend = min(cstart + cs, self._size)
                if offset <= cstart and end >= cend:
                    new = _ZERO_FLAG if self.backing_file else 0
                    self._release(self._get(ci))
                    self._set(ci, new)
                else:
                    a, b = max(offset, cstart), min(end, cend)
                    entry = self._get(ci)
                    if self._is_plain(entry) and not self._is_frozen(entry):
                        _pwrite_all(self._fd, [bytes(b - a)],
                                    self._base + (entry & _OFFSET_MASK) + a - cstart)
                    elif (entry & _COMPRESSED or self._is_plain(entry)
                          or (entry == 0 and self.backing_file)):
                        buf = (bytearray(self._read_cluster(ci, entry)) if entry
                               else self._backing_cluster(ci))
                        buf[a - cstart:b - cstart] = bytes(b - a)
                        self._write_locked(cstart, memoryview(buf)[:cend - cstart], {})
                    # otherwise the cluster already reads as zeros
                ci += 1
            self._dirty = True

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Read this layer's guest bytes (unwritten clusters read as zeros)."""
        view = memoryview(buf).cast("B")
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        length = max(0, min(len(view), self._size - offset))
        cs = self.cluster_size
        with self._lock:
            self._check_open()
            pos = offset
            end = offset + length
            while pos < end:
                ci = pos // cs
                cstart = ci * cs
                n = min(cstart + cs, end) - pos
                dst = view[pos - offset:pos - offset + n]
                entry = self._get(ci)
                if self._is_plain(entry):
                    # Extend over host-contiguous plain clusters: one pread.
                    host = (entry & _OFFSET_MASK) + pos - cstart
                    nxt = ci + 1
                    while pos + n < end and self._get(nxt) == entry + (nxt - ci) * cs:
                        n += min(cs, end - pos - n)
                        nxt += 1
                    dst = view[pos - offset:pos - offset + n]
                    _pread_all(self._fd, dst, self._base + host)
                elif entry & _COMPRESSED:
                    data = self._read_cluster(ci, entry)
                    dst[:] = data[pos - cstart:pos - cstart + n]
                elif entry == 0 and self.backing_file and not self.shallow:
                    nxt = ci + 1
                    while pos + n < end and self._get(nxt) == 0:
                        n += min(cs, end - pos - n)
                        nxt += 1
                    self._read_backing(pos, view[pos - offset:pos - offset + n])
                else:
                    dst[:] = bytes(n)
                pos += n
        return length

    def extents(self, context: str = "zero") -> Iterator[Extent]:
        """This layer's allocation: data, zero-flag clusters (zero) and unwritten (zero, hole)."""
        if context != "zero":
            raise ValueError(f"unsupported extents context {context!r}")
        cs = self.cluster_size
        span = self._l2_entries * cs
        unwritten = dict(zero=True, hole=True)
        with self._lock:
            exts = []
            for idx in range(self._l1_size):
                table = self._l2.get(idx)
                if table is None:
                    start = idx * span
                    exts.append(Extent(start, min(span, self._size - start), **unwritten))
                    continue
                for i, entry in enumerate(table):
                    start = (idx * self._l2_entries + i) * cs
                    if start >= self._size:
                        break
                    length = min(cs, self._size - start)
                    if entry & _COMPRESSED or entry & _OFFSET_MASK:
                        exts.append(Extent(start, length))
                    elif entry & _ZERO_FLAG:
                        exts.append(Extent(start, length, zero=True))
                    else:
                        exts.append(Extent(start, length, **unwritten))
            if self.backing_file and not self.shallow:
                exts = _overlay(exts, self._backing_extents())
        return merge_extents(exts)

    def flush(self) -> None:
        """Write the metadata after the data, then the header, and fsync."""
        with self._lock:
            self._check_open()
            if self._dirty:
                self._write_metadata()
                self._dirty = False
            os.fsync(self._fd)

    def clone(self) -> "_WriterView":
        """A view for another thread: same image, but its ``close()`` does nothing.

        The writer is already thread-safe; only the owner of the writer
        closes it (closing writes the final metadata once).
        """
        return _WriterView(self)

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
                self._close_files()

    def _close_files(self) -> None:
        os.close(self._fd)
        if self._backing is not None:
            self._backing.close()
            self._backing = None

    def __repr__(self) -> str:
        return f"Qcow2Writer({self.path!r}, size={self._size})"

    # --- writing data ----------------------------------------------------

    def _write_locked(self, offset: int, view: memoryview,
                      blobs: dict[int, bytes]) -> None:
        cs = self.cluster_size
        end = offset + len(view)
        # Runs of clusters written with one pwritev each: ("new", iov, count)
        # for freshly allocated clusters, ("at", iov, host) for in-place.
        new_iov: list = []
        new_clusters: list[int] = []
        cblobs: list[tuple[int, bytes]] = []
        inplace: list = []  # [host_start, host_end, iov]
        ci = offset // cs
        while ci * cs < end:
            cstart = ci * cs
            cend = min(cstart + cs, self._size)
            a, b = max(offset, cstart), min(end, cend)
            piece = view[a - offset:b - offset]
            entry = self._get(ci)
            full = a == cstart and b == cend
            if ci in blobs:
                self._release(entry)
                cblobs.append((ci, blobs[ci]))
                self._set(ci, 0)
            elif self._is_plain(entry) and not self._is_frozen(entry):
                host = (entry & _OFFSET_MASK) + a - cstart
                if inplace and inplace[-1][1] == host and len(inplace[-1][2]) < _IOV_MAX:
                    inplace[-1][1] += len(piece)
                    inplace[-1][2].append(piece)
                else:
                    inplace.append([host, host + len(piece), [piece]])
            else:
                if full and cend - cstart == cs:
                    # A slice of the caller's buffer: join it to the previous one.
                    last = new_iov[-1] if new_iov else None
                    if isinstance(last, tuple) and last[1] == a - offset:
                        new_iov[-1] = (last[0], b - offset)
                    else:
                        new_iov.append((a - offset, b - offset))
                    content = None
                elif full:
                    content = bytes(piece) + bytes(cs - len(piece))
                else:
                    if entry & _COMPRESSED or self._is_plain(entry):
                        buf = bytearray(self._read_cluster(ci, entry))
                    elif entry == 0 and self.backing_file:
                        buf = self._backing_cluster(ci)  # copy on write
                    else:
                        buf = bytearray(cs)
                    buf[a - cstart:b - cstart] = piece
                    content = memoryview(buf)
                self._release(entry)
                self._set(ci, 0)
                new_clusters.append(ci)
                if content is not None:
                    new_iov.append(content)
            ci += 1
        for host, _, iov in inplace:
            _pwrite_all(self._fd, iov, self._base + host)
        if new_clusters:
            self._write_new(view, new_clusters, new_iov)
        if cblobs:
            self._write_compressed(cblobs)
        self._dirty = True

    def _write_new(self, view: memoryview, clusters: list[int], iov: list) -> None:
        """Allocate one host run for ``clusters`` and write their contents.

        ``iov`` items are buffers or ``(start, end)`` slices of ``view``.
        """
        host = self._alloc(len(clusters))
        cs = self.cluster_size
        for i, ci in enumerate(clusters):
            self._set(ci, ((host + i) * cs) | _COPIED)
        bufs = [view[p[0]:p[1]] if isinstance(p, tuple) else p for p in iov]
        _pwrite_all(self._fd, bufs, self._base + host * cs)

    def _write_compressed(self, cblobs: list[tuple[int, bytes]]) -> None:
        """Pack compressed clusters back to back at the end of the file."""
        cs = self.cluster_size
        start = self._ctail
        if start is None or -(-start // cs) != self._end or start % cs == 0:
            # The open compressed cluster is no longer the last one: start fresh.
            start = self._end * cs
        pos = start
        for ci, blob in cblobs:
            first = pos // cs
            sector_end = -(-(pos + len(blob)) // 512) * 512
            last = (sector_end - 1) // cs
            self._grow_to(last + 1)
            for hc in range(first, last + 1):
                self._ref(hc, +1)
            nsect = (sector_end - (pos & ~511)) // 512 - 1
            self._set(ci, _COMPRESSED | (nsect << self._csize_shift) | pos)
            pos += len(blob)
        _pwrite_all(self._fd, [b for _, b in cblobs], self._base + start)
        self._ctail = pos

    def _read_cluster(self, ci: int, entry: int) -> bytes:
        """One cluster's guest bytes (entry is plain or compressed)."""
        cs = self.cluster_size
        if entry & _COMPRESSED:
            coff, stop = compressed_span(entry, self._cbits)
            raw = os.pread(self._fd, stop - coff, self._base + coff)
            data = zlib.decompressobj(-12).decompress(raw, cs)
            if len(data) != cs:
                raise FormatError(f"compressed cluster {ci} is truncated", self.path)
            return data
        buf = bytearray(cs)
        _pread_all(self._fd, memoryview(buf), self._base + (entry & _OFFSET_MASK))
        return bytes(buf)

    # --- the backing file --------------------------------------------------

    def use_backing(self, backend) -> None:
        """Read the backing data from ``backend`` (owned, closed with the writer)
        instead of opening the file named in the header: a storage engine
        gives the parent volume it recorded itself."""
        with self._lock:
            old, self._backing = self._backing, backend
        if old is not None:
            old.close()

    def _backing_backend(self):
        """The backing file's guest data (chain aware), opened once on demand."""
        if self._backing is None:
            path = os.path.join(os.path.dirname(os.path.abspath(self.path)),
                                self.backing_file)
            try:
                self._backing = open_image(path, "r", format=self.backing_format)
            except FormatError as e:
                raise FormatError(f"cannot open backing file {path}: {e}",
                                  self.path) from e
        return self._backing

    def _read_backing(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with backing bytes; zeros past the backing's end."""
        backing = self._backing_backend()
        n = max(0, min(len(view), backing.size - offset))
        got = backing.read_into(offset, view[:n]) if n else 0
        view[got:] = bytes(len(view) - got)

    def _backing_cluster(self, ci: int) -> bytearray:
        buf = bytearray(self.cluster_size)
        start = ci * self.cluster_size
        self._read_backing(start, memoryview(buf)[:min(self.cluster_size, self._size - start)])
        return buf

    def _backing_extents(self) -> list[Extent]:
        backing = self._backing_backend()
        exts = [e for e in backing.extents() if e.start < self._size]
        end = min(backing.size, self._size)
        if exts and exts[-1].end > end:
            last = exts[-1]
            exts[-1] = Extent(last.start, end - last.start, last.zero, last.hole)
        if end < self._size:
            exts.append(Extent(end, self._size - end, zero=True, hole=True))
        return exts

    # --- L2 and refcount bookkeeping ---------------------------------------

    def _get(self, ci: int) -> int:
        table = self._l2.get(ci >> self._l2_bits)
        return table[ci & (self._l2_entries - 1)] if table is not None else 0

    def _set(self, ci: int, entry: int) -> None:
        idx = ci >> self._l2_bits
        table = self._l2.get(idx)
        if table is None:
            if entry == 0:
                return
            table = self._l2[idx] = array("Q", bytes(self.cluster_size))
        table[ci & (self._l2_entries - 1)] = entry

    @staticmethod
    def _is_plain(entry: int) -> bool:
        return not entry & _COMPRESSED and bool(entry & _OFFSET_MASK)

    def _is_frozen(self, entry: int) -> bool:
        return bool(self._frozen) and (entry & _OFFSET_MASK) // self.cluster_size in self._frozen

    def _release(self, entry: int) -> None:
        """Drop the host clusters an L2 entry referenced."""
        cs = self.cluster_size
        if entry & _COMPRESSED:
            coff, end = compressed_span(entry, self._cbits)
            for hc in range(coff // cs, (end - 1) // cs + 1):
                self._ref(hc, -1)
        elif entry & _OFFSET_MASK:
            hc = (entry & _OFFSET_MASK) // cs
            if self._frozen:
                self._frozen.discard(hc)
            self._ref(hc, -1)

    def _ref(self, hc: int, delta: int) -> None:
        value = self._refcounts[hc] + delta
        if value > _MAX_REFCOUNT:
            raise FormatError("refcount overflow", self.path)
        self._refcounts[hc] = value
        if value == 0:
            self._pending.append(hc)
            if self._ctail is not None and self._ctail // self.cluster_size == hc:
                self._ctail = None

    def _grow_to(self, nclusters: int) -> None:
        if nclusters > self._end:
            missing = nclusters - len(self._refcounts)
            if missing > 0:
                self._refcounts.extend(array("H", bytes(2 * missing)))
            self._end = nclusters

    def _alloc(self, count: int) -> int:
        """``count`` contiguous host clusters with refcount 1 (free space first)."""
        for i, (start, n) in enumerate(self._free):
            if n >= count:
                if n == count:
                    del self._free[i]
                else:
                    self._free[i] = [start + count, n - count]
                break
        else:
            start = self._end
            self._grow_to(start + count)
        for hc in range(start, start + count):
            self._refcounts[hc] = 1
        return start

    # --- metadata ----------------------------------------------------------

    def _write_metadata(self, sync: bool = True) -> None:
        cs = self.cluster_size
        # The previous metadata is released now; if it sits at the end of the
        # file, the new metadata simply takes its place.
        if self._meta is not None:
            mstart, mcount = self._meta
            for hc in range(mstart, mstart + mcount):
                self._refcounts[hc] = 0
            if mstart + mcount == self._end:
                self._end = mstart
                del self._refcounts[mstart:]
                self._free = [[s, n] for s, n in self._free if s < mstart]
                if self._ctail is not None and self._ctail > mstart * cs:
                    self._ctail = None
            else:
                self._free.append([mstart, mcount])
            self._meta = None
        l1_clusters = -(-self._l1_size * 8 // cs)
        l2_count = len(self._l2)
        base = self._end
        per_block = cs * 8 // 16
        blocks, table = refcount_clusters(base + l1_clusters + l2_count, cs)
        count = l1_clusters + l2_count + blocks + table
        self._grow_to(base + count)
        for hc in range(base, base + count):
            self._refcounts[hc] = 1
        self._meta = (base, count)

        pos = base
        l1 = array("Q", bytes(8 * self._l1_size))
        for idx in sorted(self._l2):
            l1[idx] = (pos * cs) | _COPIED
            t = big_endian(array("Q", self._l2[idx]))
            _pwrite_all(self._fd, [t], self._base + pos * cs)
            pos += 1
        l1_offset = pos * cs if l1_clusters else 0
        if l1_clusters:
            _pwrite_all(self._fd, [big_endian(l1)], self._base + pos * cs)
            pos += l1_clusters
        rt = array("Q", bytes(table * cs))
        refs = array("H", self._refcounts)
        refs.extend(array("H", bytes(2 * (blocks * per_block - len(refs)))))
        for i in range(blocks):
            rt[i] = (pos + i) * cs
        _pwrite_all(self._fd, [big_endian(refs)], self._base + pos * cs)
        pos += blocks
        rt_offset = pos * cs
        _pwrite_all(self._fd, [big_endian(rt)], self._base + rt_offset)
        pos += table
        os.ftruncate(self._fd, self._base + pos * cs)
        # The header goes last so it never points at half-written tables.
        if sync:
            os.fsync(self._fd)
        _pwrite_all(self._fd, [self._header(l1_offset, rt_offset, table)], self._base)
        # Clusters released before this flush are no longer referenced on disk.
        for hc in self._pending:
            if hc < self._end and self._refcounts[hc] == 0:
                self._free.append([hc, 1])
        self._pending.clear()
        self._free = _coalesce(self._free)

    def _header(self, l1_offset: int, rt_offset: int, rt_clusters: int) -> bytes:
        exts = pack_extensions([(EXT_BACKING_FORMAT, self.backing_format.encode())]
                               if self.backing_format else [])
        backing = (self.backing_file or "").encode()
        backing_offset = _HEADER_LEN + len(exts) if backing else 0
        header = pack_header(
            cluster_bits=self._cbits, size=self._size, l1_size=self._l1_size,
            l1_table_offset=l1_offset, refcount_table_offset=rt_offset,
            refcount_table_clusters=rt_clusters, refcount_order=_REFCOUNT_ORDER,
            backing_file_offset=backing_offset, backing_file_size=len(backing))
        return header + exts + backing

    # --- checks ------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise ValueError(
                f"{self.path}: range offset={offset} length={length} outside "
                f"the virtual size {self._size}")

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")


class _WriterView(Wrapper):
    """What :meth:`Qcow2Writer.clone` returns: the writer, but ``close`` does nothing."""

    def close(self) -> None:
        pass


def _overlay(layer: list[Extent], below: list[Extent]) -> list[Extent]:
    """Replace the unwritten (zero and hole) extents of ``layer`` by ``below``'s."""
    out: list[Extent] = []
    i = 0
    for ext in layer:
        if not (ext.zero and ext.hole):
            out.append(ext)
            continue
        # Skip the backing extents before this one, then clip those inside.
        while i < len(below) and below[i].end <= ext.start:
            i += 1
        j = i
        while j < len(below) and below[j].start < ext.end:
            b = below[j]
            start, end = max(b.start, ext.start), min(b.end, ext.end)
            out.append(Extent(start, end - start, b.zero, b.hole))
            j += 1
    return out


def _coalesce(ranges: list[list[int]]) -> list[list[int]]:
    """Free ``[start, count]`` runs of host clusters, sorted, touching ones joined."""
    return [[a, b - a] for a, b in union_ranges([(s, s + n) for s, n in ranges])]


def _pwrite_all(fd: int, iov: list, offset: int) -> None:
    """Write every buffer of ``iov`` back to back from ``offset``."""
    views = [memoryview(b).cast("B") for b in iov]
    for i in range(0, len(views), _IOV_MAX):
        chunk = views[i:i + _IOV_MAX]
        n = os.pwritev(fd, chunk, offset)
        for v in chunk:
            if n >= len(v):
                n -= len(v)
                offset += len(v)
                continue
            # Short write: finish this buffer and the rest one by one.
            v = v[n:]
            offset += n
            n = 0
            while v:
                k = os.pwrite(fd, v, offset)
                offset += k
                v = v[k:]


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``offset``; zeros past the end of the file."""
    fill_zero(view[read_full(fd, view, offset):])
