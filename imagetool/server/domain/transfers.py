"""The ImageTransfer phase machine of the local engine.

Every phase change is an event of ``imagetool.phases.EVENTS``, the one
table of the moves: ``_fire`` looks the next phase up there and refuses
an event the current phase has no entry for, and a client action is
allowed in exactly the phases that accept its event. The disk is locked
from creation to the end. What a phase does to the volume is
``transfer_volumes.py``'s, what it does to the data-plane ticket
``transfer_tickets.py``'s; this module orders them, on background
threads for the slow steps. A monitor thread applies the inactivity
timeout per ``timeout_policy``, keeps ``transferred``/``active`` current
and forgets finished transfers after ``finished_ttl`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from imagetool.phases import (ACTIVE, ENDED, FAILING, FINISHED, Event, Phase, accepting,
                              next_phase, ordered)
from imagetool.server.domain import backups
from imagetool.server.domain.disks import check_usable
from imagetool.server.domain.inventory import get
from imagetool.server.domain.transfer_tickets import TransferTickets
from imagetool.server.domain.transfer_volumes import TransferVolumes
from imagetool.server.faults import conflict, missing
from imagetool.server.jobs import end_job, record_job
from imagetool.server.storage import Storage, new_id
from imagetool.server.store import Store
from imagetool.server.tickets import TicketRegistry

log = logging.getLogger(__name__)

E, P = Event, Phase
POLICIES = ("legacy", "pause", "cancel")


def target(engine, disk_id: str | None, snap_id: str | None,
           image_id: str | None) -> tuple[dict, dict, bool]:
    """(disk, volume, is_snapshot) named by a disk, a disk snapshot or an image id."""
    if disk_id:
        disk = get(engine, "disk", disk_id, "disk")
        return disk, engine.store.get("volume", disk["image_id"]), False
    for vol_id, is_snap in ((snap_id, True), (image_id, False)):
        if vol_id:
            vol = get(engine, "volume", vol_id, "disk snapshot" if is_snap else "image")
            disk = engine.store.get("disk", vol["disk_id"])
            return disk, vol, is_snap or vol["id"] != disk["image_id"]
    raise missing("ImageTransfer", "add", "disk.id|snapshot.id|image.id")


def start(engine, ids: tuple[str | None, ...], *, direction: str, host: dict | None,
          **options: Any) -> dict:
    """A new transfer, on ``host`` or the least busy one, of what ``ids``
    (disk, disk snapshot, image, VM backup) names: a VM backup's frozen
    volume of the disk, else as ``target`` finds it."""
    disk_id, snap_id, image_id, backup_id = ids
    with engine.store.transaction():
        backup = None
        if backup_id:
            disk = get(engine, "disk", disk_id, "disk")
            backup, vol = backups.backup_volume(engine, backup_id, disk_id)
            is_snap = False
        else:
            disk, vol, is_snap = target(engine, disk_id, snap_id, image_id)
        check_usable(disk, "transfer image")
        if direction == "upload" and vol["id"] != disk["image_id"]:
            raise conflict("transfer image", "Only the active layer of a disk can be uploaded.")
        if host is None:
            host = _least_busy_host(engine)
        return engine.transfers.create(disk, vol, direction=direction, host_id=host["id"],
                                       snapshot=is_snap, backup=backup, **options)


def _least_busy_host(engine) -> dict:
    """The host with the fewest unfinished transfers (the first on a tie).

    A real engine picks any host that is up in the disk's data center; the
    least busy one spreads transfers over hosts when the client names none.
    """
    busy = {h["id"]: 0 for h in engine.hosts}
    for t in engine.store.list("transfer", lambda t: t["phase"] not in ENDED):
        if t.get("host_id") in busy:
            busy[t["host_id"]] += 1
    return min(engine.hosts, key=lambda h: busy[h["id"]])


class TransferManager:
    def __init__(self, store: Store, storage: Storage, registry: TicketRegistry,
                 dataplane_url: Callable[[], str], *, finished_ttl: float = 300.0,
                 poll_interval: float = 0.2) -> None:
        self.store = store
        self.volumes = TransferVolumes(store, storage)
        self.tickets = TransferTickets(registry)
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

    def _fire(self, tid: str, event: Event, **fields: Any) -> dict:
        """Move the transfer as ``event`` does in its phase (and store ``fields``)."""
        old = self.store.get("transfer", tid)["phase"]
        new = next_phase(old, event)
        if new is None:
            raise RuntimeError(f"transfer {tid}: no {event} in phase {old}")
        return self.store.update("transfer", tid, phase=new.value, **fields)

    def _note(self, tid: str, **fields: Any) -> dict:
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
        # from before the transfer back (see TransferVolumes).
        fresh = (direction == "upload" and not snapshot and bool(disk.get("empty"))
                 and volume.get("parent_id") is None and volume["id"] == disk["image_id"])
        doc = {"id": tid, "disk_id": disk["id"], "volume_id": volume["id"],
               "sd_id": volume["sd_id"], "direction": direction, "format": fmt,
               "inactivity_timeout": inactivity_timeout, "timeout_policy": timeout_policy,
               "shallow": shallow, "host_id": host_id, "phase": P.INITIALIZING.value,
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

    def _end(self, t: dict, event: Event, job_status: str) -> None:
        self._fire(t["id"], event, finished_at=time.time())
        end_job(self.store, t.get("job_id") or "", job_status)

    def _initialize(self, tid: str) -> None:
        with self._lock(tid):
            self._initialize_locked(tid)

    def _in_phase(self, tid: str, *phases: Phase) -> dict | None:
        """The transfer while it is still in one of ``phases`` (background work
        checks this first: a user action or a restart may have moved it on)."""
        t = self.store.get("transfer", tid)
        return t if t is not None and t["phase"] in phases else None

    def _initialize_locked(self, tid: str) -> None:
        t = self._in_phase(tid, P.INITIALIZING)
        if t is None:
            return
        try:
            # A cow-format upload overwrites the volume from offset 0 (an
            # empty disk's placeholder qcow2 included); bytes past the end of
            # the uploaded image are never referenced by it.
            opener, size, ops = self.volumes.open(t)
            ticket = self.tickets.new(t, opener, size, ops)
            if t["direction"] == "upload" and self.dirty is not None:
                self.volumes.track_writes(t, ticket, self.dirty)
            self.tickets.add(ticket)
        except Exception as e:  # any failure to prepare the ticket
            log.warning("transfer %s: cannot prepare the volume: %s", tid, e)
            self._note(tid, error=str(e))
            if t["direction"] == "upload":
                self._fire(tid, E.SYSTEM_PAUSE)
            else:
                self._fire(tid, E.SYSTEM_CANCEL)
                self._finish_failure(tid)
            return
        self._fire(tid, E.READY, prepared=True)

    # --- actions ----------------------------------------------------------

    def _require(self, t: dict, action: str, phases: frozenset[Phase]) -> None:
        if t["phase"] not in phases:
            raise conflict(f"{action} image transfer",
                           f"The image transfer is in phase {t['phase']}, expected "
                           f"{' or '.join(ordered(phases))}.")

    def extend(self, tid: str) -> dict:
        """Refresh the ticket; no phase change."""
        with self._lock(tid):
            t = self.store.get("transfer", tid)
            self._require(t, "extend", ACTIVE)
            self.tickets.extend(t)
            return t

    def pause(self, tid: str) -> dict:
        """transferring -> paused_user (uploads only)."""
        with self._lock(tid):
            t = self.store.get("transfer", tid)
            if t["direction"] == "download":
                raise conflict("pause image transfer",
                               "Pausing a download is not supported.")
            self._require(t, "pause", accepting(E.USER_PAUSE))
            self.tickets.pause(t)
            return self._fire(tid, E.USER_PAUSE)

    def resume(self, tid: str) -> dict:
        """paused_* -> resuming -> transferring (the ticket is re-armed)."""
        return self._act(tid, "resume", E.RESUME, self._resume)

    def finalize(self, tid: str) -> dict:
        """transferring (or paused) -> finalizing_success; verification runs next."""
        return self._act(tid, "finalize", E.FINALIZE, self._finalize)

    def cancel(self, tid: str, by: str = "user") -> dict:
        """Stop the transfer; an upload's fresh disk is removed."""
        event = E.USER_CANCEL if by == "user" else E.SYSTEM_CANCEL
        return self._act(tid, "cancel", event, self._cleanup)

    def _act(self, tid: str, action: str, event: Event, work: Callable[[str], None]) -> dict:
        """Check the current phase accepts ``event``, fire it and run
        ``work`` in the background; the updated transfer."""
        with self._lock(tid):
            t = self.store.get("transfer", tid)
            self._require(t, action, accepting(event))
            t = self._fire(tid, event)
            self._spawn(work, tid)
            return t

    def _resume(self, tid: str) -> None:
        with self._lock(tid):
            t = self._in_phase(tid, P.RESUMING)
            if t is None:
                return
            if not self.tickets.rearm(t):
                # After a restart (or a failed initialization) the ticket is gone.
                self._fire(tid, E.REOPEN, restored_at=None)
                self._initialize_locked(tid)
                return
            self._fire(tid, E.READY)

    # --- terminal work ------------------------------------------------------

    def _finalize(self, tid: str) -> None:
        with self._lock(tid):
            t = self._in_phase(tid, P.FINALIZING_SUCCESS)
            if t is None:
                return
            try:
                self._note(tid, transferred=self.tickets.close(t), active=False)
                if t["direction"] == "upload":
                    self.volumes.verify_upload(t)
            except Exception as e:
                log.warning("transfer %s: verification failed: %s", tid, e)
                self._fire(tid, E.NOT_VERIFIED, error=str(e))
                self.volumes.fail(t)
                self._end(t, E.END, "failed")
                return
            self.volumes.succeed(t)
            self._end(t, E.VERIFIED, "finished")

    def _cleanup(self, tid: str) -> None:
        with self._lock(tid):
            if self._in_phase(tid, P.CANCELLED_USER, P.CANCELLED_SYSTEM) is not None:
                self._finish_failure(tid)

    def _finish_failure(self, tid: str) -> None:
        t = self._fire(tid, E.CLEANUP)
        self._note(tid, transferred=self.tickets.close(t), active=False)
        self.volumes.fail(t)
        self._fire(tid, E.CLEANED)
        self._end(t, E.END, "aborted")

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
            ticket = self.tickets.get(t)
            if ticket is None:
                restored = t.get("restored_at")
                if (restored and t["phase"] == P.PAUSED_SYSTEM
                        and now - restored > t["inactivity_timeout"]):
                    self._on_restored_timeout(t["id"])
                continue
            active = ticket.active()
            if ticket.transferred != t.get("transferred") or active != t.get("active"):
                self._note(t["id"], transferred=ticket.transferred, active=active)
            if (t["phase"] == P.TRANSFERRING and not active
                    and ticket.idle_time() > t["inactivity_timeout"]):
                self._on_timeout(t["id"])

    def _on_timeout(self, tid: str) -> None:
        with self._lock(tid):
            t = self._in_phase(tid, P.TRANSFERRING)
            if t is None:
                return
            policy = t["timeout_policy"]
            log.info("transfer %s idle for %ss: policy %s", tid, t["inactivity_timeout"], policy)
            if policy == "pause" or (policy == "legacy" and t["direction"] == "upload"):
                self.tickets.pause(t)
                self._fire(tid, E.SYSTEM_PAUSE)
                return
            self._fire(tid, E.SYSTEM_CANCEL)
        self._spawn(self._cleanup, tid)

    def _on_restored_timeout(self, tid: str) -> None:
        """A transfer restored after a restart saw no client for its
        inactivity timeout (counted from the engine's start): its policy
        applies as for a live one. Paused ones stay paused (and stop
        counting); cancel ones are cancelled."""
        with self._lock(tid):
            t = self._in_phase(tid, P.PAUSED_SYSTEM)
            if t is None or not t.get("restored_at"):
                return
            log.info("restored transfer %s idle for %ss: policy %s", tid,
                     t["inactivity_timeout"], t["timeout_policy"])
            if t["timeout_policy"] != "cancel":
                self._note(tid, restored_at=None)
                return
            self._fire(tid, E.SYSTEM_CANCEL, restored_at=None)
        self._spawn(self._cleanup, tid)

    def _persist_progress(self) -> None:
        for t in self.store.list("transfer"):
            ticket = self.tickets.get(t)
            if ticket is not None and t["phase"] not in FINISHED:
                self._note(t["id"], transferred=ticket.transferred, active=False)

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
            if phase == P.FINALIZING_SUCCESS:
                self._spawn(self._finalize, tid)
            elif phase in FAILING or t["direction"] != "upload":
                self._fire(tid, E.SYSTEM_CANCEL, active=False)
                self._spawn(self._cleanup, tid)
            else:
                self._fire(tid, E.SYSTEM_PAUSE, active=False, restored_at=time.time())
