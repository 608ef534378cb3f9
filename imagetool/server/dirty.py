"""Write tracking for incremental backups: what was written since a checkpoint.

The engine API's checkpoints (oVirt 4.4+ VM backups) stand for qemu dirty
bitmaps: for each checkpoint of a disk, the ranges the guest wrote since
the checkpoint was created. Here every data-plane write or zero of an
upload transfer adds its range (rounded out to ``GRAIN``) to each
checkpoint of its disk, before the data is written, so a range can be
reported dirty without having changed but never the reverse. The ranges
are kept in ``<data dir>/dirty/<disk id>.json``, replaced atomically after
each change, so they survive an engine restart.

A backup transfer reads the disk as it was when the backup started and
reports, with ``extents?context=dirty`` (ovirt-imageio docs), the ranges of
its ``from_checkpoint_id`` frozen at that moment.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Iterator

from imagetool.iocore.backend import BackendBase, Extent, add_range
from imagetool.fsutil import write_atomic
from imagetool.ids import is_uuid

GRAIN = 64 << 10


class DirtyTracker:
    """Per disk and checkpoint, the ranges written since the checkpoint."""

    def __init__(self, data_dir: str) -> None:
        self.dir = os.path.join(data_dir, "dirty")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._maps: dict[str, dict[str, list[list[int]]]] = {}

    def _path(self, disk_id: str) -> str:
        if not is_uuid(disk_id):
            raise ValueError(f"invalid disk id {disk_id!a}")
        return os.path.join(self.dir, f"{disk_id}.json")

    def _map(self, disk_id: str) -> dict[str, list[list[int]]]:
        m = self._maps.get(disk_id)
        if m is None:
            try:
                with open(self._path(disk_id)) as f:
                    m = json.load(f)
            except (FileNotFoundError, ValueError):
                m = {}
            self._maps[disk_id] = m
        return m

    def _save(self, disk_id: str) -> None:
        path = self._path(disk_id)
        m = self._maps.get(disk_id) or {}
        if m:
            write_atomic(path, json.dumps(m), sync=False)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def add_checkpoint(self, disk_id: str, checkpoint_id: str) -> None:
        """Start tracking writes for a new checkpoint of the disk."""
        with self._lock:
            self._map(disk_id)[checkpoint_id] = []
            self._save(disk_id)

    def remove_checkpoint(self, disk_id: str, checkpoint_id: str) -> None:
        with self._lock:
            self._map(disk_id).pop(checkpoint_id, None)
            self._save(disk_id)

    def record(self, disk_id: str, offset: int, length: int) -> None:
        """A write or zero of ``[offset, offset + length)`` is about to happen."""
        if length <= 0:
            return
        start = offset // GRAIN * GRAIN
        end = -(-(offset + length) // GRAIN) * GRAIN
        with self._lock:
            m = self._map(disk_id)
            if not m:
                return
            for ranges in m.values():
                add_range(ranges, start, end)
            self._save(disk_id)

    def ranges(self, disk_id: str, checkpoint_id: str) -> list[list[int]] | None:
        """A copy of the ranges written since the checkpoint (None: not tracked)."""
        with self._lock:
            r = self._map(disk_id).get(checkpoint_id)
            return None if r is None else [list(x) for x in r]


class DirtyView(BackendBase):
    """A read-only backend whose ``dirty`` extents are given ranges.

    Outside them the extents are holes (the data plane reports them
    ``dirty: false``); inside, the reader's zero flag is kept so the
    client can write zeros without reading them.
    """

    def __init__(self, backend, ranges: list[list[int]]):
        self._b = backend
        self._ranges = ranges

    @property
    def size(self) -> int:
        return self._b.size

    def extents(self, context: str = "zero") -> Iterator[Extent]:
        if context != "dirty":
            yield from self._b.extents(context)
            return
        size = self._b.size
        base = list(self._b.extents("zero"))
        pos = 0
        i = 0
        for start, end in self._ranges:
            end = min(end, size)
            if start >= end:
                continue
            if start > pos:
                yield Extent(pos, start - pos, hole=True)
            while i < len(base) and base[i].start + base[i].length <= start:
                i += 1
            j = i
            p = start
            while p < end and j < len(base):
                e = base[j]
                b = min(end, e.start + e.length)
                if b > p:
                    yield Extent(p, b - p, zero=e.zero or e.hole)
                    p = b
                if e.start + e.length <= p:
                    j += 1
            if p < end:
                yield Extent(p, end - p)
            pos = end
        if pos < size:
            yield Extent(pos, size - pos, hole=True)

    def read_into(self, offset: int, buf: memoryview) -> int:
        return self._b.read_into(offset, buf)

    def write(self, offset: int, data) -> None:
        raise OSError("a backup is read-only")

    def zero(self, offset: int, length: int) -> None:
        raise OSError("a backup is read-only")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._b.close()
