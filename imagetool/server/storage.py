"""Storage domains as directories, laid out like an oVirt file domain.

``<data-dir>/<sd-id>/images/<disk-id>/<volume-id>`` holds a volume (a sparse
raw file or a qcow2 file) and ``<volume-id>.meta`` a small JSON description.
A qcow2 layer names its parent by bare volume id (the parent lives in the
same directory), as vdsm does, so a disk directory can be moved as a whole.
All image work goes through ``imagetool.formats`` (pure Python, no qemu-img).

Paths are built only from ids that are UUIDs, and checked to stay inside the
data directory, so an id that slipped past the REST checks still cannot name
a path elsewhere. Every directory is created 0700 and every file 0600
whatever the umask: volumes hold guests' disks.

A qcow2 volume's guest data is always read through the chain the inventory
records (``open_volume``), never through the backing file name in its
header: a client writes that header, and a name like ``/etc/passwd`` or
``../../ca.key`` must not make the engine serve that file. Volumes naming
an external data file are refused by the reader.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from imagetool.formats import qcow2
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.formats.raw import RawBackend
from imagetool.fsutil import write_atomic
from imagetool.ids import is_uuid
from imagetool.server.files import create_private, make_private_dirs, naming
from imagetool.server.layers import allocate, copy_guest_data, sparse_copy
from imagetool.server.store import Store


MAX_CHAIN = 128
# Beside a volume while an upload into an existing disk runs: its content
# before the transfer, put back when the transfer fails or is cancelled.
BACKUP_SUFFIX = ".pre-transfer"


def new_id() -> str:
    """A fresh entity id (oVirt ids are UUIDs)."""
    return str(uuid.uuid4())


def volume_row(vol_id: str, disk_id: str, sd_id: str, fmt: str, created: float,
               parent_id: str | None = None, **extra: Any) -> dict:
    """A volume's inventory row, owned by no snapshot yet."""
    return {"id": vol_id, "disk_id": disk_id, "sd_id": sd_id, "format": fmt,
            "parent_id": parent_id, "snapshot_id": None, "created": created, **extra}


