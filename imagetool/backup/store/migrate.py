"""Moving a qcow2-chain repository (``imagetool.backup.repo``) into a chunk
repository.

Every VM's points are written oldest first, under their own names and
times, each with its OVF (SHA-256 checked against its manifest), the
manifest's facts (its file names and file checksums dropped: they describe
files the new repository does not have) and per disk the recorded guest
checksum, which ``verify`` compares afterwards. An incremental point is
written as an incremental of its parent: only the clusters its own qcow2
layer holds are read (the layer read shallow), the other chunks are taken
from the parent's index. The old repository is only read, each VM under
its lock, so no backup or prune of it changes the chain meanwhile. A point
whose name the new repository already has is skipped, so a migration that
was interrupted (or a second run) carries on where it stopped.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable

from imagetool.backup.maintain import checked_ovf
from imagetool.backup.repo import LOCK, Repository
from imagetool.backup.store.chunkstore import ChunkStore
from imagetool.backup.store.points import Index, list_points, load_index
from imagetool.backup.store.write import DiskSource, write_point
from imagetool.formats import open_image

#: Manifest fields that describe the old repository's files.
FILE_FIELDS = ("file", "backing", "sha256", "digests", "digests_sha256")


@dataclass
class Migrated:
    """What a migration did: ``(vm_id, point)`` written and skipped."""

    written: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    bytes_read: int = 0
    bytes_stored: int = 0

    def to_dict(self) -> dict:
        return {"written": [{"vm_id": v, "point": p} for v, p in self.written],
                "skipped": [{"vm_id": v, "point": p} for v, p in self.skipped],
                "bytes_read": self.bytes_read, "bytes_stored": self.bytes_stored}


def point_total(old: str) -> int:
    """Guest bytes a migration of ``old`` reads at most (a progress total)."""
    repo = Repository(old)
    return sum(d["virtual_size"] for v in repo.vm_ids() for p in repo.points(v)
               for d in p.manifest["disks"])


def _lock(repo: Repository, vm_id: str):
    """The VM's lock, so no backup or prune changes its chain meanwhile;
    none where no run ever made its lock file (creating it would change
    the old repository)."""
    if os.path.lexists(os.path.join(repo.vm_dir(vm_id), LOCK)):
        return repo.locked(vm_id)
    return contextlib.nullcontext()


def _layer_ranges(path: str) -> list[tuple[int, int]]:
    """The guest ranges a qcow2 layer holds itself (data or zero clusters)."""
    with open_image(path, "r", format="qcow2", shallow=True) as layer:
        return [(e.start, e.end) for e in layer.extents() if not e.hole]


def _manifest(m: dict, old_root: str) -> dict:
    out = {k: v for k, v in m.items() if k not in ("ovf", "disks")}
    out["disks"] = [{k: v for k, v in d.items() if k not in FILE_FIELDS} for d in m["disks"]]
    out["migrated_from"] = {"repository": old_root, "point": m["point"]}
    return out


def migrate(old: str, store: ChunkStore, *, workers: int = 4,
            progress: Callable[[int], None] | None = None,
            log: Callable[[str], None] | None = None) -> Migrated:
    """Write every point of the repository ``old`` into ``store``; return
    what was written and skipped. Nothing in ``old`` is changed."""
    repo = Repository(old)
    out = Migrated()
    for vm_id in repo.vm_ids():
        with _lock(repo, vm_id):
            pts = repo.points(vm_id)
            have = {n for _, n in list_points(store, vm_id)}
            done: dict[str, Index] = {}
            for p in pts:
                size = sum(d["virtual_size"] for d in p.manifest["disks"])
                if p.name in have:
                    done[p.name] = load_index(store, vm_id, p.name)
                    out.skipped.append((vm_id, p.name))
                    if progress:
                        progress(size)
                    continue
                ix = _migrate_point(repo, store, p, pts, done.get(p.parent or ""), workers,
                                    progress)
                done[p.name] = ix
                out.written.append((vm_id, p.name))
                out.bytes_read += ix.stats.get("data", 0)
                out.bytes_stored += ix.stats.get("written", 0)
                if log:
                    log(f"VM {vm_id} point {p.name}: migrated")
    return out


def _migrate_point(repo: Repository, store: ChunkStore, p, pts: list, parent: Index | None,
                   workers: int, progress: Callable[[int], None] | None) -> Index:
    ovf = checked_ovf(p)
    sources: list[DiskSource] = []
    try:
        for d in p.manifest["disks"]:
            backend = repo.open_disk(p, d["disk_id"], pts)
            dirty = None
            if parent is not None and d.get("backing") and parent.disk(d["disk_id"]):
                dirty = _layer_ranges(p.file(d["file"]))
            meta = {k: v for k, v in d.items() if k not in FILE_FIELDS}
            sources.append(DiskSource(d["disk_id"], backend, dirty, meta))
        return write_point(store, p.vm_id, sources, parent=parent, ovf=ovf,
                           manifest=_manifest(p.manifest, os.path.abspath(repo.root)),
                           name=p.name, workers=workers, progress=progress,
                           timestamp=p.timestamp)
    finally:
        for s in sources:
            s.backend.close()
