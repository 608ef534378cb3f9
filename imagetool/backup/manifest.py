"""A restore point's manifest: what the point holds, as one typed value.

Both repository formats record the same facts of a point: the qcow2-chain
repository as ``manifest.json`` in the point's directory
(``imagetool.backup.repo``), the chunk repository split inside the point's
index (``imagetool.backup.store.points``: the facts as its ``manifest``,
each disk's entry as that disk's ``meta``). A chain point's disk entry
adds its files (``ChainFiles``); its ``digests`` names the file of block
digests, where a chunk point's holds the digests themselves (base64).

A manifest is read from a repository, so it is untrusted: ``from_json``
(a chain point) and ``from_index`` (a chunk point) check every field they
keep, and a RepositoryError names the file and the field. ``to_json`` gives
back the document the repository stores.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any

from imagetool.errors import ImagetoolError

FORMAT_VERSION = 1
METHODS = ("checkpoint", "snapshot")
MODES = ("full", "incremental")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class RepositoryError(ImagetoolError):
    """The repository is missing, malformed, or busy."""


def plain_name(value: Any) -> bool:
    """A file or directory name of the repository: no path, no dot file."""
    return (isinstance(value, str) and 0 < len(value) <= 255 and "/" not in value
            and "\\" not in value and "\0" not in value and not value.startswith("."))


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a fractional number"}.get(type(value),
                                                                      type(value).__name__)


# --- the value ----------------------------------------------------------------------

@dataclass(frozen=True)
class Checksum:
    """imageio's block checksum of a disk's guest data at the point."""

    algorithm: str
    block_size: int
    value: str
    source: str | None = None       # who computed it: engine | chain

    def to_json(self) -> dict:
        return {"algorithm": self.algorithm, "block_size": self.block_size,
                "value": self.value, "source": self.source}


@dataclass(frozen=True)
class ChainFiles:
    """A qcow2-chain point's file of one disk: its name, its backing name
    (``../<parent point>/<file>`` or None), and the SHA-256 of it and of
    the digests file."""

    file: str
    backing: str | None
    sha256: str
    digests_sha256: str


@dataclass(frozen=True)
class DiskEntry:
    disk_id: str
    virtual_size: int
    mode: str
    checksum: Checksum
    name: str | None = None
    format: str | None = None
    interface: str | None = None
    backup: str | None = None
    sparse: bool | None = None
    bootable: bool | None = None
    bytes: int | None = None            # data moved to make it
    reason: str | None = None           # why it is full in an incremental point
    digests: str | None = None          # chain: the digests file; chunk: the digests
    files: ChainFiles | None = None     # chain points only

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in _DISK_FACTS}
        out["checksum"] = self.checksum.to_json()
        if self.files is not None:
            f = self.files
            out.update(file=f.file, backing=f.backing, sha256=f.sha256,
                       digests_sha256=f.digests_sha256)
        if self.digests is not None or self.files is not None:
            out["digests"] = self.digests
        return out


@dataclass(frozen=True)
class OvfRef:
    """The point's OVF: its SHA-256, and its file in a chain point."""

    sha256: str
    file: str | None = None

    def to_json(self) -> dict:
        return {"sha256": self.sha256, **({"file": self.file} if self.file is not None else {})}


