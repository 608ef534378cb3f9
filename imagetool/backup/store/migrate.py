"""Moving a qcow2-chain repository (``imagetool.backup.repo``) into a chunk
repository.

Every VM's points are written oldest first, under their own names and
times, each with its OVF (SHA-256 checked against its manifest, and kept:
a restore checks the OVF against it), the manifest's facts (its file names and file checksums dropped: they describe
files the new repository does not have) and per disk the recorded guest
checksum, which ``verify`` compares afterwards. An incremental point is
written as an incremental of its parent: only the clusters its own qcow2
layer holds are read (the layer read shallow), the other chunks are taken
from the parent's index. The old repository is only read, each VM under
its lock, so no backup or prune of it changes the chain meanwhile. A point
whose name the new repository already has is skipped, so a migration that
was interrupted (or a second run) carries on where it stopped.

Each point is read back once written (``check_point``): every chunk
against its id, every disk's guest checksum against the one the old
manifest recorded, each chunk read once per migration however many points
share it. A point that fails (its old files are damaged) is not kept:
its index is removed again and the failure reported; the old repository
still has it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable

from imagetool import checksum as block_checksum

from imagetool.backup.maintain import checked_ovf
from imagetool.backup.manifest import DiskEntry, Manifest
from imagetool.backup.repo import LOCK, Repository
from imagetool.backup.store.chunkstore import ChunkStore
from imagetool.backup.store.points import (Index, index_name, list_points, load_index,
                                           save_index)
from imagetool.backup.store.reader import PointBackend
from imagetool.backup.store.write import DiskSource, write_point
from imagetool.errors import ImagetoolError

#: Manifest fields that describe the old repository's files.
FILE_FIELDS = ("file", "backing", "sha256", "digests", "digests_sha256")


@dataclass
class Migrated:
    """What a migration did: ``(vm_id, point)`` written and skipped."""

    written: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, list[str]]] = field(default_factory=list)
    bytes_read: int = 0
    bytes_stored: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {"ok": self.ok,
                "written": [{"vm_id": v, "point": p} for v, p in self.written],
                "skipped": [{"vm_id": v, "point": p} for v, p in self.skipped],
                "failed": [{"vm_id": v, "point": p, "problems": x} for v, p, x in self.failed],
                "bytes_read": self.bytes_read, "bytes_stored": self.bytes_stored}


def point_total(old: str) -> int:
    """Guest bytes a migration of ``old`` reads at most (a progress total)."""
    repo = Repository(old)
    return sum(d.virtual_size for v in repo.vm_ids() for p in repo.points(v)
               for d in p.manifest.disks)


def _lock(repo: Repository, vm_id: str):
    """The VM's lock, so no backup or prune changes its chain meanwhile;
    none where no run ever made its lock file (creating it would change
    the old repository)."""
    if os.path.lexists(os.path.join(repo.vm_dir(vm_id), LOCK)):
        return repo.locked(vm_id)
    return contextlib.nullcontext()


def _meta(d: DiskEntry) -> dict:
    """A disk's entry in the new repository: its facts, not its old files."""
    return {k: v for k, v in d.to_json().items() if k not in FILE_FIELDS}


def _manifest(m: Manifest, old_root: str) -> dict:
    out = {k: v for k, v in m.to_json().items() if k != "disks"}
    out["ovf"] = {"sha256": m.ovf.sha256}       # restore checks the OVF against it
    out["disks"] = [_meta(d) for d in m.disks]
    out["migrated_from"] = {"repository": old_root, "point": m.point}
    return out


