"""Where a new restore point goes: the two repository formats behind one flow.

``backup_vm`` (``imagetool.backup.create``) runs the engine side of a
backup (snapshot or VM backup, transfers, checkpoints, clean-up) the same
way for both; what it writes to is a destination:

- ``ChainDestination``: the qcow2-chain repository (``imagetool.backup.repo``):
  a point is a staging directory renamed into place, one qcow2 file per
  disk whose backing file is the parent point's;
- ``ChunkDestination``: the chunk repository (``imagetool.backup.store``,
  a directory or S3): a point is written by a ``PointWriter``, chunks
  first and its index last; incrementals take the chunks no dirty range
  touches from the parent's index.

Each gives: a per-VM lock, the runs a kill left behind (with the engine
state they recorded, for ``recover_interrupted``), the newest point, and
a ``Staged`` point that records the run's state, takes the OVF and the
disks, then commits or is discarded.

A chunk repository records a running backup as ``runs/VM/POINT`` (its
engine state, host and process), so the next run of the VM, from any
host, finds what a killed run left on the engine. A run of this host whose
process is gone is over; one of another host is taken as over once its
record and its lease (``imagetool.backup.store.gc``) are older than the
lease's lifetime.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from imagetool.backup import digests as dg
from imagetool.backup.manifest import (ChainFiles, Checksum, DiskEntry, Manifest, OvfRef,
                                       disk_entry_or_none)
from imagetool.backup.repo import (OVF_FILE, STATE, Repository, RepositoryError, exclusive,
                                   read_json, sha256_file, write_json)
from imagetool.errors import ImagetoolError
from imagetool.paths import locks_dir

RUNS = "runs/"


@dataclass
class Interrupted:
    """A run a kill left: its point name, its engine state, and how to drop it."""

    point: str
    state: dict
    discard: Callable[[], None]


@dataclass
class Committed:
    """A point made: its name, where it is, and where each disk went."""

    name: str
    path: str
    disk_paths: dict
    stored: dict | None = None     # a chunk point's: guest data, new bytes stored


def entry_fields(d: Any, fetched: Any, mode: str, reason: str | None, **more: Any
                 ) -> DiskEntry:
    """What a point records of one disk in both formats (``d`` an
    ``engine_ops.VmDisk``, ``fetched`` a ``fetch.Fetched``); ``more``: what
    the format adds."""
    return DiskEntry(
        disk_id=d.id, name=d.name, format=d.format, sparse=d.sparse,
        interface=d.interface, bootable=d.bootable, backup=d.backup,
        virtual_size=d.provisioned_size, mode=mode, reason=reason,
        checksum=Checksum(fetched.algorithm, fetched.block_size, fetched.checksum,
                          fetched.checksum_source),
        bytes=fetched.bytes_copied, **more)


# --- qcow2 chains ------------------------------------------------------------------

class ChainDestination:
    """The qcow2-chain repository (format 1)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    def locked(self, vm_id: str):
        return self.repo.locked(vm_id)

    def interrupted(self, vm_id: str) -> list[Interrupted]:
        out = []
        for staging in self.repo.partials(vm_id):
            try:
                state = read_json(os.path.join(staging, STATE))
            except (FileNotFoundError, ImagetoolError):
                state = {}
            out.append(Interrupted(os.path.basename(staging)[len(".partial-"):], state,
                                   lambda s=staging: self.repo.discard(s)))
        return out

    def last_point(self, vm_id: str) -> Any:
        pts = self.repo.points(vm_id)
        return pts[-1] if pts else None

    def new_point_name(self, vm_id: str, now: float) -> str:
        return self.repo.new_point_name(vm_id, now)

    def begin(self, vm_id: str, name: str, state: dict, base: Any,
              workers: int = 4) -> "ChainStaged":
        return ChainStaged(self.repo, self.repo.begin(vm_id, name, state))


