"""Points: a VM's disks at one moment, as indexes of chunks.

A point is one index object, ``points/VM/NAME``: per disk its virtual size
and the ids of its chunks in order (``null`` for an all-zero chunk), plus
the VM's OVF, the caller's manifest (the same facts as the qcow2
repository's ``manifest.json``) and what writing it stored. As with
restic's snapshots and Proxmox Backup Server's indexes, the index is
written last, after every chunk it names: a point exists only once its
index does, so a crash leaves unreferenced chunks (collected by gc), never
a point missing data.

Point names sort by time (``20261207T070417.123456Z-1a2b3c``). An index read
back is validated whole before use (``parse_index``): names, sizes, and
that each disk has exactly the chunks its size needs, each a well-formed
id, so a hostile index can name nothing outside the chunk store.
"""

from __future__ import annotations

import datetime
import secrets
import time
from dataclasses import dataclass, field

from imagetool.backup.digests import block_count
from imagetool.backup.store.chunkstore import ChunkStore, is_chunk_id
from imagetool.backup.store.storage import ObjectMissing, StoreError, _COMPONENT

INDEX_VERSION = 1
POINTS = "points/"
MAX_VIRTUAL_SIZE = 1 << 50        # 1 PiB: far beyond any disk oVirt makes


@dataclass
class DiskIndex:
    disk_id: str
    virtual_size: int
    chunks: list          # chunk ids (str) or None for zeros, in order
    meta: dict = field(default_factory=dict)

    def to_doc(self) -> dict:
        return {"disk_id": self.disk_id, "virtual_size": self.virtual_size,
                "chunks": self.chunks, "meta": self.meta}


@dataclass
class Index:
    vm_id: str
    name: str
    disks: list[DiskIndex]
    parent: str | None = None
    timestamp: float = 0.0
    ovf: str | None = None
    manifest: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    @property
    def object_name(self) -> str:
        return index_name(self.vm_id, self.name)

    def disk(self, disk_id: str) -> DiskIndex | None:
        return next((d for d in self.disks if d.disk_id == disk_id), None)

    def chunk_ids(self) -> set[str]:
        return {c for d in self.disks for c in d.chunks if c is not None}

    def to_doc(self) -> dict:
        return {"version": INDEX_VERSION, "vm_id": self.vm_id, "name": self.name,
                "parent": self.parent, "timestamp": self.timestamp, "ovf": self.ovf,
                "manifest": self.manifest, "stats": self.stats,
                "disks": [d.to_doc() for d in self.disks]}


def valid_name(value) -> bool:
    """A VM id, disk id or point name usable as one object-name component."""
    return isinstance(value, str) and _COMPONENT.match(value) is not None


def index_name(vm_id: str, name: str) -> str:
    if not valid_name(vm_id) or not valid_name(name):
        raise StoreError(f"invalid point {vm_id!r}/{name!r}")
    return f"{POINTS}{vm_id}/{name}"


def new_point_name(now: float | None = None) -> str:
    """``20261207T070417.123456Z-1a2b3c``: UTC to the microsecond, so two
    points of one VM sort by time, and a random tail against collisions."""
    now = time.time() if now is None else now
    micros = int(now * 1_000_000) % 1_000_000
    return (time.strftime("%Y%m%dT%H%M%S", time.gmtime(int(now))) + f".{micros:06d}Z-"
            + secrets.token_hex(3))


def parse_time(name: str) -> datetime.datetime | None:
    """The local time a point name carries (``new_point_name``), or None."""
    try:
        utc = datetime.datetime.strptime(name[:15], "%Y%m%dT%H%M%S")
    except ValueError:
        return None
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone()


