"""The small interface every place that holds image bytes offers.

Every copy is one copy loop between two backends (``imagetool.iocore.copier``);
the local engine's data plane serves tickets over the same backends. Offsets and sizes
are guest (virtual) bytes unless a backend says it moves a volume's own bytes.
"""

from __future__ import annotations

import bisect
import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, TypeVar, runtime_checkable


@dataclass(frozen=True)
class Extent:
    """A run of guest bytes with one allocation state.

    ``zero``: the range reads as zeros. ``hole``: the range is not allocated
    in this image (for a qcow2 layer read shallow: not allocated in this
    layer; such ranges read as zeros unless a backing file says otherwise).
    Data extents have ``zero=False, hole=False``.
    """

    start: int
    length: int
    zero: bool = False
    hole: bool = False

    @property
    def end(self) -> int:
        return self.start + self.length


@runtime_checkable
class Backend(Protocol):
    """Random access to an image's bytes.

    Backends used by the local engine's data plane are shared between
    connection threads, so ``read_into``/``write``/``zero`` at distinct
    offsets must be thread-safe. The copier gives each worker its own
    backend with ``clone()`` (or shares thread-safe local ones).
    """

    #: imageio's names of the operations offered ("extents", "zero",
    #: "flush", "checksum"): a destination without "zero" gets zeros as data.
    features: frozenset[str]
    #: Connections the server advises (None: no limit), for worker counts.
    max_readers: int | None
    max_writers: int | None

    @property
    def size(self) -> int:
        """Bytes addressable through this backend (virtual size for guest data)."""
        ...

    def extents(self, context: str = "zero") -> Iterator[Extent]:
        """Cover ``[0, size)`` with consecutive extents, merged where equal."""
        ...

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; return bytes read (short only at the end)."""
        ...

    def write(self, offset: int, data: memoryview | bytes) -> None:
        """Write all of ``data`` at ``offset``."""
        ...

    def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros (punch holes if sparse)."""
        ...

    def flush(self) -> None:
        """Make everything written so far durable."""
        ...

    def clone(self) -> "Backend":
        """A new backend on the same image, for another worker thread."""
        ...

    def close(self) -> None:
        ...


_C = TypeVar("_C", bound="Closing")


class Closing:
    """``with obj:`` for an object with ``close()``: closed on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def undo_on_error(undo: Callable[[], object]) -> Iterator[None]:
    """Call ``undo`` when the block raises (a Ctrl-C included), then let the
    exception go on: what was opened before the block is not leaked."""
    try:
        yield
    except BaseException:
        undo()
        raise


# A local backend does every operation itself.
LOCAL_FEATURES = frozenset({"extents", "zero", "flush"})


class BackendBase(Closing):
    """The Backend protocol's defaults, for backends of local images."""

    features: frozenset[str] = LOCAL_FEATURES
    max_readers: int | None = None
    max_writers: int | None = None

    def read(self, offset: int, length: int) -> bytes:
        """Convenience: up to ``length`` guest bytes at ``offset``."""
        buf = bytearray(max(0, min(length, self.size - offset)))
        n = self.read_into(offset, memoryview(buf))
        return bytes(buf[:n])


def union_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(start, end)`` ranges, sorted, with overlapping or touching ones joined."""
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def add_range(ranges: list[list[int]], start: int, end: int) -> None:
    """Merge ``[start, end)`` into sorted, disjoint ``ranges`` in place; a range
    that touches or overlaps its neighbours joins them (an empty one is
    ignored). The bookkeeping of a transfer journal's done ranges and of the
    local engine's dirty ranges."""
    if end <= start:
        return
    i = bisect.bisect_left(ranges, [start, start])
    # The previous range may touch or overlap the new one.
    if i > 0 and ranges[i - 1][1] >= start:
        i -= 1
    j = i
    while j < len(ranges) and ranges[j][0] <= end:
        start = min(start, ranges[j][0])
        end = max(end, ranges[j][1])
        j += 1
    ranges[i:j] = [[start, end]]


def merge_extents(extents) -> Iterator[Extent]:
    """Join adjacent extents that have the same zero/hole state."""
    current: Extent | None = None
    for ext in extents:
        if ext.length == 0:
            continue
        if (current is not None and current.end == ext.start
                and current.zero == ext.zero and current.hole == ext.hole):
            current = Extent(current.start, current.length + ext.length,
                             current.zero, current.hole)
        else:
            if current is not None:
                yield current
            current = ext
    if current is not None:
        yield current