class ChainStaged:
    """A qcow2-chain point in its staging directory."""

    def __init__(self, repo: Repository, staging: str) -> None:
        self.repo = repo
        self.staging = staging

    def save_state(self, state: dict) -> None:
        write_json(os.path.join(self.staging, STATE), state)

    def write_ovf(self, text: str) -> None:
        fd = os.open(os.path.join(self.staging, OVF_FILE),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)

    def ovf_info(self) -> OvfRef:
        return OvfRef(sha256_file(os.path.join(self.staging, OVF_FILE)), OVF_FILE)

    def previous(self, base: Any, disk_id: str) -> tuple[DiskEntry | None, list | None]:
        """The base point's entry of the disk and its block digests, or (None, None)."""
        entry = base.disk(disk_id)
        if entry is None:
            return None, None
        c = entry.checksum
        try:
            digests = dg.load(base.file(entry.digests),
                              dg.block_count(entry.virtual_size, c.block_size),
                              dg.digest_size(c.algorithm))
        except (OSError, ValueError):
            return None, None
        return entry, digests

    def fetch(self, conn: Any, d: Any, base: Any, prev_entry: DiskEntry | None,
              prev_digests: list | None, source: dict, reason: str | None,
              **kw: Any) -> DiskEntry:
        from imagetool.backup.fetch import fetch_disk
        backing = (f"../{base.name}/{prev_entry.files.file}" if prev_entry is not None
                   else None)
        fetched = fetch_disk(
            conn, disk_id=d.id, out=os.path.join(self.staging, f"{d.id}.qcow2"),
            backing=backing, previous_digests=prev_digests,
            algorithm=prev_entry.checksum.algorithm if prev_entry else None,
            **source, **kw)
        return disk_entry(d, self.staging, fetched, "incremental" if backing else "full",
                          backing, reason)

    def commit(self, manifest: Manifest) -> Committed:
        p = self.repo.commit(self.staging, manifest)
        return Committed(p.name, p.path, {e.disk_id: p.file(e.files.file)
                                          for e in manifest.disks})

    def discard(self, keep_state: bool) -> None:
        self.repo.discard(self.staging, keep_state=keep_state)


def disk_entry(d: Any, staging: str, fetched: Any, mode: str, backing: str | None,
               reason: str | None = None) -> DiskEntry:
    """A qcow2-chain point's entry of one disk; its digests file written."""
    fname = f"{d.id}.qcow2"
    dname = f"{d.id}.digests"
    dg.save(os.path.join(staging, dname), fetched.digests)
    return entry_fields(d, fetched, mode, reason, digests=dname, files=ChainFiles(
        fname, backing, fetched.sha256 or sha256_file(os.path.join(staging, fname)),
        sha256_file(os.path.join(staging, dname))))


# --- chunk repositories ------------------------------------------------------------

class ChunkPoint:
    """A chunk repository's point seen as the flow sees a qcow2-chain one:
    ``name``, ``method``, ``engine``, ``disk(id)``. Only what an incremental
    needs is read, leniently: a point ``migrate`` wrote has no OVF record
    and its disks no digests (their next point is full)."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.name = index.name
        self.timestamp = index.timestamp
        self.method = index.manifest.get("method")
        engine = index.manifest.get("engine")
        self.engine = engine if isinstance(engine, dict) else {}

    def disk(self, disk_id: str) -> DiskEntry | None:
        d = self.index.disk(disk_id)
        return disk_entry_or_none(d.meta) if d is not None else None


def _alive_here(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ChunkDestination:
    """A chunk repository (``imagetool.backup.store.ChunkStore``)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    @contextlib.contextmanager
    def locked(self, vm_id: str) -> Iterator[None]:
        """One backup of a VM at a time from this host (a lock file named
        after the repository and the VM; the repository may be S3, where
        no file can be locked), and none while another host's run of the
        VM is alive."""
        from imagetool.backup.store.points import valid_name
        from imagetool.backup.store.storage import StoreError
        if not valid_name(vm_id):
            raise StoreError(f"invalid VM id {vm_id!r}")
        key = hashlib.sha256(f"{self.store.url}\0{vm_id}".encode()).hexdigest()[:32]
        with exclusive(os.path.join(locks_dir(), key),
                       f"{self.store.url}: another backup of VM {vm_id} is running"):
            yield

    def _runs(self, vm_id: str) -> list[tuple[Any, dict]]:
        from imagetool.backup.store.storage import ObjectMissing, StoreError
        out = []
        for info in self.store.storage.list(f"{RUNS}{vm_id}/"):
            try:
                state = self.store.get_doc(info.name)
            except ObjectMissing:
                continue
            except StoreError:
                state = {}
            out.append((info, state if isinstance(state, dict) else {}))
        return out

    def interrupted(self, vm_id: str) -> list[Interrupted]:
        """The runs of the VM that are over (see the module docstring);
        RepositoryError if one of another host is still alive."""
        from imagetool.backup.store import gc
        from imagetool.backup.store.points import index_name
        out = []
        host = socket.gethostname()
        now = gc.storage_now(self.store)
        for info, state in self._runs(vm_id):
            point = info.name.rsplit("/", 1)[1]
            if self.store.storage.exists(index_name(vm_id, point)):
                # Killed between its index and removing its record: the
                # point is whole and its engine state is its base.
                self.store.storage.delete(info.name)
                continue
            run = state.get("run")
            run = run if isinstance(run, dict) else {}
            if run.get("host") == host:
                live = run.get("pid") != os.getpid() and _alive_here(run.get("pid"))
            else:
                lease = self.store.storage.stat(f"{gc.LEASES}{vm_id}/{point}")
                newest = max(info.mtime, lease.mtime if lease else 0.0)
                live = newest > now - gc.LEASE_TTL
            if live:
                raise RepositoryError(
                    f"{self.store.url}: another backup of VM {vm_id} is running (point "
                    f"{point}, host {run.get('host')}, process {run.get('pid')})")
            out.append(Interrupted(point, state,
                                   lambda n=info.name: self.store.storage.delete(n)))
        return out

    def last_point(self, vm_id: str) -> ChunkPoint | None:
        from imagetool.backup.store import latest
        ix = latest(self.store, vm_id)
        return ChunkPoint(ix) if ix is not None else None

    def new_point_name(self, vm_id: str, now: float) -> str:
        from imagetool.backup.store.points import new_point_name
        return new_point_name(now)

    def begin(self, vm_id: str, name: str, state: dict, base: ChunkPoint | None,
              workers: int = 4) -> "ChunkStaged":
        staged = ChunkStaged(self.store, vm_id, name)
        staged.save_state(state)
        from imagetool.backup.store.write import PointWriter
        try:
            # ``workers`` threads, as many as the transfer's connections
            # (each reads through its own).
            staged.writer = PointWriter(self.store, vm_id, name=name,
                                        parent=base.index if base is not None else None,
                                        workers=workers)
        except BaseException:
            staged.discard(keep_state=False)
            raise
        return staged


