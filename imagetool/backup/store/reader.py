"""A point's disk as a read-only Backend, and exporting it to an image file.

``PointBackend`` reads a disk of a point chunk by chunk, so everything that
copies from a Backend works on a backup: the copier uploads it to the
engine (restore), ``formats.convert.convert_backend`` writes it as qcow2
or raw (``export``), and ``imagetool.checksum`` hashes it (verify). All-zero
chunks are zero extents, never fetched; every fetched chunk is checked
against its id (``ChunkStore.get_chunk``). Clones share a small cache of
decoded chunks, so readers whose requests are not chunk-aligned fetch
each chunk about once.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

from imagetool.backup.store.chunkstore import ChunkStore
from imagetool.backup.store.points import DiskIndex, Index
from imagetool.backup.store.storage import StoreError
from imagetool.iocore.backend import Extent
from imagetool.formats.readonly import LockedLRU, ReadOnlyBackend, fill_zero


class PointBackend(ReadOnlyBackend):
    """Guest bytes of one disk of a point."""

    _refusal = "{} is read-only"

    def __init__(self, store: ChunkStore, disk: DiskIndex, label: str = "",
                 cache: LockedLRU | None = None) -> None:
        self.store = store
        self.disk = disk
        self._size = disk.virtual_size
        self._label = label or f"{store.url} disk {disk.disk_id}"
        self._format = "a backup point"
        self._cache = cache or LockedLRU(8)

    def _unmerged_extents(self) -> Iterator[Extent]:
        cs = self.store.chunk_size
        for i, cid in enumerate(self.disk.chunks):
            start = i * cs
            yield Extent(start, min(cs, self._size - start), zero=cid is None)

    def _chunk(self, i: int) -> bytes:
        cid = self.disk.chunks[i]
        data = self._cache.get(cid)
        if data is None:
            cs = self.store.chunk_size
            data = self.store.get_chunk(cid, min(cs, self._size - i * cs))
            self._cache.put(cid, data)
        return data

    def _read_guest(self, offset: int, view: memoryview) -> None:
        cs = self.store.chunk_size
        pos, end = offset, offset + len(view)
        while pos < end:
            i = pos // cs
            stop = min((i + 1) * cs, end)
            out = view[pos - offset:stop - offset]
            if self.disk.chunks[i] is None:
                fill_zero(out)
            else:
                out[:] = self._chunk(i)[pos - i * cs:stop - i * cs]
            pos = stop

    def clone(self) -> "PointBackend":
        return PointBackend(self.store, self.disk, self._label, self._cache)

    def close(self) -> None:
        pass


def open_disk(store: ChunkStore, index: Index, disk_id: str) -> PointBackend:
    disk = index.disk(disk_id)
    if disk is None:
        raise StoreError(f"{store.url}: point {index.vm_id}/{index.name} has no disk {disk_id}")
    return PointBackend(store, disk, f"{index.vm_id}/{index.name} disk {disk_id}")


def export_disks(disks: list, ovf: str | None, outdir: str, out_format: str = "qcow2", *,
                 workers: int = 4, force: bool = False,
                 progress: Callable[[int], None] | None = None) -> list[str]:
    """Write each ``(disk_id, backend)`` to ``OUTDIR/DISK_ID.FORMAT`` (and
    ``ovf`` to ``OUTDIR/vm.ovf``) as standard images qemu-img reads,
    owner-only, each under a temporary name until complete; returns the
    image paths. Existing files are refused unless ``force``, before
    anything is written. The backends are not closed."""
    from imagetool.errors import DestinationExists
    from imagetool.formats import WRITABLE
    from imagetool.formats.convert import convert_to_file
    from imagetool.fsutil import write_atomic
    if out_format not in WRITABLE:
        raise ValueError(f"unsupported output format {out_format!r} (use raw or qcow2)")
    os.makedirs(outdir, mode=0o700, exist_ok=True)
    paths = [os.path.join(outdir, f"{disk_id}.{out_format}") for disk_id, _ in disks]
    targets = paths + ([os.path.join(outdir, "vm.ovf")] if ovf is not None else [])
    for path in targets:
        if os.path.lexists(path) and not force:
            raise DestinationExists(path)
    for (_, backend), path in zip(disks, paths):
        convert_to_file(backend, path, out_format, workers=workers, mode=0o600,
                        progress=progress)
    if ovf is not None:
        write_atomic(targets[-1], ovf, mode=0o600)
    return paths


def export_point(store: ChunkStore, index: Index, outdir: str, out_format: str = "qcow2",
                 *, workers: int = 4, force: bool = False,
                 progress: Callable[[int], None] | None = None) -> list[str]:
    """Write each disk of the point to ``OUTDIR/DISK_ID.FORMAT`` (and the OVF
    to ``OUTDIR/vm.ovf``): ``export_disks``."""
    return export_disks([(d.disk_id, PointBackend(store, d)) for d in index.disks], index.ovf,
                        outdir, out_format, workers=workers, force=force, progress=progress)
