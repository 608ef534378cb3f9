"""Waiting for the engine: polling with backoff under a monotonic deadline.

Every helper here gives up with TimeoutExpired naming what it waited for
and what it saw last; none waits forever.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

from imagetool.engine.entities import Disk, ImageTransfer, Snapshot, VmBackup
from imagetool.errors import (Conflict, EngineError, NotFound, TimeoutExpired,
                              TransferError)
from imagetool.phases import FAILURE, TERMINAL, BackupPhase

if TYPE_CHECKING:
    from imagetool.engine.connection import Connection

MIN_DELAY = 0.1
MAX_DELAY = 2.0

T = TypeVar("T")


class Poller:
    """Sleep schedule 0.1 s, x1.5 ... 2 s, never past the deadline."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.deadline = clock() + timeout
        self.delay = MIN_DELAY
        self._clock = clock
        self._sleep = sleep

    def sleep(self) -> bool:
        """Sleep for the next interval; False when the deadline is reached."""
        remaining = self.deadline - self._clock()
        if remaining <= 0:
            return False
        self._sleep(min(self.delay, remaining))
        self.delay = min(self.delay * 1.5, MAX_DELAY)
        return True


def wait_until(fetch: Callable[[], T], predicate: Callable[[T], bool],
               timeout: float, what: str | Callable[[T], str],
               show: Callable[[T], object] = lambda value: value) -> T:
    """Call ``fetch()`` until ``predicate`` holds for its value; return that value.

    The generic loop behind every wait of the transfer workflows: the
    Poller's backoff under a monotonic deadline, then TimeoutExpired
    naming ``what`` (or ``what(value)``) and the last value seen
    (``show(value)``: the part of it worth reading). Errors of ``fetch`` propagate
    (have it return None for "gone" when that is an answer).
    """
    poller = Poller(timeout)
    while True:
        value = fetch()
        if predicate(value):
            return value
        if not poller.sleep():
            said = what(value) if callable(what) else what
            raise TimeoutExpired(f"timed out after {timeout:g} s waiting for {said} "
                                 f"(last: {show(value)})")


def found_or_none(get: Callable[[], T]) -> T | None:
    """``get()``, or None when the engine answers 404."""
    try:
        return get()
    except NotFound:
        return None


def transfer_phase(conn: "Connection", transfer_id: str) -> str | None:
    """A transfer's phase now, or None when the engine no longer has it."""
    transfer = found_or_none(lambda: conn.transfers.get(transfer_id))
    return None if transfer is None else transfer.phase or ""


def wait_for_disk(conn: "Connection", disk_id: str, status: str = "ok",
                  timeout: float = 300.0) -> Disk:
    """Poll a disk until it has ``status``; returns the disk.

    A disk turning ``illegal`` (when waiting for another status) raises
    TransferError; NotFound propagates.
    """
    def fetch() -> Disk:
        disk = conn.disks.get(disk_id)
        if disk.status == "illegal" and status != "illegal":
            raise TransferError(f"disk {disk.name or disk_id} became illegal "
                                f"while waiting for it to be {status}")
        return disk

    return wait_until(fetch, lambda d: d.status == status, timeout,
                      lambda d: f"disk {d.name or disk_id} to be {status}",
                      show=lambda d: d.status)


def wait_for_disk_unlocked(conn: "Connection", disk_id: str,
                           timeout: float = 300.0) -> Disk | None:
    """Poll until a disk is not ``locked``; None when it was removed.

    Useful after a cancel, when the engine either unlocks or deletes the disk.
    """
    return wait_until(lambda: found_or_none(lambda: conn.disks.get(disk_id)),
                      lambda d: d is None or d.status != "locked", timeout,
                      lambda d: f"disk {d and d.name or disk_id} to be unlocked",
                      show=lambda d: d and d.status)


def _disk_outcome(conn: "Connection", disk_id: str | None, transfer_id: str,
                  phases: frozenset[str]) -> ImageTransfer | None:
    """After a 404 on a finalized transfer: decide success from the disk.

    Engines before 4.4.7 delete the transfer record when it ends, so the
    disk is the only witness: ``ok`` means success; ``locked`` means not
    known yet (None: keep waiting); ``illegal`` or missing means failure.
    """
    if disk_id is None or "finished_success" not in phases:
        raise TransferError(f"transfer {transfer_id} disappeared from the engine")
    try:
        disk = conn.disks.get(disk_id)
    except NotFound:
        raise TransferError(f"transfer {transfer_id} failed: its disk {disk_id} "
                            f"was removed") from None
    if disk.status == "ok":
        return ImageTransfer(id=transfer_id, phase="finished_success", disk_id=disk_id)
    if disk.status == "illegal":
        raise TransferError(f"transfer {transfer_id} failed: disk "
                            f"{disk.name or disk_id} is illegal")
    return None