class ChunkStaged:
    """A chunk repository point being written."""

    def __init__(self, store: Any, vm_id: str, name: str) -> None:
        self.store = store
        self.vm_id = vm_id
        self.name = name
        self.run_name = f"{RUNS}{vm_id}/{name}"
        self.ovf: str | None = None
        self.writer: Any = None
        self.run = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}

    def save_state(self, state: dict) -> None:
        self.store.put_doc(self.run_name, dict(state, run=self.run))

    def write_ovf(self, text: str) -> None:
        self.ovf = text

    def ovf_info(self) -> OvfRef:
        return OvfRef(hashlib.sha256((self.ovf or "").encode()).hexdigest())

    def previous(self, base: ChunkPoint, disk_id: str
                 ) -> tuple[DiskEntry | None, list | None]:
        entry = base.disk(disk_id)
        # Digests of other blocks than this repository's chunks would be
        # merged block by block with the new ones: a full point instead.
        if entry is None or entry.checksum.block_size != self.store.chunk_size:
            return None, None
        try:
            raw = base64.b64decode(entry.digests, validate=True)
            size = dg.digest_size(entry.checksum.algorithm)
            count = dg.block_count(entry.virtual_size, entry.checksum.block_size)
        except (TypeError, ValueError):
            return None, None
        if len(raw) != size * count:
            return None, None
        return entry, [raw[i * size:(i + 1) * size] for i in range(count)]

    def fetch(self, conn: Any, d: Any, base: ChunkPoint | None,
              prev_entry: DiskEntry | None, prev_digests: list | None, source: dict,
              reason: str | None, **kw: Any) -> DiskEntry:
        from imagetool.backup.fetch import fetch_chunks
        fetched = fetch_chunks(
            conn, self.writer, disk_id=d.id, previous_digests=prev_digests,
            algorithm=prev_entry.checksum.algorithm if prev_entry else None,
            **source, **kw)
        return entry_fields(d, fetched, "incremental" if prev_entry is not None else "full",
                            reason, digests=base64.b64encode(b"".join(fetched.digests)).decode())

    def commit(self, manifest: Manifest) -> Committed:
        facts, metas = manifest.index_parts()
        by_id = {m["disk_id"]: m for m in metas}
        for disk in self.writer.disks:
            disk.meta = by_id[disk.disk_id]
        from imagetool.backup.store.storage import StoreError
        ix = self.writer.commit(ovf=self.ovf, manifest=facts)
        # The point exists: the next run removes the record (interrupted).
        with contextlib.suppress(StoreError):
            self.store.storage.delete(self.run_name)
        where = f"{self.store.url}/{ix.object_name}"
        return Committed(ix.name, where, {d.disk_id: where for d in ix.disks},
                         {"data": ix.stats["data"], "written": ix.stats["written"]})

    def discard(self, keep_state: bool) -> None:
        if self.writer is not None:
            self.writer.close()
        if not keep_state:
            with contextlib.suppress(ImagetoolError):
                self.store.storage.delete(self.run_name)


def destination_for(repository: Any, create: bool = False) -> Any:
    """The destination of ``repository``: a ChunkStore, a Repository, or a
    directory path (a qcow2-chain repository)."""
    from imagetool.backup.store import ChunkStore
    if isinstance(repository, ChunkStore):
        return ChunkDestination(repository)
    if isinstance(repository, Repository):
        return ChainDestination(repository)
    return ChainDestination(Repository(repository, create=create))


__all__ = ["ChainDestination", "ChunkDestination", "Committed", "Interrupted",
           "destination_for"]
