"""The life of a VM snapshot a workflow takes for itself, written once for
``snapshots.py``, the backup's snapshot method and OVA export.

As the oVirt REST API guide has it (Snapshots, Snapshot): a snapshot is
usable once it is ``ok`` and its disks are unlocked, and gone once the
engine no longer lists it and the disks it merged into are unlocked. A call
that took a snapshot and then failed (Ctrl-C included) removes it again.
"""

from __future__ import annotations

from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Iterable, Iterator

from imagetool.engine.entities import Snapshot
from imagetool.engine.wait import (retry_conflict, wait_for_disks, wait_for_snapshot,
                                   wait_for_snapshot_gone)
from imagetool.errors import NotFound
from imagetool.threads import interrupts_held, shielded

if TYPE_CHECKING:
    from imagetool.engine.connection import Connection

DEFAULT_TIMEOUT = 600.0


def attached_disk_ids(conn: "Connection", vm_id: str) -> list[str]:
    return [a.disk_id for a in conn.vms.disk_attachments(vm_id) if a.disk_id]


def wait_snapshot_ready(conn: "Connection", vm_id: str, snapshot_id: str,
                        disk_ids: Iterable[str], what: str, status: str = "ok",
                        timeout: float = DEFAULT_TIMEOUT) -> Snapshot:
    """Until the snapshot has ``status`` and ``disk_ids`` are unlocked."""
    snap = wait_for_snapshot(conn, vm_id, snapshot_id, status, timeout,
                             what=f"{what} to be {status.replace('_', ' ')}")
    wait_for_disks(conn, disk_ids, what, timeout)
    return snap


def take_snapshot(conn: "Connection", vm_id: str, description: str, *,
                  disk_ids: list[str] | None = None, persist_memory: bool = False,
                  wait: bool = True, timeout: float = DEFAULT_TIMEOUT,
                  what: str | None = None) -> Snapshot:
    """Take a snapshot of the VM (of ``disk_ids`` only, when given); with
    ``wait``, return it ready, or remove it again if the wait fails (a
    Ctrl-C while it is being added included)."""
    snap = None
    targets = disk_ids
    try:
        # A Ctrl-C while the request is in flight comes once its answer is
        # kept: the snapshot the engine made is removed below.
        with interrupts_held():
            snap = conn.snapshots.add(vm_id, description=description, disk_ids=disk_ids,
                                      persist_memorystate=persist_memory)
        if not wait:
            return snap
        if targets is None:
            targets = attached_disk_ids(conn, vm_id)
        return wait_snapshot_ready(conn, vm_id, snap.id or "", targets,
                                   what or f"snapshot {description!r} of VM {vm_id}",
                                   timeout=timeout)
    except BaseException:
        if snap is not None:
            discard_snapshot(conn, vm_id, snap.id or "", targets, timeout)
        raise


def remove_snapshot(conn: "Connection", vm_id: str, snapshot_id: str, *,
                    disk_ids: Iterable[str] | None = None,
                    timeout: float = DEFAULT_TIMEOUT) -> None:
    """Remove (merge) a snapshot and wait until it is gone; gone already is
    fine. Asked again while the engine answers 409 (its disks locked by a
    transfer still ending)."""
    if disk_ids is None:
        disk_ids = attached_disk_ids(conn, vm_id)
    try:
        retry_conflict(lambda: conn.snapshots.remove(vm_id, snapshot_id), timeout)
    except NotFound:
        return
    wait_for_snapshot_gone(conn, vm_id, snapshot_id, disk_ids, timeout)


def discard_snapshot(conn: "Connection", vm_id: str, snapshot_id: str,
                     disk_ids: Iterable[str] | None = None,
                     timeout: float = DEFAULT_TIMEOUT) -> None:
    """Best effort, after a failure: remove a snapshot this run took (the
    error that got us here is the one to report); a second Ctrl-C does not
    stop it halfway."""
    with suppress(Exception):
        shielded(lambda: remove_snapshot(conn, vm_id, snapshot_id, disk_ids=disk_ids,
                                         timeout=timeout))


@contextmanager
def temporary_snapshot(conn: "Connection", vm_id: str, description: str, *,
                       timeout: float = DEFAULT_TIMEOUT) -> Iterator[Snapshot]:
    """A snapshot of the whole VM for the ``with`` block, removed after it
    (best effort when the block failed: its error is the one raised).
    The removal runs to its end even when a Ctrl-C comes meanwhile (raised
    after it), so no snapshot of the block is ever left."""
    snap = take_snapshot(conn, vm_id, description, timeout=timeout)
    try:
        yield snap
    except BaseException:
        discard_snapshot(conn, vm_id, snap.id or "", timeout=timeout)
        raise
    shielded(lambda: remove_snapshot(conn, vm_id, snap.id or "", timeout=timeout))
