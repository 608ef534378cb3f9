"""The ImageTransfer state machine and the lifetime of its data-plane ticket.

Phases and the moves between them are those of ``imagetool.phases``; every
phase change goes through ``_set``, which refuses a move the table does not
allow. The disk is locked from creation to the end. A monitor thread
applies the inactivity timeout per ``timeout_policy``, keeps
``transferred``/``active`` current and forgets finished transfers after
``finished_ttl`` seconds.

A paused transfer keeps its ticket (and its open backend, which for a raw
upload into a cow disk is a qcow2 writer that must only be closed at the
end) but marks it cancelled so the data plane refuses it; resume clears it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from imagetool.formats import inspect, open_image
from imagetool.copier import CopyOptions, copy_local
from imagetool.formats.detect import QCOW2_MAGIC
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.formats.raw import RawBackend
from imagetool.phases import ACTIVE, FAILING, FINISHED, PAUSED, Phase, can_transition, ordered
from imagetool.server.jobs import end_job, record_job
from imagetool.server.store import Store
from imagetool.server.storage import Storage, create_private, new_id
from imagetool.server.tickets import Ticket, TicketRegistry

log = logging.getLogger(__name__)

# How long finalize or cancel waits for requests still using a ticket's
# volume (normally the tail of the last reply, microseconds).
CLOSE_WAIT = 10.0

POLICIES = ("legacy", "pause", "cancel")
TICKET_TIMEOUT = 300.0
# Room for qcow2 metadata when an upload moves a cow volume's own bytes and
# the client gave no initial_size (L2 tables and refcounts are < 1% + headers).
COW_OVERHEAD = 2 << 20
# Raw volumes are read and written with O_DIRECT where the file system
# allows (see formats/raw.py); $IMAGETOOL_DATAPLANE_DIRECT_IO=0 turns it off.
DIRECT_IO = os.environ.get("IMAGETOOL_DATAPLANE_DIRECT_IO", "1") != "0"


class TransferConflict(Exception):
    """An action not allowed in the transfer's current phase (409)."""