def parse_index(doc, vm_id: str, name: str, chunk_size: int, where: str) -> Index:
    """An Index from a stored document, or StoreError saying what is wrong."""
    def bad(what: str) -> StoreError:
        return StoreError(f"{where}: {index_name(vm_id, name)}: invalid index: {what}")

    if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION:
        raise bad("not a version 1 index")
    if doc.get("vm_id") != vm_id or doc.get("name") != name:
        raise bad("names another point")
    parent = doc.get("parent")
    if parent is not None and not valid_name(parent):
        raise bad(f"parent {parent!r}")
    ts = doc.get("timestamp")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not 0 <= ts < 1e11:
        raise bad("timestamp")
    ovf = doc.get("ovf")
    if ovf is not None and not isinstance(ovf, str):
        raise bad("ovf")
    for key in ("manifest", "stats"):
        if not isinstance(doc.get(key, {}), dict):
            raise bad(key)
    disks_doc = doc.get("disks")
    if not isinstance(disks_doc, list):
        raise bad("disks")
    disks, seen = [], set()
    for d in disks_doc:
        if not isinstance(d, dict) or not valid_name(d.get("disk_id")) or d["disk_id"] in seen:
            raise bad(f"disk id {d.get('disk_id') if isinstance(d, dict) else d!r}")
        seen.add(d["disk_id"])
        size = d.get("virtual_size")
        if not isinstance(size, int) or isinstance(size, bool) \
                or not 0 <= size <= MAX_VIRTUAL_SIZE:
            raise bad(f"disk {d['disk_id']}: virtual size {size!r}")
        chunks = d.get("chunks")
        if not isinstance(chunks, list) or len(chunks) != block_count(size, chunk_size):
            raise bad(f"disk {d['disk_id']}: chunk list does not cover its size")
        for c in chunks:
            if c is not None and not is_chunk_id(c):
                raise bad(f"disk {d['disk_id']}: chunk id {str(c)[:80]!r}")
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise bad(f"disk {d['disk_id']}: meta")
        disks.append(DiskIndex(d["disk_id"], size, chunks, meta))
    return Index(vm_id, name, disks, parent, float(ts), ovf, doc.get("manifest", {}),
                 doc.get("stats", {}))


def load_index(store: ChunkStore, vm_id: str, name: str) -> Index:
    """A point's index, validated; ObjectMissing if there is no such point."""
    obj = index_name(vm_id, name)
    return parse_index(store.get_doc(obj), vm_id, name, store.chunk_size, store.url)


def save_index(store: ChunkStore, index: Index) -> None:
    """Write the index: the last step of making a point."""
    store.put_doc(index.object_name, index.to_doc())


def list_points(store: ChunkStore, vm_id: str | None = None) -> list[tuple[str, str]]:
    """``(vm_id, name)`` of every point (of one VM), oldest first by name.

    Objects under ``points/`` that are not ``points/VM/NAME`` are skipped."""
    prefix = POINTS + (f"{vm_id}/" if vm_id is not None else "")
    if vm_id is not None and not valid_name(vm_id):
        raise StoreError(f"invalid VM id {vm_id!r}")
    out = []
    for info in store.storage.list(prefix):
        parts = info.name.split("/")
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return sorted(out, key=lambda p: (p[0], p[1]))


def find_vm(store: ChunkStore, vm: str) -> str:
    """The id of the VM ``vm`` names: a VM id with points, or the name its
    newest point's manifest records (``vm_name``); StoreError otherwise."""
    ids = sorted({v for v, _ in list_points(store)})
    if vm in ids:
        return vm
    named = [v for v in ids if (ix := latest(store, v)) is not None
             and ix.manifest.get("vm_name") == vm]
    if len(named) == 1:
        return named[0]
    if named:
        raise StoreError(f"{store.url}: {len(named)} VMs are named {vm!r}; give the VM id "
                         f"({', '.join(named)})")
    raise StoreError(f"{store.url}: no points of VM {vm!r} (backup list shows the VMs)")


def find_point(store: ChunkStore, vm: str, point: str | None = None) -> Index:
    """A point of VM ``vm`` (id or name): ``point``, or the newest."""
    vm_id = find_vm(store, vm)
    if point is None:
        ix = latest(store, vm_id)
        if ix is None:
            raise StoreError(f"{store.url}: no points of VM {vm!r}")
        return ix
    if not valid_name(point):
        raise StoreError(f"invalid point name {point!r}")
    try:
        return load_index(store, vm_id, point)
    except ObjectMissing:
        raise StoreError(f"{store.url}: VM {vm_id} has no point {point!r}") from None


def latest(store: ChunkStore, vm_id: str) -> Index | None:
    """The VM's newest point, or None."""
    names = list_points(store, vm_id)
    for vm, name in reversed(names):
        try:
            return load_index(store, vm, name)
        except ObjectMissing:
            continue        # pruned meanwhile
    return None