def migrate(old: str, store: ChunkStore, *, workers: int = 4,
            progress: Callable[[int], None] | None = None,
            log: Callable[[str], None] | None = None) -> Migrated:
    """Write every point of the repository ``old`` into ``store``; return
    what was written and skipped. Nothing in ``old`` is changed."""
    repo = Repository(old)
    out = Migrated()
    digests: dict[str, dict[str, bytes]] = {}      # algorithm -> chunk id -> digest
    for vm_id in repo.vm_ids():
        with _lock(repo, vm_id):
            pts = repo.points(vm_id)
            have = {n for _, n in list_points(store, vm_id)}
            done: dict[str, Index] = {}
            for p in pts:
                size = sum(d.virtual_size for d in p.manifest.disks)
                if p.name in have:
                    done[p.name] = load_index(store, vm_id, p.name)
                    out.skipped.append((vm_id, p.name))
                    if progress:
                        progress(size)
                    continue
                ix = _migrate_point(repo, store, p, pts, done.get(p.parent or ""), workers,
                                    progress)
                out.bytes_read += ix.stats.get("data", 0)
                out.bytes_stored += ix.stats.get("written", 0)
                problems = check_point(store, ix, digests, workers)
                if problems:
                    # Not kept: a point that looks whole but is not would be
                    # trusted. Its chunks are garbage for gc; the next point
                    # of the chain is read in full.
                    store.storage.delete(index_name(vm_id, p.name))
                    out.failed.append((vm_id, p.name, problems))
                    continue
                done[p.name] = ix
                out.written.append((vm_id, p.name))
                if log:
                    log(f"VM {vm_id} point {p.name}: migrated")
    return out


def check_point(store: ChunkStore, ix: Index, digests: dict[str, dict[str, bytes]],
                workers: int) -> list[str]:
    """Read a point just written back: each chunk against its id
    (``PointBackend``), each disk's guest checksum against the one its old
    manifest recorded. ``digests`` holds the block digests of chunks read
    before (by algorithm, then chunk id), so a chain's chunks are read once
    whatever the number of points sharing them; it is filled here."""
    problems = []
    for d in ix.disks:
        c = d.meta.get("checksum")
        if not isinstance(c, dict) or not isinstance(c.get("value"), str):
            continue
        alg, bs = str(c.get("algorithm", "blake2b")).lower(), c.get("block_size")
        try:
            block_checksum.validate_block_size(bs)
            hasher = block_checksum.BlockHasher(alg, bs)
        except (TypeError, ValueError) as e:
            problems.append(f"disk {d.disk_id}: its recorded checksum cannot be computed: {e}")
            continue
        seen = digests.setdefault(alg, {}) if bs == store.chunk_size else {}
        known = {i: seen[cid] for i, cid in enumerate(d.chunks) if cid in seen}
        outer = hasher.new()
        try:
            with closing(block_checksum.block_digests(PointBackend(store, d), hasher, workers,
                                                      known=known)) as blocks:
                for i, _, digest in blocks:
                    outer.update(digest)
                    if bs == store.chunk_size and d.chunks[i] is not None:
                        seen[d.chunks[i]] = digest
        except ImagetoolError as e:
            problems.append(f"disk {d.disk_id}: cannot be read back: {e}")
            continue
        if outer.hexdigest() != c["value"]:
            problems.append(f"disk {d.disk_id}: guest checksum {outer.hexdigest()} differs "
                            f"from the old manifest's {c['value']}")
    return problems


def _migrate_point(repo: Repository, store: ChunkStore, p, pts: list, parent: Index | None,
                   workers: int, progress: Callable[[int], None] | None) -> Index:
    ovf = checked_ovf(p)
    sources: list[DiskSource] = []
    try:
        for d in p.manifest.disks:
            backend = repo.open_disk(p, d.disk_id, pts)
            dirty = None
            if parent is not None and d.files.backing and parent.disk(d.disk_id):
                # The guest ranges the point's own qcow2 layer (the top of
                # the chain open_disk checked and opened) holds itself.
                dirty = [(e.start, e.end) for e in backend.own_extents() if not e.hole]
            sources.append(DiskSource(d.disk_id, backend, dirty, _meta(d)))
        ix = write_point(store, p.vm_id, sources, parent=parent, ovf=ovf,
                         manifest=_manifest(p.manifest, os.path.abspath(repo.root)),
                         name=p.name, workers=workers, progress=progress)
    finally:
        for s in sources:
            s.backend.close()
    # The point keeps its time: its index is written again with it (an
    # atomic replace; a crash between leaves the point, with the time it
    # was moved, and its name still carries the old one).
    ix = dataclasses.replace(ix, timestamp=p.timestamp)
    save_index(store, ix)
    return ix
