"""Writing a point from any Backend: full, or incremental from a parent.

A full point reads each chunk's data ranges (the source's zero extents are
never read) and stores the chunks no repository point has yet. An
incremental reads only the dirty ranges, as a qcow2 incremental does:
chunks no dirty range touches are taken from the parent's index as they
are; a partly dirty chunk is rebuilt from the parent's chunk plus the new
bytes (as Proxmox Backup Server does with QEMU's dirty bitmap).

Chunks are read, hashed, compressed, sealed and uploaded by ``workers``
threads, each on its own ``clone()`` of the source (so an HTTP source
opens one connection per worker) and with one reused buffer. A worker
takes a run of consecutive chunks (up to ``BATCH_BYTES``) and reads their
adjacent data ranges in one request, so small chunks cost no more
requests than a download's; memory stays near ``workers x (BATCH_BYTES +
chunk size)`` whatever the disk size. The index is written after the last
chunk; a lease (``imagetool.backup.store.gc``) tells a concurrent gc that
this backup is running and which parent it builds on.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from imagetool.backup.digests import block_count
from imagetool.backup.store import gc
from imagetool.backup.store.chunkstore import ChunkStore, is_zero
from imagetool.backup.store.points import (DiskIndex, Index, new_point_name, save_index,
                                           valid_name)
from imagetool.backup.store.storage import StoreError
from imagetool.checksum import _blocks
from imagetool.errors import FormatError
from imagetool.iocore.backend import Backend, union_ranges
from imagetool.formats.readonly import fill_zero

# Consecutive chunks are read together, in requests of up to this many
# bytes: the copier's default request size, so a full point makes as few
# HTTP requests as a download however small its chunks.
BATCH_BYTES = 8 << 20


@dataclass
class DiskSource:
    """A disk to back up: its id, its guest bytes, and for an incremental
    the ranges changed since the parent (``(start, end)``); None reads all."""

    disk_id: str
    backend: Backend
    dirty: list[tuple[int, int]] | None = None
    meta: dict | None = None
    zeros: list[tuple[int, int]] | None = None   # dirty ranges known to read as zeros


@dataclass
class _Job:
    disk: int
    chunk: int
    start: int
    length: int
    ranges: list[tuple[int, int]]       # chunk-relative (offset, length) to read
    base: str | None = None             # parent chunk under the ranges
    zeros: list[tuple[int, int]] = field(default_factory=list)   # to zero, not read


def _full_jobs(d: int, backend: Backend, cs: int):
    for start, length, ranges in _blocks(backend, backend.size, cs):
        yield _Job(d, start // cs, start, length, ranges) if ranges else (d, start // cs, None)


def _dirty_jobs(d: int, src: DiskSource, parent: DiskIndex, cs: int):
    """Jobs for the chunks dirty ranges touch; ``(disk, chunk, id)`` for the others."""
    size = src.backend.size
    dirty = [(max(0, a), min(b, size)) for a, b in src.dirty or () if b > a]
    if parent.virtual_size < size:
        dirty.append((parent.virtual_size, size))
    dirty = [r for r in union_ranges(dirty) if r[1] > r[0]]
    # Dirty ranges the source says are zeros are zeroed, not read.
    data = _minus(dirty, [r for r in union_ranges(src.zeros or ()) if r[1] > r[0]])
    reads, zeros = _Clipper(data), _Clipper(_minus(dirty, data))
    for i in range(block_count(size, cs)):
        start, length = i * cs, min(cs, size - i * cs)
        ranges, zeroed = reads.clip(start, start + length), zeros.clip(start, start + length)
        base = parent.chunks[i] if i < len(parent.chunks) else None
        same_length = i < len(parent.chunks) and min(cs, parent.virtual_size - start) == length
        if not ranges and not zeroed and same_length:
            yield (d, i, base)
        else:
            # A resized last chunk is rebuilt too: its length changed.
            yield _Job(d, i, start, length, ranges, base, zeroed)


def _batches(jobs, limit: int):
    """Runs of up to ``limit`` consecutive chunk jobs (lists), and the
    ``(disk, chunk, id)`` tuples between them as they come."""
    run: list[_Job] = []
    for job in jobs:
        if isinstance(job, tuple) or (run and job.chunk != run[-1].chunk + 1):
            if run:
                yield run
                run = []
            if isinstance(job, tuple):
                yield job
                continue
        run.append(job)
        if len(run) == limit:
            yield run
            run = []
    if run:
        yield run


def _minus(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of sorted, disjoint ``(start, end)`` ranges outside ``cut`` (same kind)."""
    out, j = [], 0
    for a, b in ranges:
        while j < len(cut) and cut[j][1] <= a:
            j += 1
        pos, k = a, j
        while k < len(cut) and cut[k][0] < b:
            if cut[k][0] > pos:
                out.append((pos, cut[k][0]))
            pos = max(pos, cut[k][1])
            k += 1
        if pos < b:
            out.append((pos, b))
    return out