@dataclass(frozen=True)
class Manifest:
    """A point: whose, when, how it was made, its OVF and its disks."""

    vm_id: str
    point: str
    timestamp: float
    method: str
    mode: str
    ovf: OvfRef
    disks: tuple[DiskEntry, ...]
    vm_name: str | None = None
    time: str | None = None
    parent: str | None = None
    engine: dict = field(default_factory=dict)      # the engine's ids it used
    bytes: int | None = None
    merged: list | None = None                      # points a prune merged into it
    migrated_from: dict | None = None               # a chunk point moved by migrate

    def disk(self, disk_id: str) -> DiskEntry | None:
        return next((d for d in self.disks if d.disk_id == disk_id), None)

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in _FACTS}
        out.update(format=FORMAT_VERSION, engine=self.engine, ovf=self.ovf.to_json(),
                   disks=[d.to_json() for d in self.disks])
        for key in ("merged", "migrated_from"):     # only in some points
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def index_parts(self) -> tuple[dict, list[dict]]:
        """What a chunk point's index stores: the facts, each disk's meta."""
        doc = self.to_json()
        return {k: v for k, v in doc.items() if k != "disks"}, doc["disks"]

    @classmethod
    def from_json(cls, doc: Any, path: str, vm_id: str, point: str) -> "Manifest":
        """A chain point's manifest (read from ``path``), checked.

        The one door every manifest passes before its fields are used: the
        types, the names of its files (plain names inside the point), that it
        belongs to its directory, and the backing names it may have. A
        RepositoryError names the file and what is wrong.
        """
        c = _Checker(path)
        _check_facts(c, doc, vm_id, point)
        parent = c.name(doc, "parent", "", optional=True)
        if parent == point:
            raise c.bad("the point is its own parent")
        c.name(doc["ovf"], "file", "ovf.")
        disks = c.get(doc, "disks", "", (list,))
        if not disks:
            raise c.bad("disks is empty")
        seen: set[str] = set()
        for i, d in enumerate(disks):
            w = f"disks[{i}]."
            disk_id = _check_disk(c, d, w)
            if disk_id in seen:
                raise c.bad(f"disk {disk_id} is listed twice")
            seen.add(disk_id)
            c.name(d, "file", w)
            c.name(d, "digests", w)
            c.sha(d, "sha256", w)
            c.sha(d, "digests_sha256", w)
            backing = c.get(d, "backing", w, (str,), optional=True)
            if backing is not None and parent is None:
                raise c.bad(f"{w}backing is {backing!a} but the point has no parent")
        return _manifest(doc, [replace(_disk(d), files=ChainFiles(
            d["file"], d.get("backing"), d["sha256"], d["digests_sha256"])) for d in disks])

    @classmethod
    def from_index(cls, index: Any, where: str) -> "Manifest":
        """What ``backup create`` recorded in a chunk repository's point
        (``imagetool.backup.store.points.Index``): its facts and each disk's
        entry (the index's ``meta``), checked as ``from_json`` checks a
        chain point's, and each entry against the index's disk."""
        c = _Checker(where)
        doc = dict(index.manifest, disks=[d.meta for d in index.disks])
        if "ovf" not in doc and isinstance(doc.get("migrated_from"), dict) \
                and isinstance(index.ovf, str):
            # The first release of `backup migrate` dropped the OVF's record. The
            # OVF sits in the same index, so a hash beside it proves nothing
            # more than its own: without it such points would not restore.
            doc["ovf"] = {"sha256": hashlib.sha256(index.ovf.encode()).hexdigest()}
        _check_facts(c, doc, index.vm_id, index.name)
        if not index.disks:
            raise c.bad("the point has no disks")
        for i, d in enumerate(index.disks):
            w = f"disks[{i}]."
            if _check_disk(c, d.meta, w) != d.disk_id or d.meta["virtual_size"] != d.virtual_size:
                raise c.bad(f"{w}disk_id or virtual_size differs from the index's")
        return _manifest(doc, [_disk(d.meta) for d in index.disks])


def disk_entry_or_none(meta: Any) -> DiskEntry | None:
    """A disk's entry from a document not checked before (a chunk point's
    meta that an incremental builds on), or None if it is not one."""
    try:
        _check_disk(_Checker(""), meta, "")
    except RepositoryError:
        return None
    return _disk(meta)


# The fields kept as they are (checked, or free text and numbers).
_DISK_FACTS = ("disk_id", "virtual_size", "mode", "name", "format", "interface", "backup",
               "sparse", "bootable", "bytes", "reason")
_FACTS = ("vm_id", "point", "timestamp", "method", "mode", "vm_name", "time", "parent",
          "bytes")


def _disk(d: dict) -> DiskEntry:
    """A checked disk entry as a value."""
    cs = d["checksum"]
    return DiskEntry(**{k: d.get(k) for k in _DISK_FACTS}, digests=d.get("digests"),
                     checksum=Checksum(cs["algorithm"], cs["block_size"], cs["value"],
                                       cs.get("source")))


def _manifest(doc: dict, disks: list[DiskEntry]) -> Manifest:
    """A checked manifest document as a value."""
    return Manifest(**{k: doc.get(k) for k in _FACTS + ("merged", "migrated_from")},
                    engine=doc.get("engine") or {}, disks=tuple(disks),
                    ovf=OvfRef(doc["ovf"]["sha256"], doc["ovf"].get("file")))


