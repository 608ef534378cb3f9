"""The backup repository: a directory of restore points, one chain per VM.

Layout::

    DIR/<vm-id>/<point>/manifest.json     what the point holds (below)
    DIR/<vm-id>/<point>/vm.ovf            the VM's OVF when the point was made
    DIR/<vm-id>/<point>/<disk-id>.qcow2   guest data (incremental: backing file
                                          ``../<parent point>/<disk-id>.qcow2``)
    DIR/<vm-id>/<point>/<disk-id>.digests block digests of the guest data
    DIR/<vm-id>/.partial-<point>/         a point being made (invisible)
    DIR/<vm-id>/.lock                     held while a point is made or pruned

A point is written in its ``.partial-`` directory, fsynced, and renamed to
its final name only when complete, so a listing never shows a point that is
not whole. The qcow2 files are standard: ``qemu-img info --backing-chain``
and any other qcow2 reader follow the relative backing names.

The ``.digests`` file holds the block digests of imageio's block checksum
(ovirt-imageio docs, "Checksum") of the point's guest data, so that an
incremental point's checksum is computed from the blocks that changed only.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from imagetool.errors import ImagetoolError
from imagetool.fsutil import fsync_dir, opened, write_atomic

MANIFEST = "manifest.json"
OVF_FILE = "vm.ovf"
STATE = "state.json"
PARTIAL = ".partial-"
LOCK = ".lock"
FORMAT_VERSION = 1


class RepositoryError(ImagetoolError):
    """The repository is missing, malformed, or busy."""


@dataclass
class Point:
    """One restore point as its manifest describes it."""

    vm_dir: str
    name: str
    manifest: dict = field(repr=False)

    @property
    def path(self) -> str:
        return os.path.join(self.vm_dir, self.name)

    @property
    def vm_id(self) -> str:
        return self.manifest["vm_id"]

    @property
    def parent(self) -> str | None:
        return self.manifest.get("parent")

    @property
    def timestamp(self) -> float:
        return float(self.manifest.get("timestamp", 0))

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def disk(self, disk_id: str) -> dict | None:
        for d in self.manifest["disks"]:
            if d["disk_id"] == disk_id:
                return d
        return None


def sha256_file(path: str, bufsize: int = 4 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def write_json(path: str, doc: Any) -> None:
    """Write JSON durably and atomically (temporary file, fsync, rename)."""
    write_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n", mode=0o666,
                 tmp=f"{path}.tmp-{os.getpid()}")


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise RepositoryError(f"{path}: unreadable: {e}") from None


class Repository:
    """A backup directory (created on first use by ``backup create``)."""

    def __init__(self, root: str | os.PathLike, create: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        if create:
            os.makedirs(self.root, exist_ok=True)
        elif not os.path.isdir(self.root):
            raise RepositoryError(f"{self.root}: no such backup directory")

    # --- VMs and points ---------------------------------------------------

    def vm_dir(self, vm_id: str) -> str:
        if not vm_id or "/" in vm_id or vm_id.startswith("."):
            raise RepositoryError(f"invalid VM id {vm_id!a}")
        return os.path.join(self.root, vm_id)

    def vm_ids(self) -> list[str]:
        out = []
        for name in sorted(os.listdir(self.root)):
            if not name.startswith(".") and os.path.isdir(os.path.join(self.root, name)):
                out.append(name)
        return out

    def points(self, vm_id: str) -> list[Point]:
        """The VM's complete points, oldest first."""
        vdir = self.vm_dir(vm_id)
        if not os.path.isdir(vdir):
            return []
        out = []
        for name in os.listdir(vdir):
            if name.startswith("."):
                continue
            mpath = os.path.join(vdir, name, MANIFEST)
            if not os.path.isfile(mpath):
                continue
            out.append(Point(vdir, name, read_json(mpath)))
        out.sort(key=lambda p: (p.timestamp, p.name))
        return out

    def find_vm(self, vm: str) -> str:
        """A VM id of the repository from an id or a name (the newest point's)."""
        ids = self.vm_ids()
        if vm in ids:
            return vm
        named = [v for v in ids if any(p.manifest.get("vm_name") == vm for p in self.points(v))]
        if not named:
            raise RepositoryError(f"{self.root}: no backups of VM {vm!r}")
        if len(named) > 1:
            raise RepositoryError(f"{self.root}: several VMs are named {vm!r} "
                                  f"({', '.join(named)}): use the id")
        return named[0]

    def point(self, vm_id: str, name: str | None = None) -> Point:
        """One point (the newest without ``name``)."""
        pts = self.points(vm_id)
        if not pts:
            raise RepositoryError(f"{self.root}: no points for VM {vm_id}")
        if name is None:
            return pts[-1]
        for p in pts:
            if p.name == name:
                return p
        raise RepositoryError(f"{self.root}: VM {vm_id} has no point {name!r}")

    def chain(self, point: Point) -> list[Point]:
        """The point and every point it depends on, oldest first."""
        by_name = {p.name: p for p in self.points(point.vm_id)}
        out = [point]
        while out[-1].parent:
            parent = by_name.get(out[-1].parent)
            if parent is None:
                raise RepositoryError(f"point {out[-1].name} of VM {point.vm_id}: parent "
                                      f"point {out[-1].parent} is missing")
            if parent in out:
                raise RepositoryError(f"point {point.name}: loop in the chain")
            out.append(parent)
        return list(reversed(out))

    # --- making a point -----------------------------------------------------

    def new_point_name(self, vm_id: str, now: float) -> str:
        base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        vdir = self.vm_dir(vm_id)
        name, n = base, 1
        while os.path.exists(os.path.join(vdir, name)) or \
                os.path.exists(os.path.join(vdir, PARTIAL + name)):
            n += 1
            name = f"{base}-{n}"
        return name

    def partials(self, vm_id: str) -> list[str]:
        """Staging directories left by interrupted runs."""
        vdir = self.vm_dir(vm_id)
        if not os.path.isdir(vdir):
            return []
        return sorted(os.path.join(vdir, n) for n in os.listdir(vdir) if n.startswith(PARTIAL))

    def begin(self, vm_id: str, name: str, state: dict) -> str:
        """Create the staging directory of a new point; returns it."""
        vdir = self.vm_dir(vm_id)
        os.makedirs(vdir, exist_ok=True)
        staging = os.path.join(vdir, PARTIAL + name)
        os.mkdir(staging)
        write_json(os.path.join(staging, STATE), state)
        return staging

    def commit(self, staging: str, manifest: dict) -> Point:
        """Make a staged point visible: manifest, fsync, rename."""
        for name in os.listdir(staging):
            if name.endswith((".qcow2", ".digests", ".ovf")):
                with opened(os.path.join(staging, name)) as fd:
                    os.fsync(fd)
        write_json(os.path.join(staging, MANIFEST), manifest)
        os.unlink(os.path.join(staging, STATE))
        vdir = os.path.dirname(staging)
        final = os.path.join(vdir, manifest["point"])
        os.rename(staging, final)
        fsync_dir(vdir)
        return Point(vdir, manifest["point"], manifest)

    @staticmethod
    def discard(staging: str) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    @contextmanager
    def locked(self, vm_id: str) -> Iterator[None]:
        """Hold the VM's lock (one writer per VM chain); RepositoryError if busy."""
        vdir = self.vm_dir(vm_id)
        os.makedirs(vdir, exist_ok=True)
        with opened(os.path.join(vdir, LOCK), os.O_RDWR | os.O_CREAT, 0o644) as fd:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    raise RepositoryError(f"{vdir}: another backup or prune of this VM "
                                          "is running") from None
                raise
            yield


def allocated_bytes(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0