class TransferManager:
    """Creates transfers and drives their phases."""

    def __init__(self, store: Store, storage: Storage, registry: TicketRegistry,
                 dataplane_url: Callable[[], str], *, finished_ttl: float = 300.0,
                 poll_interval: float = 0.2) -> None:
        self.store = store
        self.storage = storage
        self.registry = registry
        self.dataplane_url = dataplane_url
        self.finished_ttl = finished_ttl
        self.poll_interval = poll_interval
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self.dirty: Any = None        # server.dirty.DirtyTracker, set by the app
        # More periodic work for the monitor (the app adds backups' expiry).
        self.ticks: list[Callable[[], Any]] = []

    # --- lifecycle --------------------------------------------------------

    def start(self, recover: bool = True) -> None:
        """Recover transfers interrupted by a crash (unless another engine
        process serves the same data dir), then start the monitor."""
        if recover:
            self.recover()
        self._stop.clear()
        self._monitor = threading.Thread(target=self._monitor_loop, name="transfer-monitor",
                                         daemon=True)
        self._monitor.start()

    def stop(self) -> None:
        """Stop the monitor and wait for running phase changes."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=10)
        with self._locks_guard:
            workers = list(self._workers)
        for w in workers:
            w.join(timeout=30)
        self._persist_progress()

    def _lock(self, tid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(tid, threading.Lock())

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True, name="transfer-phase")
        with self._locks_guard:
            self._workers = [w for w in self._workers if w.is_alive()] + [t]
        t.start()

    def _set(self, tid: str, **fields: Any) -> dict:
        if "phase" in fields:
            new = Phase(fields["phase"])
            old = self.store.get("transfer", tid)["phase"]
            if not can_transition(old, new):
                raise RuntimeError(f"transfer {tid}: no move from phase {old} to {new}")
            fields["phase"] = new.value
        return self.store.update("transfer", tid, **fields)

    # --- create -----------------------------------------------------------

    def create(self, disk: dict, volume: dict, *, direction: str, fmt: str,
               inactivity_timeout: int, timeout_policy: str, shallow: bool,
               host_id: str, snapshot: bool, backup: dict | None = None) -> dict:
        """Store a new transfer (phase initializing), lock the disk, start it.

        The caller has checked the disk is usable under the store's lock.
        """
        tid = new_id()
        # Only a disk that never held data (created empty, nothing uploaded
        # into it yet) is removed when its upload fails or is cancelled: the
        # disk was made for this upload. Any other disk gets its content
        # from before the transfer back (see _open_backend, _fail_disk).
        fresh = (direction == "upload" and not snapshot and bool(disk.get("empty"))
                 and volume.get("parent_id") is None and volume["id"] == disk["image_id"])
        doc = {"id": tid, "disk_id": disk["id"], "volume_id": volume["id"],
               "sd_id": volume["sd_id"], "direction": direction, "format": fmt,
               "inactivity_timeout": inactivity_timeout, "timeout_policy": timeout_policy,
               "shallow": shallow, "host_id": host_id, "phase": "initializing",
               "ticket_id": new_id(), "transferred": 0, "active": False,
               "created": time.time(), "finished_at": None, "remove_on_failure": fresh,
               "snapshot": snapshot, "error": None}
        if backup is not None:
            # A VM backup's transfer: the frozen volume, with the dirty
            # ranges of an incremental disk (server/domain/backups.py).
            doc["backup_id"] = backup["id"]
            doc["dirty_ranges"] = backup["dirty"].get(disk["id"])
        verb = "Uploading" if direction == "upload" else "Downloading"
        with self.store.transaction():
            self.store.update("disk", disk["id"], status="locked")
            doc["job_id"] = record_job(self.store, f"{verb} image of disk {disk['name']}",
                                       ["Transferring image"], status="started")["id"]
            self.store.put("transfer", doc)
        self.store.after_commit(lambda: self._spawn(self._initialize, tid))
        return doc

    def _end_job(self, t: dict, status: str) -> None:
        end_job(self.store, t.get("job_id") or "", status)

    def _volume_path(self, t: dict) -> str:
        return self.storage.volume_path(t["sd_id"], t["disk_id"], t["volume_id"])

    def _open_backend(self, t: dict) -> tuple[Callable[[], Any], int, tuple[str, ...]]:
        """(opener, ticket size, ops) for a transfer's ticket."""
        path = self._volume_path(t)
        disk = self.store.get("disk", t["disk_id"])
        vol_fmt = self.storage.read_meta(t["sd_id"], t["disk_id"], t["volume_id"]).get(
            "format", disk["format"])
        if t["direction"] == "download":
            if t.get("backup_id"):
                from imagetool.server.dirty import DirtyView
                backend = self.storage.open_volume(self.store.get("volume", t["volume_id"]))
                if t.get("dirty_ranges") is not None:
                    backend = DirtyView(backend, t["dirty_ranges"])
                return (lambda: backend), backend.size, ("read",)
            if t["format"] == "cow" or vol_fmt == "raw":
                backend = RawBackend(path, "r", direct=DIRECT_IO)
            else:
                # Through the chain the inventory records: never a backing
                # file named in the (client-written) header.
                backend = self.storage.open_volume(self.store.get("volume", t["volume_id"]),
                                                   shallow=t["shallow"])
            return (lambda: backend), backend.size, ("read",)
        ops = ("read", "write")
        if not t.get("remove_on_failure"):
            # The disk's content before this transfer, put back if it fails.
            self.storage.preserve_volume(t["sd_id"], t["disk_id"], t["volume_id"])
        if t["format"] == "cow" or vol_fmt == "raw":
            # A preallocated disk's zeroed ranges stay allocated (sparse=False).
            kw = dict(direct=DIRECT_IO, sparse=self._ticket_sparse(t))
            if vol_fmt == "raw":
                size = disk["provisioned_size"]
                backend = RawBackend(path, "r+", size=size, **kw)
            else:
                size = disk.get("initial_size") or disk["provisioned_size"] + \
                    disk["provisioned_size"] // 64 + COW_OVERHEAD
                backend = RawBackend(path, "r+", **kw)
            return (lambda: backend), size, ops
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
        if parent:
            try:
                writer.use_backing(self.storage.open_volume(self.store.get("volume", parent)))
            except BaseException:
                writer.close()
                if previous is not None:
                    os.replace(previous, path)
                raise
        if previous is not None:
            try:
                _copy_layer(previous, writer)
            except BaseException:
                writer.close()
                os.replace(previous, path)
                raise
            os.unlink(previous)
        return (lambda: writer), writer.size, ops

    def _ticket_sparse(self, t: dict) -> bool:
        """The ticket's ``sparse``: False for a preallocated disk, so zeroing keeps its space."""
        disk = self.store.get("disk", t["disk_id"]) or {}
        return bool(disk.get("sparse", True))

    def _initialize(self, tid: str) -> None:
        with self._lock(tid):
            self._initialize_locked(tid)

    def _in_phase(self, tid: str, phase: str) -> dict | None:
        """The transfer while it is still in ``phase`` (background work checks
        this first: a user action or a restart may have moved it on)."""
        t = self.store.get("transfer", tid)
        return t if t is not None and t["phase"] == phase else None

    def _initialize_locked(self, tid: str) -> None:
        t = self._in_phase(tid, "initializing")
        if t is None:
            return
        try:
            # A cow-format upload overwrites the volume from offset 0 (an
            # empty disk's placeholder qcow2 included); bytes past the end of
            # the uploaded image are never referenced by it.
            opener, size, ops = self._open_backend(t)
            ticket = Ticket(uuid=t["ticket_id"], size=size, ops=ops, open_backend=opener,
                            timeout=max(TICKET_TIMEOUT, t["inactivity_timeout"] * 2),
                            inactivity_timeout=float(t["inactivity_timeout"]),
                            sparse=self._ticket_sparse(t), transfer_id=tid,
                            dirty=t.get("dirty_ranges") is not None)
            if t["direction"] == "upload" and self.dirty is not None:
                self._track_writes(t, ticket)
            ticket.backend()
            self.registry.add(ticket)
        except Exception as e:  # any failure to prepare the ticket
            log.warning("transfer %s: cannot prepare the volume: %s", tid, e)
            self._set(tid, error=str(e))
            if t["direction"] == "upload":
                self._set(tid, phase="paused_system")
            else:
                self._set(tid, phase="cancelled_system")
                self._finish_failure(tid)
            return
        self._set(tid, phase="transferring", prepared=True)

    def _track_writes(self, t: dict, ticket: Ticket) -> None:
        """Record what an upload writes for the disk's checkpoints."""
        tracker, disk_id = self.dirty, t["disk_id"]
        if t["format"] == "cow":        # volume bytes: any guest byte may change
            disk = self.store.get("disk", disk_id)
            tracker.record(disk_id, 0, disk["provisioned_size"])
            return
        ticket.on_write = lambda offset, length: tracker.record(disk_id, offset, length)

    # --- actions ----------------------------------------------------------

    def _require(self, t: dict, action: str, phases: frozenset[Phase]) -> None:
        if t["phase"] not in phases:
            raise TransferConflict(
                f"[Cannot {action} image transfer. The image transfer is in phase "
                f"{t['phase']}, expected {' or '.join(ordered(phases))}.]")

    def extend(self, tid: str) -> dict:
        """Refresh the ticket; no phase change."""
        with self._lock(tid):
            t = self.store.get("transfer", tid)
            self._require(t, "extend", ACTIVE)
            ticket = self.registry.get(t["ticket_id"])
            if ticket is not None:
                ticket.extend(max(TICKET_TIMEOUT, t["inactivity_timeout"] * 2))
                ticket.touch()
            return t

    def pause(self, tid: str) -> dict:
        """transferring -> paused_user (uploads only)."""
        with self._lock(tid):
            t = self.store.get("transfer", tid)
            if t["direction"] == "download":
                raise TransferConflict("[Cannot pause image transfer. Pausing a download is "
                                       "not supported.]")
            self._require(t, "pause", frozenset({Phase.TRANSFERRING}))
            self._pause_ticket(t)
            return self._set(tid, phase="paused_user")

    def _pause_ticket(self, t: dict) -> None:
        ticket = self.registry.get(t["ticket_id"])
        if ticket is not None:
            ticket.canceled = True

    def resume(self, tid: str) -> dict:
        """paused_* -> resuming -> transferring (the ticket is re-armed)."""
        return self._move_to(tid, "resume", PAUSED, "resuming", self._resume)

    def _move_to(self, tid: str, action: str, allowed: frozenset[Phase], phase: str,
                 work: Callable[[str], None]) -> dict:
        """Check ``action`` is allowed in the current phase, enter ``phase``
        and run ``work`` in the background; the updated transfer."""
        with self._lock(tid):
            t = self.store.get("transfer", tid)
            self._require(t, action, allowed)
            t = self._set(tid, phase=phase)
            self._spawn(work, tid)
            return t

    def _resume(self, tid: str) -> None:
        with self._lock(tid):
            t = self._in_phase(tid, "resuming")
            if t is None:
                return
            ticket = self.registry.get(t["ticket_id"])
            if ticket is None:
                # After a restart (or a failed initialization) the ticket is gone.
                self._set(tid, phase="initializing", restored_at=None)
                self._initialize_locked(tid)
                return
            ticket.canceled = False
            ticket.touch()
            self._set(tid, phase="transferring")

    def finalize(self, tid: str) -> dict:
        """transferring (or paused) -> finalizing_success; verification runs next."""
        return self._move_to(tid, "finalize", PAUSED | {Phase.TRANSFERRING},
                             "finalizing_success", self._finalize)

    def cancel(self, tid: str, by: str = "user") -> dict:
        """Stop the transfer; an upload's fresh disk is removed."""
        return self._move_to(tid, "cancel", ACTIVE, f"cancelled_{by}", self._cleanup)

    # --- terminal work ------------------------------------------------------

    def _close_ticket(self, t: dict) -> int:
        ticket = self.registry.get(t["ticket_id"])
        transferred = t.get("transferred", 0)
        if ticket is not None:
            transferred = max(transferred, ticket.transferred)
            self.registry.remove(t["ticket_id"])
            if not ticket.wait_closed(CLOSE_WAIT):
                log.warning("transfer %s: a request still holds the volume after %ss",
                            t["id"], CLOSE_WAIT)
        return transferred

    def _finalize(self, tid: str) -> None:
        with self._lock(tid):
            t = self._in_phase(tid, "finalizing_success")
            if t is None:
                return
            try:
                transferred = self._close_ticket(t)
                self._set(tid, transferred=transferred, active=False)
                if t["direction"] == "upload":
                    self.verify_upload(t)
            except Exception as e:
                log.warning("transfer %s: verification failed: %s", tid, e)
                self._set(tid, phase="finalizing_failure", error=str(e))
                self._fail_disk(t)
                self._set(tid, phase="finished_failure", finished_at=time.time())
                self._end_job(t, "failed")
                return
            if t["direction"] == "upload":
                self.storage.drop_backup(t["sd_id"], t["disk_id"], t["volume_id"])
                self.store.update("disk", t["disk_id"], status="ok", empty=False)
            else:
                self.store.update("disk", t["disk_id"], status="ok")
            self._set(tid, phase="finished_success", finished_at=time.time())
            self._end_job(t, "finished")

    def verify_upload(self, t: dict) -> None:
        """Check the uploaded volume; raise ValueError saying what is wrong."""
        disk = self.store.get("disk", t["disk_id"])
        vol = self.store.get("volume", t["volume_id"])
        vol_fmt = vol["format"]
        if vol_fmt == "cow":
            info = inspect(self._volume_path(t))
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
            self._check_qcow2(self._volume_path(t))
        else:
            # A raw volume's bytes are the guest's, whatever they look like:
            # only a qcow2 header is refused (a likely mistake), and nothing
            # in them is parsed further, let alone followed to other files.
            with open(self._volume_path(t), "rb") as f:
                magic = f.read(4)
            if magic == QCOW2_MAGIC:
                raise ValueError(f"raw disk {disk['name']} received a qcow2 image; upload it "
                                 "with format raw or create a cow disk")
            size = os.path.getsize(self._volume_path(t))
            if size > disk["provisioned_size"]:
                raise ValueError(f"the uploaded data ({size} bytes) does not fit the disk's "
                                 f"provisioned size {disk['provisioned_size']}")

    @staticmethod
    def _check_qcow2(path: str) -> None:
        """Open the image's metadata fully so a corrupt table fails here."""
        with open_image(path, "r", format="qcow2", shallow=True) as backend:
            for _ in backend.extents():
                pass

    def _fail_disk(self, t: dict) -> None:
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
            self._remove_disk(t["disk_id"])
            return
        self.store.update("disk", t["disk_id"], status="illegal")
        if not self.storage.restore_volume(t["sd_id"], t["disk_id"], t["volume_id"]) \
                and t.get("prepared"):
            # Written without a copy of the old content (a transfer started
            # before copies were kept): the bytes cannot be trusted.
            log.warning("transfer %s: no pre-transfer copy of volume %s to restore",
                        t["id"], t["volume_id"])
        self.store.update("disk", t["disk_id"], status="ok")

    def _remove_disk(self, disk_id: str) -> None:
        disk = self.store.get("disk", disk_id)
        if disk is not None:
            self.storage.delete_disk(disk)

    def _cleanup(self, tid: str) -> None:
        with self._lock(tid):
            t = self.store.get("transfer", tid)
            if t is None or not t["phase"].startswith("cancelled"):
                return
            self._finish_failure(tid)

    def _finish_failure(self, tid: str) -> None:
        cancelled = self.store.get("transfer", tid)["phase"].startswith("cancelled")
        t = self._set(tid, phase="finalizing_cleanup")
        transferred = self._close_ticket(t)
        self._set(tid, transferred=transferred, active=False)
        self._fail_disk(t)
        self._set(tid, phase="finished_cleanup")
        self._set(tid, phase="finished_failure", finished_at=time.time())
        self._end_job(t, "aborted" if cancelled else "failed")

    # --- monitor ------------------------------------------------------------

    def _monitor_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            for tick in [self._tick, *self.ticks]:
                try:
                    tick()
                except Exception:  # the monitor must survive anything
                    log.exception("monitor tick %s failed", getattr(tick, "__name__", tick))

    def _tick(self) -> None:
        now = time.time()
        for t in self.store.list("transfer"):
            if t["phase"] in FINISHED:
                if t.get("finished_at") and now - t["finished_at"] > self.finished_ttl:
                    self.store.delete("transfer", t["id"])
                    with self._locks_guard:
                        self._locks.pop(t["id"], None)
                continue
            ticket = self.registry.get(t["ticket_id"])
            if ticket is None:
                restored = t.get("restored_at")
                if (restored and t["phase"] == "paused_system"
                        and now - restored > t["inactivity_timeout"]):
                    self._on_restored_timeout(t["id"])
                continue
            active = ticket.active()
            if ticket.transferred != t.get("transferred") or active != t.get("active"):
                self._set(t["id"], transferred=ticket.transferred, active=active)
            if (t["phase"] == "transferring" and not active
                    and ticket.idle_time() > t["inactivity_timeout"]):
                self._on_timeout(t["id"])

    def _on_timeout(self, tid: str) -> None:
        with self._lock(tid):
            t = self._in_phase(tid, "transferring")
            if t is None:
                return
            policy = t["timeout_policy"]
            log.info("transfer %s idle for %ss: policy %s", tid, t["inactivity_timeout"], policy)
            if policy == "pause" or (policy == "legacy" and t["direction"] == "upload"):
                self._pause_ticket(t)
                self._set(tid, phase="paused_system")
                return
            self._set(tid, phase="cancelled_system")
        self._spawn(self._cleanup, tid)

    def _on_restored_timeout(self, tid: str) -> None:
        """A transfer restored after a restart saw no client for its
        inactivity timeout (counted from the engine's start): its policy
        applies as for a live one. Paused ones stay paused (and stop
        counting); cancel ones are cancelled."""
        with self._lock(tid):
            t = self.store.get("transfer", tid)
            if t is None or t["phase"] != "paused_system" or not t.get("restored_at"):
                return
            log.info("restored transfer %s idle for %ss: policy %s", tid,
                     t["inactivity_timeout"], t["timeout_policy"])
            if t["timeout_policy"] != "cancel":
                self._set(tid, restored_at=None)
                return
            self._set(tid, phase="cancelled_system", restored_at=None)
        self._spawn(self._cleanup, tid)

    def _persist_progress(self) -> None:
        for t in self.store.list("transfer"):
            ticket = self.registry.get(t["ticket_id"])
            if ticket is not None and t["phase"] not in FINISHED:
                self._set(t["id"], transferred=ticket.transferred, active=False)

    # --- crash recovery -----------------------------------------------------

    def recover(self) -> None:
        """Settle transfers a previous run left unfinished.

        Downloads fail (the disk is unlocked). Uploads pause so the client
        can resume and send what it had not flushed; their inactivity clock
        restarts now, and a client that does not come back within the
        inactivity timeout gets the timeout policy (cancel: the transfer is
        cancelled; legacy/pause: it stays paused). A transfer caught in
        finalizing_success is verified again.
        """
        busy = {t["disk_id"] for t in self.store.list("transfer") if t["phase"] not in FINISHED}
        for disk in self.store.list("disk", lambda d: d["status"] == "locked"):
            if disk["id"] not in busy:
                # Locked by an operation that did not survive the restart.
                self.store.update("disk", disk["id"], status="ok")
        for t in self.store.list("transfer"):
            phase = t["phase"]
            if phase in FINISHED:
                continue
            tid = t["id"]
            if phase == "finalizing_success":
                self._spawn(self._finalize, tid)
                continue
            if phase in FAILING:
                self._set(tid, phase="cancelled_system")
                self._spawn(self._cleanup, tid)
                continue
            if t["direction"] == "upload":
                self._set(tid, phase="paused_system", active=False, restored_at=time.time())
            else:
                self._set(tid, phase="cancelled_system", active=False)
                self._spawn(self._cleanup, tid)


def _copy_layer(src: str, writer: Any) -> None:
    """Copy the clusters allocated in qcow2 layer ``src`` into ``writer``."""
    with open_image(src, "r", format="qcow2", shallow=True) as reader:
        # Holes stay unallocated, zero clusters stay zero clusters.
        copy_local(reader, writer, CopyOptions(dst_is_zero=True, over_backing=True,
                                               check_size=False))
