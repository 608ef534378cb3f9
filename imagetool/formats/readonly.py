"""What the pure-Python read-only image readers (qcow2, VMDK) share.

Both translate a range of guest bytes into segments ``[gstart, length,
kind, host]`` of one kind each before reading or reporting extents, keep
bounded caches of tables and decompressed clusters shared by reader
threads, and refuse writes the same way.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Iterator

from imagetool.errors import UnsupportedFeature
from imagetool.iocore.backend import BackendBase, Extent, merge_extents

# Segment kinds.
DATA, ZERO, UNALLOC, COMPRESSED = 0, 1, 2, 3

_ZEROS = memoryview(bytes(1 << 20))  # sliced without copying


def fill_zero(view: memoryview) -> None:
    """Zero ``view`` in place without allocating a buffer of its size."""
    pos, n = 0, len(view)
    while pos < n:
        step = min(n - pos, len(_ZEROS))
        view[pos:pos + step] = _ZEROS[:step]
        pos += step


def add_segment(out: list[list[int]], gstart: int, length: int, kind: int,
                host: int) -> None:
    """Append a segment, merging it into the last one where it continues it.

    Segments merge when they have the same kind and, for data, contiguous
    host offsets. Compressed segments carry a cluster reference in ``host``
    and never merge.
    """
    if out:
        last = out[-1]
        if last[2] == kind and kind != COMPRESSED and (
                kind != DATA or last[3] + last[1] == host):
            last[1] += length
            return
    out.append([gstart, length, kind, host])


def segment_extents(map_range: Callable[[int, int], list[list[int]]], start: int,
                    end: int, span: int, unalloc=None) -> Iterator[Extent]:
    """Unmerged extents of ``[start, end)`` from ``map_range(start, end)``'s segments.

    Mapped one ``span`` (what one table maps) at a time, which keeps memory
    bounded on huge images. Unallocated segments are holes, or what
    ``unalloc(start, end)`` says (a backing file's extents).
    """
    pos = start
    while pos < end:
        stop = min((pos // span + 1) * span, end)
        for gstart, length, kind, _host in map_range(pos, stop):
            if kind == ZERO:
                yield Extent(gstart, length, zero=True)
            elif kind != UNALLOC:
                yield Extent(gstart, length)
            elif unalloc is None:
                yield Extent(gstart, length, zero=True, hole=True)
            else:
                yield from unalloc(gstart, gstart + length)
        pos = stop


class LockedLRU:
    """A bounded least-recently-used cache that several threads may share.

    The lock is held only to look up or store, never while the caller
    loads a missing value, so two threads may load the same one.
    """

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._lock = threading.Lock()
        self._items: OrderedDict = OrderedDict()

    def get(self, key):
        """The cached value, or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        """Store ``value``, dropping the least recently used beyond the bound."""
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)


class ReadOnlyBackend(BackendBase):
    """The Backend protocol's methods that read-only images answer alike.

    Subclasses set ``_size``, ``_format`` (named in refusals, or
    ``_refusal`` whole) and ``_label`` (the file errors name), and provide
    ``_unmerged_extents()``, ``_read_guest(offset, view)`` for ``0 <
    len(view)`` within the size, ``clone()`` and ``close()``.
    """

    _format = ""
    _refusal = "{} images are opened read-only"
    _size = 0
    _label = ""

    @property
    def size(self) -> int:
        return self._size

    def extents(self, context: str = "zero") -> Iterator[Extent]:
        """Cover ``[0, size)`` with merged data / zero / hole extents."""
        if context != "zero":
            raise ValueError(f"unsupported extents context {context!r}")
        return merge_extents(self._unmerged_extents())

    def _unmerged_extents(self) -> Iterator[Extent]:
        raise NotImplementedError

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` with guest bytes at ``offset``; short only at the end."""
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        view = memoryview(buf).cast("B")
        n = min(len(view), self._size - offset)
        if n <= 0:
            return 0
        self._read_guest(offset, view[:n])
        return n

    def _read_guest(self, offset: int, view: memoryview) -> None:
        raise NotImplementedError

    def write(self, offset: int, data) -> None:
        raise UnsupportedFeature(self._refusal.format(self._format), self._label)

    def zero(self, offset: int, length: int) -> None:
        raise UnsupportedFeature(self._refusal.format(self._format), self._label)

    def flush(self) -> None:
        """Nothing to flush on a read-only image."""
