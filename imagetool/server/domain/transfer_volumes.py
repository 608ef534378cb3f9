"""What an image transfer does to its disk's volume: open it for the data
plane, check what an upload left in it, and put the disk back as it was
when the transfer fails.

A paused upload keeps its open backend, which for a raw upload into a cow
disk is a qcow2 writer that must only be closed at the end. An upload into
a disk that already held data keeps a copy of that data
(``Storage.preserve_volume``) until the transfer succeeds or fails.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from imagetool.iocore.copier import CopyOptions, copy_local
from imagetool.formats import inspect, open_image
from imagetool.formats.detect import QCOW2_MAGIC
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.formats.raw import RawBackend
from imagetool.server.files import create_private
from imagetool.server.storage import Storage
from imagetool.server.store import Store

log = logging.getLogger(__name__)

# Room for qcow2 metadata when an upload moves a cow volume's own bytes and
# the client gave no initial_size (L2 tables and refcounts are < 1% + headers).
COW_OVERHEAD = 2 << 20
# Raw volumes are read and written with O_DIRECT where the file system
# allows (see formats/raw.py); $IMAGETOOL_DATAPLANE_DIRECT_IO=0 turns it off.
DIRECT_IO = os.environ.get("IMAGETOOL_DATAPLANE_DIRECT_IO", "1") != "0"

Opener = Callable[[], Any]


class TransferVolumes:
    """The storage side of image transfers (``t`` is a stored transfer)."""

    def __init__(self, store: Store, storage: Storage) -> None:
        self.store = store
        self.storage = storage

    def path(self, t: dict) -> str:
        return self.storage.volume_path(t["sd_id"], t["disk_id"], t["volume_id"])

    def open(self, t: dict) -> tuple[Opener, int, tuple[str, ...]]:
        """(opener, ticket size, ops) for a transfer's ticket."""
        path = self.path(t)
        disk = self.store.get("disk", t["disk_id"])
        vol_fmt = self.storage.read_meta(t["sd_id"], t["disk_id"], t["volume_id"]).get(
            "format", disk["format"])
        if t["direction"] == "download":
            return self._open_download(t, path, vol_fmt)
        ops = ("read", "write")
        if not t.get("remove_on_failure"):
            # The disk's content before this transfer, put back if it fails.
            self.storage.preserve_volume(t["sd_id"], t["disk_id"], t["volume_id"])
        if t["format"] == "cow" or vol_fmt == "raw":
            # A preallocated disk's zeroed ranges stay allocated (sparse=False).
            kw = dict(direct=DIRECT_IO, sparse=bool(disk.get("sparse", True)))
            if vol_fmt == "raw":
                size = disk["provisioned_size"]
                backend = RawBackend(path, "r+", size=size, **kw)
            else:
                size = disk.get("initial_size") or disk["provisioned_size"] + \
                    disk["provisioned_size"] // 64 + COW_OVERHEAD
                backend = RawBackend(path, "r+", **kw)
            return (lambda: backend), size, ops
        writer = self._qcow2_writer(t, path, disk)
        return (lambda: writer), writer.size, ops

    def _open_download(self, t: dict, path: str,
                       vol_fmt: str) -> tuple[Opener, int, tuple[str, ...]]:
        if t.get("backup_id"):
            from imagetool.server.dirty import DirtyView
            backend = self.storage.open_volume(self.store.get("volume", t["volume_id"]))
            if t.get("dirty_ranges") is not None:
                backend = DirtyView(backend, t["dirty_ranges"])
        elif t["format"] == "cow" or vol_fmt == "raw":
            backend = RawBackend(path, "r", direct=DIRECT_IO)
        else:
            # Through the chain the inventory records: never a backing
            # file named in the (client-written) header.
            backend = self.storage.open_volume(self.store.get("volume", t["volume_id"]),
                                               shallow=t["shallow"])
        return (lambda: backend), backend.size, ("read",)

    def _qcow2_writer(self, t: dict, path: str, disk: dict) -> Qcow2Writer:
        """A live qcow2 writer for a raw upload into a cow volume."""
        parent = self.store.get("volume", t["volume_id"]).get("parent_id")
        backing_fmt = None
        if parent:
            pmeta = self.storage.read_meta(t["sd_id"], t["disk_id"], parent)
            backing_fmt = "qcow2" if pmeta.get("format") == "cow" else "raw"
        previous = None
        if os.path.exists(path) and os.path.getsize(path) > 0:
            # The volume may already hold data: a new transfer to the same
            # disk, or a resume after a restart killed the writer (whatever
            # the client flushed is there: a flush writes the metadata).
            # Rebuild a live writer holding that data.
            previous = path + ".resume"
            os.replace(path, previous)
        create_private(path)
        writer = Qcow2Writer.create(path, disk["provisioned_size"], backing_file=parent,
                                    backing_format=backing_fmt)
        try:
            if parent:
                writer.use_backing(self.storage.open_volume(self.store.get("volume", parent)))
            if previous is not None:
                _copy_layer(previous, writer)
        except BaseException:
            writer.close()
            if previous is not None:
                os.replace(previous, path)
            raise
        if previous is not None:
            os.unlink(previous)
        return writer

    def track_writes(self, t: dict, ticket: Any, tracker: Any) -> None:
        """Record what an upload writes for the disk's checkpoints."""
        disk_id = t["disk_id"]
        if t["format"] == "cow":        # volume bytes: any guest byte may change
            disk = self.store.get("disk", disk_id)
            tracker.record(disk_id, 0, disk["provisioned_size"])
            return
        ticket.on_write = lambda offset, length: tracker.record(disk_id, offset, length)

    def verify_upload(self, t: dict) -> None:
        """Check the uploaded volume; raise ValueError saying what is wrong."""
        disk = self.store.get("disk", t["disk_id"])
        vol = self.store.get("volume", t["volume_id"])
        if vol["format"] == "cow":
            self._verify_qcow2(t, disk, vol)
            return
        # A raw volume's bytes are the guest's, whatever they look like:
        # only a qcow2 header is refused (a likely mistake), and nothing
        # in them is parsed further, let alone followed to other files.
        with open(self.path(t), "rb") as f:
            magic = f.read(4)
        if magic == QCOW2_MAGIC:
            raise ValueError(f"raw disk {disk['name']} received a qcow2 image; upload it "
                             "with format raw or create a cow disk")
        size = os.path.getsize(self.path(t))
        if size > disk["provisioned_size"]:
            raise ValueError(f"the uploaded data ({size} bytes) does not fit the disk's "
                             f"provisioned size {disk['provisioned_size']}")

    def _verify_qcow2(self, t: dict, disk: dict, vol: dict) -> None:
        info = inspect(self.path(t))
        if info.format != "qcow2":
            raise ValueError(f"the volume of cow disk {disk['name']} is not a qcow2 image "
                             f"(found {info.format})")
        if getattr(info, "data_file", None):
            raise ValueError(f"the qcow2 image of disk {disk['name']} names an external "
                             f"data file ({info.data_file}); an uploaded disk must not")
        if getattr(info, "corrupt", False):
            raise ValueError(f"the qcow2 image of disk {disk['name']} is corrupt")
        expected_backing = vol.get("parent_id")
        if (info.backing_file or None) != expected_backing:
            if expected_backing is None:
                raise ValueError(f"the qcow2 image of disk {disk['name']} has a backing "
                                 f"file ({info.backing_file}); an uploaded disk must not")
            raise ValueError(f"the qcow2 layer of disk {disk['name']} must have backing "
                             f"file {expected_backing}")
        if info.virtual_size > disk["provisioned_size"]:
            raise ValueError(f"the qcow2 image's virtual size {info.virtual_size} is larger "
                             f"than the disk's provisioned size {disk['provisioned_size']}")
        # Open the image's metadata fully so a corrupt table fails here.
        with open_image(self.path(t), "r", format="qcow2", shallow=True) as backend:
            for _ in backend.extents():
                pass

    def succeed(self, t: dict) -> None:
        """The transfer finished: the disk is unlocked (an upload's disk holds data now)."""
        if t["direction"] == "upload":
            self.storage.drop_backup(t["sd_id"], t["disk_id"], t["volume_id"])
            self.store.update("disk", t["disk_id"], status="ok", empty=False)
        else:
            self.store.update("disk", t["disk_id"], status="ok")

    def fail(self, t: dict) -> None:
        """A failed upload: a fresh disk is removed; any other becomes
        illegal while it gets its content from before the transfer back
        (never the client's bytes: they did not verify or were cancelled).

        A fresh disk goes straight from locked to gone: a client waiting
        for the disk to be unlocked or removed (``wait_for_disk_unlocked``
        after a cancel) must not catch it in between, looking kept."""
        if t["direction"] != "upload":
            self.store.update("disk", t["disk_id"], status="ok")
            return
        if t.get("remove_on_failure"):
            disk = self.store.get("disk", t["disk_id"])
            if disk is not None:
                self.storage.delete_disk(disk)
            return
        self.store.update("disk", t["disk_id"], status="illegal")
        if not self.storage.restore_volume(t["sd_id"], t["disk_id"], t["volume_id"]) \
                and t.get("prepared"):
            # Written without a copy of the old content (a transfer started
            # before copies were kept): the bytes cannot be trusted.
            log.warning("transfer %s: no pre-transfer copy of volume %s to restore",
                        t["id"], t["volume_id"])
        self.store.update("disk", t["disk_id"], status="ok")


def _copy_layer(src: str, writer: Any) -> None:
    """Copy the clusters allocated in qcow2 layer ``src`` into ``writer``."""
    with open_image(src, "r", format="qcow2", shallow=True) as reader:
        # Holes stay unallocated, zero clusters stay zero clusters.
        copy_local(reader, writer, CopyOptions(dst_is_zero=True, over_backing=True,
                                               check_size=False))
