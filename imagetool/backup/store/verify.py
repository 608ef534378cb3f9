"""Verify a chunk repository: every index readable, every chunk present and intact.

Three checks, cheapest first:

1. every index decodes (and authenticates, when encrypted) and is valid;
2. every chunk an index names exists (one listing of ``chunks/``, not a
   request per chunk);
3. each chunk's content matches its id: read, authenticated and decrypted,
   decompressed, hashed (SHA-256, or the keyed HMAC) by ``workers``
   threads. ``sample`` (a percentage) checks a random part of the chunks
   for a quick look; each chunk is read once however many points share it.

With ``checksums``, each disk whose metadata carries imageio's block
checksum (``meta["checksum"]``, as the engine reported at backup time) has
its checksum recomputed and compared. When the checksum's block size is
the chunk size (as `backup create` records it), each chunk's block digest is taken
while the chunk is checked, so the disks are not read a second time: the
checksum is the hash of the digests in order, zero chunks' digests known
without reading (ovirt-imageio docs, "Checksum"). Other block sizes read
the disk through ``PointBackend``. A ``sample`` skips the checksums: they
need every chunk.

The report names each damaged point and what it lost (which disks, how
many chunks, how many guest bytes), so a user knows which restore points
not to trust.
"""

from __future__ import annotations

import random
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from imagetool import checksum as block_checksum
from imagetool.backup.store.chunkstore import ChunkStore, chunk_name
from imagetool.backup.store.points import Index, list_points, load_index
from imagetool.backup.store.reader import PointBackend
from imagetool.backup.store.storage import StoreError
from imagetool.errors import ImagetoolError


@dataclass
class Damage:
    vm_id: str
    name: str
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"vm_id": self.vm_id, "point": self.name, "problems": self.problems}


@dataclass
class VerifyReport:
    points: int = 0
    chunks: int = 0
    checked: int = 0
    checked_bytes: int = 0
    missing: int = 0
    bad: int = 0
    damaged: list[Damage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "damaged"}
        return dict(d, ok=self.ok, damaged=[x.to_dict() for x in self.damaged])


def verify(store: ChunkStore, vm_id: str | None = None, point: str | None = None, *,
           sample: float = 100.0, workers: int = 4, checksums: bool = False,
           seed: int | None = None,
           progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check the repository (or one VM, or one point); never raises for damage
    found, which the report lists. ``progress(nbytes)``: chunk bytes checked."""
    if not 0 < sample <= 100:
        raise ValueError(f"sample must be a percentage in (0, 100], not {sample}")
    if point is not None and vm_id is None:
        raise ImagetoolError("a point is named within a VM: give the VM too")
    rep = VerifyReport()
    names = list_points(store, vm_id)
    if point is not None:
        names = [(v, n) for v, n in names if n == point]
        if not names:
            raise StoreError(f"{store.url}: no point {vm_id}/{point}")
    indexes: list[Index] = []
    for vm, name in names:
        rep.points += 1
        try:
            indexes.append(load_index(store, vm, name))
        except StoreError as e:
            rep.damaged.append(Damage(vm, name, [f"index unreadable: {e}"]))
    wanted = sorted({c for ix in indexes for c in ix.chunk_ids()})
    rep.chunks = len(wanted)
    stored = {info.name for info in store.storage.list("chunks/")}
    missing = {c for c in wanted if chunk_name(c) not in stored}
    rep.missing = len(missing)
    present = [c for c in wanted if c not in missing]
    if sample < 100:
        k = max(1, round(len(present) * sample / 100)) if present else 0
        present = random.Random(seed).sample(present, k)

    checksums = checksums and sample >= 100
    algorithms = _digest_algorithms(store, indexes) if checksums else []
    digests: dict[str, dict[str, bytes]] = {a: {} for a in algorithms}
    hashers = {a: block_checksum.hash_factory(a) for a in algorithms}

    def check(cid: str) -> tuple[str, int, str | None, list]:
        try:
            data = store.get_chunk(cid)
        except ImagetoolError as e:
            return cid, 0, str(e), []
        return cid, len(data), None, [(a, hashers[a](data).digest()) for a in algorithms]

    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        for cid, size, err, found in _bounded_map(pool, check, present, 2 * workers):
            rep.checked += 1
            rep.checked_bytes += size
            if err is not None:
                bad[cid] = err
            for a, digest in found:
                digests[a][cid] = digest
            if progress:
                progress(size)
    rep.bad = len(bad)
    for ix in indexes:
        problems = _losses(store, ix, missing, bad)
        if checksums and not problems:
            problems = _checksum_problems(store, ix, workers, digests)
        if problems:
            rep.damaged.append(Damage(ix.vm_id, ix.name, problems))
    rep.damaged.sort(key=lambda d: (d.vm_id, d.name))
    return rep


def _losses(store: ChunkStore, ix: Index, missing: set[str], bad: dict[str, str]) -> list[str]:
    out = []
    cs = store.chunk_size
    for d in ix.disks:
        lost = [(i, c) for i, c in enumerate(d.chunks) if c in missing or c in bad]
        if not lost:
            continue
        gone = sum(1 for _, c in lost if c in missing)
        nbytes = sum(min(cs, d.virtual_size - i * cs) for i, _ in lost)
        first = next((bad[c] for _, c in lost if c in bad), None)
        text = (f"disk {d.disk_id}: {len(lost)} chunks ({nbytes} guest bytes from offset "
                f"{lost[0][0] * cs}) lost: {gone} missing, {len(lost) - gone} damaged")
        out.append(text + (f" ({first})" if first else ""))
    return out


def _recorded(d) -> dict | None:
    c = d.meta.get("checksum")
    return c if isinstance(c, dict) and isinstance(c.get("value"), str) else None


def _digest_algorithms(store: ChunkStore, indexes: list[Index]) -> list[str]:
    """The algorithms of the recorded checksums whose blocks are chunks."""
    out = set()
    for ix in indexes:
        for d in ix.disks:
            c = _recorded(d)
            if c is not None and c.get("block_size", 4 << 20) == store.chunk_size:
                alg = str(c.get("algorithm", "blake2b")).lower()
                if alg in block_checksum.ALGORITHMS:
                    out.add(alg)
    return sorted(out)


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: list, ahead: int):
    """``pool.map`` with at most ``ahead`` items in flight, so memory stays
    near ``ahead`` chunks (``map`` would submit every item at once and
    keep every finished result until it is consumed)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _checksum_problems(store: ChunkStore, ix: Index, workers: int,
                       digests: dict[str, dict[str, bytes]]) -> list[str]:
    out = []
    for d in ix.disks:
        c = _recorded(d)
        if c is None:
            continue
        alg = str(c.get("algorithm", "blake2b")).lower()
        bs = c.get("block_size", 4 << 20)
        known = None
        if bs == store.chunk_size and alg in digests:
            known = {i: digests[alg][cid] for i, cid in enumerate(d.chunks)
                     if cid is not None}
        try:
            value = block_checksum.checksum(
                PointBackend(store, d), algorithm=alg, block_size=bs, workers=workers,
                known=known)["checksum"]
        except (ImagetoolError, ValueError) as e:
            out.append(f"disk {d.disk_id}: cannot be read: {e}")
            continue
        if value != c["value"]:
            out.append(f"disk {d.disk_id}: guest checksum {value} differs from the "
                       f"recorded {c['value']}")
    return out