class Storage:
    """Storage domains and volumes of one data directory."""

    def __init__(self, data_dir: str, store: Store) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.store = store
        # Domain id -> the directory holding ``<sd-id>/`` (data dir, or the
        # local path a domain added through the API was given).
        self._bases: dict[str, str] = {}

    # --- domains --------------------------------------------------------

    def ensure_default_domains(self) -> None:
        """A fresh data dir gets a data domain ``data`` and an export domain ``export``."""
        with self.store.transaction():
            if self.store.list("storage_domain"):
                return
            for name, sd_type in (("data", "data"), ("export", "export")):
                sd_id = new_id()
                self.store.put("storage_domain", {
                    "id": sd_id, "name": name, "type": sd_type,
                    "description": f"local {sd_type} domain",
                    "created": time.time()})
                make_private_dirs(self.images_dir(sd_id))

    def _base(self, sd_id: str) -> str:
        """The directory holding ``<sd_id>/``: the data dir, or the domain's own path.

        A domain added through the API (``POST /storagedomains``) lives under
        the local directory it was given, as a file domain lives under its
        mount point in oVirt.
        """
        base = self._bases.get(sd_id)
        if base is None:
            sd = self.store.get("storage_domain", sd_id)
            if sd is None or not sd.get("path"):
                return self.data_dir
            base = self._bases[sd_id] = os.path.abspath(sd["path"])
        return base

    def forget_domain(self, sd_id: str) -> None:
        """Drop the cached base directory of a removed domain."""
        self._bases.pop(sd_id, None)

    def domain_dir(self, sd_id: str) -> str:
        """``<base>/<sd_id>``: the domain's top directory (dom_md, images, master)."""
        return os.path.dirname(self._inside(sd_id))

    def _inside(self, *ids: str) -> str:
        """``<base>/ids[0]/images/ids[1]/...``; ValueError unless every id is a UUID.

        Defence in depth behind the REST checks: the result is also checked
        to be below the domain's base directory.
        """
        for i in ids:
            if not isinstance(i, str) or not is_uuid(i):
                raise ValueError(f"invalid id {i!a}: storage paths are built from UUIDs")
        base = self._base(ids[0])
        path = os.path.join(base, ids[0], "images", *ids[1:])
        root = os.path.join(base, "")
        if not os.path.normpath(path).startswith(root) or os.path.normpath(path) != path:
            raise ValueError(f"path {path!a} is outside the storage domain")
        return path

    def images_dir(self, sd_id: str) -> str:
        return self._inside(sd_id)

    def space(self, sd_id: str) -> tuple[int, int]:
        """(available, used) bytes of the file system holding the domain."""
        path = self.images_dir(sd_id)
        make_private_dirs(path)
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize

    # --- volumes --------------------------------------------------------

    def disk_dir(self, sd_id: str, disk_id: str) -> str:
        return self._inside(sd_id, disk_id)

    def volume_path(self, sd_id: str, disk_id: str, vol_id: str) -> str:
        return self._inside(sd_id, disk_id, vol_id)

    def create_volume(self, sd_id: str, disk_id: str, vol_id: str, fmt: str,
                      size: int, parent_id: str | None = None,
                      preallocate: bool = False) -> str:
        """Create an empty raw or qcow2 volume; returns its path.

        A raw volume is sparse unless ``preallocate``; a cow volume with
        ``parent_id`` is a new layer over that volume.
        """
        make_private_dirs(self.disk_dir(sd_id, disk_id))
        path = self.volume_path(sd_id, disk_id, vol_id)
        with naming(path):
            create_private(path)
            if fmt == "raw":
                with open(path, "wb") as f:
                    f.truncate(size)
                    if preallocate and size:
                        os.posix_fallocate(f.fileno(), 0, size)
            else:
                backing_fmt = None
                if parent_id is not None:
                    meta = self.read_meta(sd_id, disk_id, parent_id)
                    backing_fmt = "qcow2" if meta.get("format") == "cow" else "raw"
                w = Qcow2Writer.create(path, size, backing_file=parent_id,
                                       backing_format=backing_fmt)
                w.close()
        self.write_meta(sd_id, disk_id, vol_id, {
            "format": fmt, "size": size, "parent": parent_id, "ctime": int(time.time())})
        return path

    def add_layer(self, disk: dict, parent_id: str, created: float | None = None,
                  **extra: Any) -> dict:
        """A new empty qcow2 volume of ``disk`` over volume ``parent_id``: its
        file and its inventory row (returned); the caller makes it the
        disk's active volume."""
        row = volume_row(new_id(), disk["id"], disk["sd_id"], "cow",
                         time.time() if created is None else created, parent_id, **extra)
        self.create_volume(disk["sd_id"], disk["id"], row["id"], "cow", disk["provisioned_size"],
                           parent_id=parent_id)
        self.store.put("volume", row)
        return row

    def write_meta(self, sd_id: str, disk_id: str, vol_id: str, meta: dict) -> None:
        """Write the ``.meta`` file next to a volume (atomically)."""
        write_atomic(self.volume_path(sd_id, disk_id, vol_id) + ".meta",
                     json.dumps(meta, sort_keys=True), sync=False)

    def read_meta(self, sd_id: str, disk_id: str, vol_id: str) -> dict:
        """The ``.meta`` of a volume ({} when missing)."""
        try:
            with open(self.volume_path(sd_id, disk_id, vol_id) + ".meta") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def open_volume(self, vol: dict, shallow: bool = False):
        """A read-only Backend over a volume's guest data (an inventory row).

        The chain below it is the one the inventory records (``parent_id``),
        whatever backing file the qcow2 header names; ``shallow``: this
        layer alone (unallocated clusters read as zeros).
        """
        chain = [vol]
        while not shallow and chain[-1].get("parent_id"):
            pid = chain[-1]["parent_id"]
            parent = self.store.get("volume", pid)
            if parent is None:
                raise ValueError(f"volume {chain[-1]['id']}: parent volume {pid} is missing")
            if any(v["id"] == pid for v in chain) or len(chain) >= MAX_CHAIN:
                raise ValueError(f"volume {vol['id']}: broken chain at {pid}")
            chain.append(parent)
        return self.open_chain(list(reversed(chain)))

    def open_chain(self, vols: list[dict], paths: dict[str, str] | None = None):
        """A read-only Backend over the chain ``vols`` (base..top), as given.

        Each dict names ``sd_id``, ``disk_id``, ``id`` and ``format``; the
        layers are stacked in this order whatever backing file names the
        qcow2 headers carry (e.g. a chain read from an export domain's
        metadata). A one-volume list whose volume is qcow2 reads that layer
        alone. ``paths``: volume id -> the file to read instead of the
        volume's own path (a descriptor already checked, ``/proc/self/fd/N``).
        """
        from imagetool.formats.qcow2_reader import Qcow2Backend
        backend = None
        try:
            for v in vols:
                path = (paths or {}).get(v["id"]) or self.volume_path(v["sd_id"], v["disk_id"],
                                                                      v["id"])
                if v["format"] == "raw":
                    if backend is not None:     # only a base volume can be raw
                        raise ValueError(f"raw volume {v['id']} over another volume")
                    backend = RawBackend(path, "r")
                else:
                    backend = Qcow2Backend(path, shallow=backend is None, backing=backend)
        except BaseException:
            if backend is not None:
                backend.close()
            raise
        return backend

    def backup_path(self, sd_id: str, disk_id: str, vol_id: str) -> str:
        """Where a volume's pre-transfer content is kept (see ``preserve_volume``)."""
        return self.volume_path(sd_id, disk_id, vol_id) + BACKUP_SUFFIX

    def preserve_volume(self, sd_id: str, disk_id: str, vol_id: str) -> None:
        """Keep a copy of a volume before a transfer writes it (once).

        An existing copy is this transfer's (a restart re-opens the volume):
        it holds the content from before the transfer and is kept.
        """
        backup = self.backup_path(sd_id, disk_id, vol_id)
        if os.path.exists(backup):
            return
        tmp = backup + ".tmp"
        sparse_copy(self.volume_path(sd_id, disk_id, vol_id), tmp)
        with naming(tmp), open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, backup)

    def restore_volume(self, sd_id: str, disk_id: str, vol_id: str) -> bool:
        """Put back the pre-transfer content of a volume; False when none was kept."""
        backup = self.backup_path(sd_id, disk_id, vol_id)
        if not os.path.exists(backup):
            return False
        os.replace(backup, self.volume_path(sd_id, disk_id, vol_id))
        return True

    def drop_backup(self, sd_id: str, disk_id: str, vol_id: str) -> None:
        """Forget a volume's pre-transfer copy (the transfer succeeded)."""
        Path(self.backup_path(sd_id, disk_id, vol_id)).unlink(missing_ok=True)

    def remove_volume(self, sd_id: str, disk_id: str, vol_id: str) -> None:
        """Delete a volume and its metadata; idempotent."""
        base = self.volume_path(sd_id, disk_id, vol_id)
        for p in (base, base + ".meta"):
            Path(p).unlink(missing_ok=True)

    def remove_disk(self, sd_id: str, disk_id: str) -> None:
        shutil.rmtree(self.disk_dir(sd_id, disk_id), ignore_errors=True)

    def delete_disk(self, disk: dict) -> None:
        """Remove a disk's inventory rows (its volumes' and its own), then its files."""
        with self.store.transaction():
            for v in self.store.list("volume", lambda v: v["disk_id"] == disk["id"]):
                self.store.delete("volume", v["id"])
            self.store.delete("disk", disk["id"])
        self.remove_disk(disk["sd_id"], disk["id"])

    def allocated_size(self, path: str) -> int:
        try:
            return os.stat(path).st_blocks * 512
        except FileNotFoundError:
            return 0

    def flatten(self, vols: list[dict], fmt: str, size: int, sd_id: str, disk_id: str,
                vol_id: str, preallocate: bool = False, source: str | None = None) -> str:
        """Write the guest data of a chain (base..top) as one new volume.

        ``preallocate``: a raw result is fully allocated (a preallocated disk's
        copy must not come out sparse). ``source``: for one volume, the file
        to copy instead of its own path (see ``open_chain``'s ``paths``).
        """
        new_dir = not os.path.isdir(self.disk_dir(sd_id, disk_id))
        dst = self.volume_path(sd_id, disk_id, vol_id)
        try:
            make_private_dirs(self.disk_dir(sd_id, disk_id))
            create_private(dst)
            top = vols[-1]
            src = source or self.volume_path(top["sd_id"], top["disk_id"], top["id"])
            if len(vols) == 1:
                sparse_copy(src, dst)
            else:
                copy_guest_data(self.open_volume(top), dst, fmt, size)
            if preallocate and fmt == "raw" and size:
                with naming(dst):
                    allocate(dst, 0, size)
            self.write_meta(sd_id, disk_id, vol_id, {"format": fmt, "size": size,
                                                     "parent": None, "ctime": int(time.time())})
        except BaseException:
            # A copy that failed half way (a full domain, a bad source) must
            # not stay behind as a volume nobody lists.
            if new_dir:
                self.remove_disk(sd_id, disk_id)
            else:
                self.remove_volume(sd_id, disk_id, vol_id)
            raise
        return dst

    def resize_volume(self, disk: dict, size: int, vols: list[dict]) -> None:
        """Grow the disk's active volume to ``size`` virtual bytes."""
        top = vols[-1]
        path = self.volume_path(top["sd_id"], top["disk_id"], top["id"])
        if top["format"] == "raw":
            with open(path, "r+b") as f:
                old = os.fstat(f.fileno()).st_size
                f.truncate(size)
            if not disk.get("sparse", True) and size > old:
                allocate(path, old, size - old)
            return
        qcow2.grow(path, size)