class _Clipper:
    """Sorted, disjoint ``(start, end)`` ranges cut chunk by chunk, in order."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = ranges
        self.j = 0

    def clip(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts inside ``[start, end)`` as ``(offset from start, length)``."""
        r = self.ranges
        while self.j < len(r) and r[self.j][1] <= start:
            self.j += 1
        out, k = [], self.j
        while k < len(r) and r[k][0] < end:
            a, b = max(r[k][0], start), min(r[k][1], end)
            out.append((a - start, b - a))
            k += 1
        return out


class _Workers:
    """Per-thread source clones and buffers, released together."""

    def __init__(self, store: ChunkStore, sources: list[DiskSource], hasher=None) -> None:
        self.store = store
        self.sources = sources
        self.hasher = hasher
        # The block digest is the chunk id (plain SHA-256): not hashed twice.
        self.same_hash = (hasher is not None and store.keys is None
                          and hasher.new().name == "sha256")
        self.local = threading.local()
        self.clones: list[Backend] = []
        self.lock = threading.Lock()
        self.stats = {"data": 0, "written": 0, "reused": 0, "read": 0}
        self.digests: dict[int, bytes] = {}

    def _backend(self, d: int) -> Backend:
        cache = getattr(self.local, "backends", None)
        if cache is None:
            cache = self.local.backends = {}
        b = cache.get(d)
        if b is None:
            b = self.sources[d].backend.clone()
            with self.lock:
                self.clones.append(b)
            cache[d] = b
        return b

    def run(self, batch: list[_Job]) -> list[str | None]:
        """Store a batch of consecutive chunks, read with one request per
        run of adjacent data ranges (as the copier's ``request_size``
        requests), not one per chunk; their ids in order."""
        first = batch[0].start
        total = batch[-1].start + batch[-1].length - first
        buf = getattr(self.local, "buf", None)
        if buf is None or len(buf) < total:
            buf = self.local.buf = bytearray(max(total, self.store.chunk_size))
        whole = memoryview(buf)[:total]
        reads: list[list[int]] = []
        for job in batch:
            view = whole[job.start - first:job.start - first + job.length]
            full = len(job.ranges) == 1 and job.ranges[0] == (0, job.length)
            if full:
                pass                # read whole below: the parent's chunk is not needed
            elif job.base is not None:
                base = self.store.get_chunk(job.base)
                n = min(len(base), job.length)
                view[:n] = base[:n]
                fill_zero(view[n:])
            else:
                fill_zero(view)
            for off, length in job.zeros:
                fill_zero(view[off:off + length])
            for off, length in job.ranges:
                if reads and reads[-1][0] + reads[-1][1] == job.start + off:
                    reads[-1][1] += length
                else:
                    reads.append([job.start + off, length])
        src = self._backend(batch[0].disk)
        for offset, length in reads:
            got = src.read_into(offset, whole[offset - first:offset - first + length])
            if got != length:
                raise FormatError(f"short read at offset {offset}: {got} of {length} bytes")
        return [self._put(job, whole[job.start - first:job.start - first + job.length])
                for job in batch]

    def _put(self, job: _Job, view: memoryview) -> str | None:
        digest = None
        if self.hasher is not None and not self.same_hash:
            digest = (self.hasher.zero_digest(job.length) if is_zero(view)
                      else self.hasher.new(view).digest())
        cid, written = self.store.put_chunk(view)
        if self.same_hash:
            digest = bytes.fromhex(cid) if cid else self.hasher.zero_digest(job.length)
        with self.lock:
            if digest is not None:
                self.digests[job.chunk] = digest
            self.stats["read"] += sum(length for _, length in job.ranges)
            self.stats["data"] += job.length if cid else 0
            self.stats["written"] += written
            self.stats["reused"] += job.length if cid and not written else 0
        return cid

    def close(self) -> None:
        for b in self.clones:
            with contextlib.suppress(Exception):
                b.close()


