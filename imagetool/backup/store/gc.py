"""Garbage collection: mark and sweep with a grace period, and leases.

Prune removes indexes only; the chunks no index names any more are freed
here, as Proxmox Backup Server does (``docs/maintenance.rst``): the mark
phase collects every chunk id the indexes name, the sweep deletes the
other chunks, but only those not modified within the grace period before
gc started (24 h 5 min by default, as PBS). A backup running meanwhile is
safe because:

- chunks it uploads are new, hence younger than the cutoff;
- a chunk it finds already stored and reuses is touched first when older
  than an hour (``chunkstore.TOUCH_AGE``), so it is younger than the cutoff
  too; a chunk gc deleted just before that touch is uploaded again;
- chunks an incremental takes from its parent's index stay marked, because
  the backup holds a lease (``leases/VM/POINT``) naming that parent: gc
  marks the chunks of parents named by live leases, prune keeps such
  parents, and if one is gone anyway gc sweeps nothing that run.

A lease is renewed while the backup runs and expires ``LEASE_TTL`` after
its last renewal (a killed backup's lease is removed by the next gc).
Time is the storage's clock: gc writes a marker object and reads its
modification time, so a client clock that is off does not shift the cutoff.
"""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from imagetool.backup.store.chunkstore import ChunkStore, is_chunk_id
from imagetool.backup.store.points import list_points, load_index
from imagetool.backup.store.storage import ObjectMissing, StoreError

DEFAULT_GRACE = 24 * 3600 + 300
LEASE_TTL = 3600.0
LEASE_RENEW = 300.0
LEASES = "leases/"
CLOCK = "gc/clock"


@dataclass
class Lease:
    name: str
    parent: str | None
    renewed: float


def take_lease(store: ChunkStore, vm_id: str, point: str, parent: str | None) -> Lease:
    lease = Lease(f"{LEASES}{vm_id}/{point}", parent, 0.0)
    renew_lease(store, lease)
    return lease


def renew_lease(store: ChunkStore, lease: Lease) -> None:
    """Write the lease again if its last write is older than ``LEASE_RENEW``."""
    now = time.monotonic()
    if lease.renewed and now - lease.renewed < LEASE_RENEW:
        return
    store.storage.put(lease.name, json.dumps({"parent": lease.parent}).encode())
    lease.renewed = now


def drop_lease(store: ChunkStore, lease: Lease) -> None:
    with contextlib.suppress(StoreError):  # expires by itself
        store.storage.delete(lease.name)


def storage_now(store: ChunkStore) -> float:
    """The storage's clock, read as a fresh marker object's modification time."""
    store.storage.put(CLOCK, b"")
    info = store.storage.stat(CLOCK)
    return info.mtime if info else time.time()


def live_leases(store: ChunkStore, now: float) -> tuple[list[tuple[str, str | None]], list[str]]:
    """``([(vm_id, parent point or None)], [expired lease names])``."""
    live, expired = [], []
    for info in store.storage.list(LEASES):
        parts = info.name.split("/")
        if len(parts) != 3:
            continue
        if info.mtime < now - LEASE_TTL:
            expired.append(info.name)
            continue
        try:
            parent = json.loads(store.storage.get(info.name)).get("parent")
        except (ObjectMissing, ValueError, AttributeError):
            continue
        live.append((parts[1], parent if isinstance(parent, str) else None))
    return live, expired


@dataclass
class GcResult:
    indexes: int = 0
    referenced: int = 0
    chunks: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    kept_recent: int = 0
    swept: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def collect(store: ChunkStore, *, grace: float = DEFAULT_GRACE, dry_run: bool = False,
            workers: int = 8) -> GcResult:
    """Delete chunks no point references and nobody touched within ``grace`` seconds.

    An index that cannot be read stops the sweep (StoreError naming it):
    its chunks are unknown, and deleting them would lose that point for good.
    """
    if grace < 0:
        raise ValueError("grace must be >= 0")
    res = GcResult()
    start = storage_now(store)
    live, expired = live_leases(store, start)
    marked: set[str] = set()
    points = list_points(store)
    res.indexes = len(points)
    roots = set(points)

    def mark(vm: str, name: str) -> set[str]:
        try:
            return load_index(store, vm, name).chunk_ids()
        except ObjectMissing:
            return set()        # pruned meanwhile: its chunks are garbage now

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gc") as pool:
        for ids in pool.map(lambda p: mark(*p), points):
            marked |= ids
        for vm, parent in live:
            if parent is None or (vm, parent) in roots:
                continue
            try:
                marked |= load_index(store, vm, parent).chunk_ids()
            except ObjectMissing:
                res.swept = False
                res.notes.append(f"a running backup of {vm} builds on point {parent}, "
                                 "which is gone: nothing swept this time")
        res.referenced = len(marked)
        cutoff = start - grace
        doomed = []
        for info in store.storage.list("chunks/"):
            cid = info.name.rpartition("/")[2]
            if not is_chunk_id(cid) or info.name != f"chunks/{cid[:4]}/{cid}":
                continue
            res.chunks += 1
            if cid in marked:
                continue
            if info.mtime >= cutoff:
                res.kept_recent += 1
                continue
            doomed.append(info)
        if not res.swept or dry_run:
            res.deleted = len(doomed)
            res.deleted_bytes = sum(i.size for i in doomed)
            if not res.swept:
                res.deleted = res.deleted_bytes = 0
            return res

        def sweep(info) -> int:
            now = store.storage.stat(info.name)
            if now is None or now.mtime >= cutoff:
                return -1       # touched by a backup since the listing
            store.storage.delete(info.name)
            return info.size

        for size in pool.map(sweep, doomed):
            if size >= 0:
                res.deleted += 1
                res.deleted_bytes += size
            else:
                res.kept_recent += 1
    for name in expired:
        store.storage.delete(name)
    return res