def wait_for_transfer_phase(conn: "Connection", transfer_id: str,
                            phases: Iterable[str] | str, timeout: float = 300.0,
                            disk_id: str | None = None) -> ImageTransfer:
    """Poll a transfer until its phase is one of ``phases``; returns it.

    Raises TransferError when it reaches a final phase not asked for, or a
    failure phase unless ``finished_failure`` is among ``phases`` (or
    ``paused_system`` while waiting for ``transferring``: the host could not
    serve it), TimeoutExpired at the deadline. When the transfer vanishes
    (404) while waiting for ``finished_success``, the disk decides (see
    ``_disk_outcome``); ``disk_id`` is taken from the transfer if not given.
    """
    wanted = frozenset([phases] if isinstance(phases, str) else phases)
    poller = Poller(timeout)
    last = None
    while True:
        try:
            transfer = conn.transfers.get(transfer_id)
        except NotFound:
            if last is None and disk_id is None:
                raise
            outcome = _disk_outcome(conn, disk_id, transfer_id, wanted)
            if outcome is not None:
                return outcome
        else:
            disk_id = disk_id or transfer.disk_id
            last = transfer.phase
            if transfer.phase in wanted:
                return transfer
            # A failure is final unless the caller waits to see how it ends.
            if transfer.phase in TERMINAL or (
                    transfer.phase in FAILURE and "finished_failure" not in wanted):
                raise TransferError(f"transfer {transfer_id} ended in phase "
                                    f"{transfer.phase} (waiting for "
                                    f"{'/'.join(sorted(wanted))})")
            if transfer.phase == "paused_system" and "transferring" in wanted:
                raise TransferError(
                    f"transfer {transfer_id} was paused by the system: the "
                    f"host could not start serving it")
        if not poller.sleep():
            raise TimeoutExpired(
                f"timed out after {timeout:g} s waiting for transfer {transfer_id} "
                f"to reach {'/'.join(sorted(wanted))} (last phase: {last})")


def wait_for_snapshot(conn: "Connection", vm_id: str, snapshot_id: str,
                      status: str = "ok", timeout: float = 300.0,
                      what: str | None = None) -> Snapshot:
    """Poll a VM snapshot until its snapshot_status is ``status``.

    A snapshot that vanishes meanwhile raises EngineError.
    """
    def fetch() -> Snapshot:
        try:
            return conn.snapshots.get(vm_id, snapshot_id)
        except NotFound:
            raise EngineError(f"snapshot {snapshot_id} of VM {vm_id} disappeared "
                              f"while waiting for it to be {status}") from None

    return wait_until(fetch, lambda s: s.snapshot_status == status, timeout,
                      what or f"snapshot {snapshot_id} to be {status}",
                      show=lambda s: s.snapshot_status)


def wait_for_snapshot_gone(conn: "Connection", vm_id: str, snapshot_id: str,
                           disk_ids: Iterable[str] = (), timeout: float = 300.0,
                           what: str | None = None) -> None:
    """Poll until the engine no longer has the snapshot (removed, merged),
    then until ``disk_ids``, the disks it merged into, are unlocked."""
    wait_gone(lambda: conn.snapshots.get(vm_id, snapshot_id),
              what or f"snapshot {snapshot_id} of VM {vm_id} to be removed", timeout)
    wait_for_disks(conn, disk_ids, f"removing snapshot {snapshot_id}", timeout)


def wait_for_disks(conn: "Connection", disk_ids: Iterable[str], what: str,
                   timeout: float = 300.0) -> None:
    """Until every disk is ``ok``: ``illegal`` raises TransferError, a
    removed disk counts as done."""
    pending = list(disk_ids)

    def check() -> bool:
        for disk_id in list(pending):
            d = found_or_none(lambda: conn.disks.get(disk_id))
            if d is None:
                pending.remove(disk_id)
                continue
            if d.status == "illegal":
                raise TransferError(f"{what}: disk {d.name or disk_id} became illegal")
            if d.status == "ok":
                pending.remove(disk_id)
        return not pending

    wait_truthy(check, f"{what} (disks still locked)", timeout)


def wait_truthy(check: Callable[[], object], what: str, timeout: float = 300.0) -> object:
    """Poll ``check()`` until it returns something true; return that.

    ``what`` completes "timed out after N s waiting for ...". ``check`` may
    raise to stop waiting (a failure it recognises).
    """
    return wait_until(check, bool, timeout, what)


def wait_gone(get: Callable[[], object], what: str, timeout: float = 300.0) -> None:
    """Poll until ``get()`` answers 404: the engine no longer has it."""
    wait_truthy(lambda: found_or_none(get) is None, what, timeout)


def retry_conflict(call: Callable[[], T], timeout: float = 300.0) -> T:
    """``call()``, again while the engine answers 409 (disks still locked by
    a transfer that is ending); the last Conflict at the deadline."""
    poller = Poller(timeout)
    while True:
        try:
            return call()
        except Conflict:
            if not poller.sleep():
                raise


def wait_for_backup(conn: "Connection", vm_id: str, backup_id: str,
                    phases: Iterable[str] | str, timeout: float = 600.0) -> VmBackup:
    """Poll a VM backup until its phase is one of ``phases``; returns it.

    A backup that fails while ``failed`` is not asked for raises
    EngineError; NotFound propagates (the engine forgot it).
    """
    wanted = frozenset([phases] if isinstance(phases, str) else phases)

    def fetch() -> VmBackup:
        b = conn.backups.get(vm_id, backup_id)
        if b.phase == BackupPhase.FAILED and b.phase not in wanted:
            raise EngineError(f"backup {backup_id} of VM {vm_id} failed")
        return b

    return wait_until(fetch, lambda b: b.phase in wanted, timeout,
                      f"backup {backup_id} of VM {vm_id} to be {'/'.join(sorted(wanted))}",
                      show=lambda b: b.phase)