class PointWriter:
    """A point being written one disk at a time, its index last.

    ``add`` stores a disk's chunks (the engine flow adds each disk while
    its image transfer is open); ``commit`` writes the index, and only then
    does the point exist; ``close`` drops the lease whatever happened, so a
    failed or killed writer leaves only chunks no index names (gc's).
    """

    def __init__(self, store: ChunkStore, vm_id: str, *, parent: Index | None = None,
                 name: str | None = None, workers: int = 4) -> None:
        if not valid_name(vm_id):
            raise StoreError(f"invalid VM id {vm_id!r}")
        if parent is not None and parent.vm_id != vm_id:
            raise StoreError(f"parent point {parent.name} belongs to VM {parent.vm_id}")
        if workers < 1:
            raise ValueError(f"invalid workers {workers}")
        self.store = store
        self.vm_id = vm_id
        self.parent = parent
        self.name = name or new_point_name()
        self.workers = workers
        self.disks: list[DiskIndex] = []
        self.digests: dict[str, dict[int, bytes]] = {}
        self.stats = {"data": 0, "written": 0, "reused": 0, "read": 0, "logical": 0}
        self.lease = gc.take_lease(store, vm_id, self.name, parent.name if parent else None)

    def add(self, src: DiskSource, *, progress: Callable[[int], None] | None = None,
            cancel: threading.Event | None = None, hasher=None) -> DiskIndex:
        """Store one disk's chunks (incremental when the parent has the disk
        and ``src.dirty`` is given); its DiskIndex. ``cancel`` set: stop
        with ``copier.CopyCancelled``. ``hasher`` (a ``checksum.BlockHasher``
        whose block size is the chunk size): the digest of each chunk
        stored is kept in ``digests[disk_id]`` (by chunk index), as
        imageio's block checksum needs, without reading the data twice."""
        from imagetool.iocore.copier import CopyCancelled
        if not valid_name(src.disk_id):
            raise StoreError(f"invalid disk id {src.disk_id!r}")
        if any(d.disk_id == src.disk_id for d in self.disks):
            raise StoreError("a disk is given twice")
        store, cs, workers = self.store, self.store.chunk_size, self.workers
        if hasher is not None and hasher.block_size != cs:
            raise ValueError("the hasher's block size must be the chunk size")
        size = src.backend.size
        w = _Workers(store, [src], hasher)
        chunks: list = [None] * block_count(size, cs)
        pending: deque = deque()

        def settle(item) -> None:
            indexes, length, result = item
            if hasattr(result, "result"):
                for i, cid in zip(indexes, result.result()):
                    chunks[i] = cid
            else:
                chunks[indexes[0]] = result
            if progress:
                progress(length)

        pdisk = self.parent.disk(src.disk_id) if self.parent else None
        jobs = (_dirty_jobs(0, src, pdisk, cs) if pdisk is not None and src.dirty is not None
                else _full_jobs(0, src.backend, cs))
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="point") as pool:
                try:
                    for job in _batches(jobs, max(1, BATCH_BYTES // cs)):
                        if cancel is not None and cancel.is_set():
                            raise CopyCancelled()
                        if isinstance(job, tuple):
                            length = min(cs, size - job[1] * cs)
                            pending.append(([job[1]], length, job[2]))
                        else:
                            pending.append(([j.chunk for j in job], sum(j.length for j in job),
                                            pool.submit(w.run, job)))
                        while len(pending) > 2 * workers or (
                                pending and not hasattr(pending[0][2], "result")):
                            settle(pending.popleft())
                        gc.renew_lease(store, self.lease)
                    while pending:
                        settle(pending.popleft())
                except BaseException:
                    for item in pending:
                        if hasattr(item[2], "cancel"):
                            item[2].cancel()
                    raise
        finally:
            w.close()
        for k, v in w.stats.items():
            self.stats[k] += v
        self.stats["logical"] += size
        self.digests[src.disk_id] = w.digests
        disk = DiskIndex(src.disk_id, size, chunks, src.meta or {})
        self.disks.append(disk)
        return disk

    def commit(self, *, ovf: str | None = None, manifest: dict | None = None) -> Index:
        """Make the chunks durable, write the index (the point exists from
        now on) and drop the lease."""
        self.store.storage.sync()
        index = Index(self.vm_id, self.name, self.disks,
                      self.parent.name if self.parent else None, time.time(), ovf,
                      manifest or {}, dict(self.stats))
        save_index(self.store, index)
        self.close()
        return index

    def close(self) -> None:
        gc.drop_lease(self.store, self.lease)


def write_point(store: ChunkStore, vm_id: str, sources: list[DiskSource], *,
                parent: Index | None = None, ovf: str | None = None,
                manifest: dict | None = None, name: str | None = None,
                workers: int = 4, progress: Callable[[int], None] | None = None) -> Index:
    """Back up ``sources`` as a new point of ``vm_id`` and return its index.

    With ``parent``, a source whose ``dirty`` is given and whose disk the
    parent has is written as an incremental; any other source is read in
    full. ``progress(nbytes)`` is called with guest bytes done.
    """
    for s in sources:
        if not valid_name(s.disk_id):
            raise StoreError(f"invalid disk id {s.disk_id!r}")
    if len({s.disk_id for s in sources}) != len(sources):
        raise StoreError("a disk is given twice")
    writer = PointWriter(store, vm_id, parent=parent, name=name, workers=workers)
    try:
        for src in sources:
            writer.add(src, progress=progress)
        return writer.commit(ovf=ovf, manifest=manifest)
    finally:
        writer.close()
