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
checksum (``meta["checksum"]``, as the engine reported at backup time) is
read whole and its checksum compared.

The report names each damaged point and what it lost (which disks, how
many chunks, how many guest bytes), so a user knows which restore points
not to trust.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

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
           seed: int | None = None) -> VerifyReport:
    """Check the repository (or one VM, or one point); never raises for damage
    found, which the report lists."""
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

    def check(cid: str) -> tuple[str, int, str | None]:
        try:
            return cid, len(store.get_chunk(cid)), None
        except ImagetoolError as e:
            return cid, 0, str(e)

    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        for cid, size, err in pool.map(check, present):
            rep.checked += 1
            rep.checked_bytes += size
            if err is not None:
                bad[cid] = err
    rep.bad = len(bad)
    for ix in indexes:
        problems = _losses(store, ix, missing, bad)
        if checksums and not problems:
            problems = _checksum_problems(store, ix, workers)
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


def _checksum_problems(store: ChunkStore, ix: Index, workers: int) -> list[str]:
    out = []
    for d in ix.disks:
        c = d.meta.get("checksum")
        if not isinstance(c, dict) or not isinstance(c.get("value"), str):
            continue
        try:
            value = block_checksum.checksum(
                PointBackend(store, d), algorithm=c.get("algorithm", "blake2b"),
                block_size=c.get("block_size", 4 << 20), workers=workers)["checksum"]
        except (ImagetoolError, ValueError) as e:
            out.append(f"disk {d.disk_id}: cannot be read: {e}")
            continue
        if value != c["value"]:
            out.append(f"disk {d.disk_id}: guest checksum {value} differs from the "
                       f"recorded {c['value']}")
    return out
