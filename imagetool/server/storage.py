"""Storage domains as directories, laid out like an oVirt file domain.

``<data-dir>/<sd-id>/images/<disk-id>/<volume-id>`` holds a volume (a sparse
raw file or a qcow2 file) and ``<volume-id>.meta`` a small JSON description.
A qcow2 layer names its parent by bare volume id (the parent lives in the
same directory), as vdsm does, so a disk directory can be moved as a whole.
All image work goes through ``imagetool.formats`` (pure Python, no qemu-img).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid

from imagetool.formats import open_image, qcow2
from imagetool.formats.base import copy_range
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.formats.raw import RawBackend
from imagetool.server.store import Store

COPY_CHUNK = 4 << 20


def new_id() -> str:
    """A fresh entity id (oVirt ids are UUIDs)."""
    return str(uuid.uuid4())


class Storage:
    """Storage domains and volumes of one data directory."""

    def __init__(self, data_dir: str, store: Store) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.store = store

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
                os.makedirs(self.images_dir(sd_id), exist_ok=True)

    def images_dir(self, sd_id: str) -> str:
        """The ``images`` directory of a domain."""
        return os.path.join(self.data_dir, sd_id, "images")

    def space(self, sd_id: str) -> tuple[int, int]:
        """(available, used) bytes of the file system holding the domain."""
        path = self.images_dir(sd_id)
        os.makedirs(path, exist_ok=True)
        st = os.statvfs(path)
        available = st.f_bavail * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return available, used

    # --- volumes --------------------------------------------------------

    def disk_dir(self, sd_id: str, disk_id: str) -> str:
        """The directory holding every volume of a disk."""
        return os.path.join(self.images_dir(sd_id), disk_id)

    def volume_path(self, sd_id: str, disk_id: str, vol_id: str) -> str:
        """The file of one volume."""
        return os.path.join(self.disk_dir(sd_id, disk_id), vol_id)

    def create_volume(self, sd_id: str, disk_id: str, vol_id: str, fmt: str,
                      size: int, parent_id: str | None = None,
                      preallocate: bool = False) -> str:
        """Create an empty raw or qcow2 volume; returns its path.

        A raw volume is sparse unless ``preallocate``; a cow volume with
        ``parent_id`` is a new layer over that volume.
        """
        os.makedirs(self.disk_dir(sd_id, disk_id), exist_ok=True)
        path = self.volume_path(sd_id, disk_id, vol_id)
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

    def write_meta(self, sd_id: str, disk_id: str, vol_id: str, meta: dict) -> None:
        """Write the ``.meta`` file next to a volume (atomically)."""
        path = self.volume_path(sd_id, disk_id, vol_id) + ".meta"
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(meta, f, sort_keys=True)
        os.replace(tmp, path)

    def read_meta(self, sd_id: str, disk_id: str, vol_id: str) -> dict:
        """The ``.meta`` of a volume ({} when missing)."""
        try:
            with open(self.volume_path(sd_id, disk_id, vol_id) + ".meta") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def remove_volume(self, sd_id: str, disk_id: str, vol_id: str) -> None:
        """Delete a volume and its metadata; idempotent."""
        base = self.volume_path(sd_id, disk_id, vol_id)
        for p in (base, base + ".meta"):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def remove_disk(self, sd_id: str, disk_id: str) -> None:
        """Delete a disk's directory with all its volumes."""
        shutil.rmtree(self.disk_dir(sd_id, disk_id), ignore_errors=True)

    def allocated_size(self, path: str) -> int:
        """Bytes actually allocated on the file system for a file."""
        try:
            return os.stat(path).st_blocks * 512
        except FileNotFoundError:
            return 0

    def file_size(self, path: str) -> int:
        """Apparent size of a file (0 when missing)."""
        try:
            return os.path.getsize(path)
        except FileNotFoundError:
            return 0

    def flatten(self, vols: list[dict], fmt: str, size: int, sd_id: str, disk_id: str,
                vol_id: str, preallocate: bool = False) -> str:
        """Write the guest data of a chain (base..top) as one new volume.

        ``preallocate``: a raw result is fully allocated (a preallocated disk's
        copy must not come out sparse).
        """
        os.makedirs(self.disk_dir(sd_id, disk_id), exist_ok=True)
        dst = self.volume_path(sd_id, disk_id, vol_id)
        top = vols[-1]
        src = self.volume_path(top["sd_id"], top["disk_id"], top["id"])
        if len(vols) == 1:
            _sparse_copy(src, dst)
        else:
            copy_guest_data(src, dst, fmt, size)
        if preallocate and fmt == "raw" and size:
            _allocate(dst, 0, size)
        self.write_meta(sd_id, disk_id, vol_id,
                        {"format": fmt, "size": size, "parent": None, "ctime": int(time.time())})
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
                _allocate(path, old, size - old)
            return
        qcow2.grow(path, size)


def merge_layer(lower: str, upper: str, parent_id: str | None, parent_fmt: str | None,
                size: int) -> None:
    """Merge qcow2 layer ``lower`` into the layer above it (``upper``), in place.

    The result replaces ``upper``: a qcow2 backed by ``parent_id`` (the layer
    below ``lower``) holding every cluster allocated in either layer, the
    upper one winning; with no parent it is a standalone qcow2 of the whole
    chain's guest data. Written to a temporary file first, so a crash leaves
    the chain as it was.
    """
    tmp = upper + ".merging"
    reader = open_image(upper, "r", format="qcow2")
    try:
        if parent_id is None:
            ranges = [(e.start, e.end) for e in reader.extents() if not e.zero]
        else:
            ranges = _allocated(lower) + _allocated(upper)
        writer = Qcow2Writer.create(tmp, size, backing_file=parent_id,
                                    backing_format=parent_fmt if parent_id else None)
        try:
            buf = bytearray(COPY_CHUNK)
            for start, end in _union(ranges):
                copy_range(reader, writer, start, end, buf)
            writer.flush()
        finally:
            writer.close()
    finally:
        reader.close()
    os.replace(tmp, upper)


def _allocated(path: str) -> list[tuple[int, int]]:
    """Ranges allocated in this qcow2 layer alone (data or explicit zeros)."""
    reader = open_image(path, "r", shallow=True)
    try:
        return [(e.start, e.end) for e in reader.extents() if not e.hole]
    finally:
        reader.close()


def _union(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def copy_guest_data(src: str, dst: str, fmt: str, size: int) -> None:
    """Copy guest data of ``src`` (any chain) into a new raw or qcow2 ``dst``."""
    reader = open_image(src, "r")
    try:
        if fmt == "raw":
            with open(dst, "wb") as f:
                f.truncate(size)
            writer = RawBackend(dst, mode="r+")
        else:
            writer = Qcow2Writer.create(dst, size)
        try:
            buf = bytearray(COPY_CHUNK)
            for ext in reader.extents():
                if ext.zero:
                    continue
                copy_range(reader, writer, ext.start, ext.end, buf)
            writer.flush()
        finally:
            writer.close()
    finally:
        reader.close()


def _allocate(path: str, offset: int, length: int) -> None:
    """Allocate a range of a file without changing its data."""
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), offset, length)


def _sparse_copy(src: str, dst: str) -> None:
    """Copy a file, skipping runs of zeros so the copy stays sparse."""
    zero = bytes(COPY_CHUNK)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        size = os.fstat(fi.fileno()).st_size
        while True:
            chunk = fi.read(COPY_CHUNK)
            if not chunk:
                break
            if chunk == zero[:len(chunk)]:
                fo.seek(len(chunk), os.SEEK_CUR)
            else:
                fo.write(chunk)
        fo.truncate(size)