# --- the checks ---------------------------------------------------------------------

class _Checker:
    def __init__(self, path: str):
        self.path = path

    def bad(self, what: str) -> RepositoryError:
        return RepositoryError(f"{self.path}: {what}")

    def get(self, obj: dict, key: str, where: str, kinds: tuple, *, optional: bool = False,
            what: str | None = None) -> Any:
        name = f"{where}{key}"
        if key not in obj:
            if optional:
                return None
            raise self.bad(f"{name} is missing")
        value = obj[key]
        if value is None and optional:
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise self.bad(f"{name} is {_kind(value)}, expected {what or _kind(kinds[0]())}")
        return value

    def name(self, obj: dict, key: str, where: str, *, optional: bool = False) -> str | None:
        value = self.get(obj, key, where, (str,), optional=optional)
        if value is not None and not plain_name(value):
            raise self.bad(f"{where}{key} {value!a} is not a plain file name of the point "
                           "(a path, absolute or with '..', is refused)")
        return value

    def sha(self, obj: dict, key: str, where: str) -> None:
        if not _HEX64.fullmatch(self.get(obj, key, where, (str,))):
            raise self.bad(f"{where}{key} is not a SHA-256 in hex")

    def choice(self, obj: dict, key: str, where: str, allowed: tuple) -> None:
        if self.get(obj, key, where, (str,)) not in allowed:
            raise self.bad(f"{where}{key} {obj[key]!a} is not one of {', '.join(allowed)}")

    def size(self, obj: dict, key: str, where: str, minimum: int = 0) -> None:
        if self.get(obj, key, where, (int,)) < minimum:
            raise self.bad(f"{where}{key} is below {minimum}")


def _check_facts(c: _Checker, doc: Any, vm_id: str, point: str) -> None:
    """The fields a point's manifest has in both repository formats."""
    if not isinstance(doc, dict):
        raise c.bad(f"the manifest is {_kind(doc)}, expected an object")
    if c.get(doc, "format", "", (int,)) != FORMAT_VERSION:
        raise c.bad(f"format {doc['format']} is not {FORMAT_VERSION} (written by another "
                    "version of imagetool?)")
    if c.get(doc, "vm_id", "", (str,)) != vm_id:
        raise c.bad(f"vm_id {doc['vm_id']!a} is not its directory's {vm_id!a}")
    if c.get(doc, "point", "", (str,)) != point:
        raise c.bad(f"point {doc['point']!a} is not its directory's {point!a}")
    c.get(doc, "vm_name", "", (str,), optional=True)
    c.get(doc, "time", "", (str,), optional=True)
    c.get(doc, "timestamp", "", (int, float), what="a number")
    c.choice(doc, "method", "", METHODS)
    c.choice(doc, "mode", "", MODES)
    c.get(doc, "engine", "", (dict,), optional=True)
    c.get(doc, "migrated_from", "", (dict,), optional=True)
    for i, name in enumerate(c.get(doc, "merged", "", (list,), optional=True) or ()):
        if not plain_name(name):
            raise c.bad(f"merged[{i}] {name!a} is not a point's name")
    c.sha(c.get(doc, "ovf", "", (dict,)), "sha256", "ovf.")


def _check_disk(c: _Checker, d: Any, w: str) -> str:
    """A disk's entry: the fields both formats have; its id."""
    if not isinstance(d, dict):
        raise c.bad(f"{w[:-1]} is {_kind(d)}, expected an object")
    disk_id = c.name(d, "disk_id", w)
    for key in ("name", "format", "interface", "backup"):
        c.get(d, key, w, (str,), optional=True)
    for key in ("sparse", "bootable"):
        c.get(d, key, w, (bool,), optional=True)
    c.choice(d, "mode", w, MODES)
    c.size(d, "virtual_size", w)
    cs = c.get(d, "checksum", w, (dict,))
    c.get(cs, "algorithm", w + "checksum.", (str,))
    c.size(cs, "block_size", w + "checksum.", 1)
    c.get(cs, "value", w + "checksum.", (str,))
    return disk_id
