"""The engine calls a backup makes: VM lookup, snapshots, VM backups, checkpoints.

Each goes through the engine client's services (``conn.snapshots``,
``conn.backups``, ``conn.checkpoints``) and every wait through
``engine/wait.py``; the snapshot's lifecycle is ``engine/lifecycle.py``,
shared with ``snapshots.py`` and OVA export. VM backups and checkpoints
follow the engine API model of oVirt 4.4 and later (``/vms/{id}/backups``,
``/vms/{id}/checkpoints``, phases ``phases.BackupPhase``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from imagetool.engine.wait import retry_conflict, wait_for_backup
from imagetool.errors import EngineError, NotFound
from imagetool.phases import ACTIVE, BACKUP_ENDED, BackupPhase


@dataclass
class VmDisk:
    """A disk of the VM as the backup records it."""

    id: str
    name: str
    format: str
    provisioned_size: int
    sparse: bool
    interface: str
    bootable: bool
    backup: str | None


def vm_disks(conn: Any, vm_id: str) -> list[VmDisk]:
    """The VM's data disks (disk images, not ISOs), in attachment order."""
    out = []
    for a in conn.vms.disk_attachments(vm_id):
        if a.active is False:
            continue
        d = conn.disks.get(a.disk_id)
        if d.content_type not in (None, "data"):
            continue
        out.append(VmDisk(id=d.id, name=d.name or d.alias or d.id, format=d.format or "raw",
                          provisioned_size=int(d.provisioned_size or 0),
                          sparse=d.sparse is not False, interface=a.interface or "virtio_scsi",
                          bootable=bool(a.bootable), backup=d.backup))
    return out


# --- snapshots ----------------------------------------------------------------------

def snapshot_exists(conn: Any, vm_id: str, snapshot_id: str) -> bool:
    try:
        conn.snapshots.get(vm_id, snapshot_id)
        return True
    except NotFound:
        return False


def snapshot_layers(conn: Any, vm_id: str, snapshot_id: str) -> dict[str, str]:
    """{disk id: the snapshot's volume (disk snapshot) id}."""
    return {d.id: d.image_id for d in conn.snapshots.disks(vm_id, snapshot_id)}


def cancel_leftover_transfers(conn: Any, *, backup_id: str | None = None,
                              layers: set[str] = frozenset()) -> list[str]:
    """Cancel the transfers a killed run left open: those of its engine
    backup, or of its snapshot's layers. Nobody is left to finish them, and
    the engine would only end them at their inactivity timeout (about 60 s),
    holding the disks locked and the backup unfinalizable until then.
    Returns the ids cancelled."""
    cancelled = []
    for t in conn.transfers.list():
        ours = (backup_id and t.backup_id == backup_id) or (t.snapshot_id in layers)
        if ours and t.phase in ACTIVE:
            try:
                conn.transfers.cancel(t.id)
            except NotFound:
                continue
            cancelled.append(t.id)
    return cancelled


# --- VM backups and checkpoints (4.4+) ------------------------------------------------

def supports_backups(conn: Any, vm_id: str) -> bool:
    """Whether the engine has the VM backup API (4.4+)."""
    if getattr(conn, "legacy", False):
        return False
    try:
        conn.checkpoints.list(vm_id)
    except EngineError as e:
        if isinstance(e, NotFound) or getattr(e, "status", None) in (405, 501):
            return False
        raise
    return True


def finalize_backup(conn: Any, vm_id: str, backup_id: str, timeout: float = 600.0) -> str:
    """Finalize a backup and wait for its end; returns the final phase.

    A backup already ended (or forgotten by the engine: ``gone``) is fine;
    the engine answers 409 while the backup's transfers are still ending.
    """
    try:
        if conn.backups.get(vm_id, backup_id).phase not in BACKUP_ENDED | {
                BackupPhase.FINALIZING}:
            retry_conflict(lambda: conn.backups.finalize(vm_id, backup_id), timeout)
        return str(wait_for_backup(conn, vm_id, backup_id, BACKUP_ENDED, timeout).phase)
    except NotFound:
        return "gone"


def remove_checkpoint(conn: Any, vm_id: str, checkpoint_id: str) -> None:
    """Remove a checkpoint; gone already is fine."""
    with contextlib.suppress(NotFound):
        conn.checkpoints.remove(vm_id, checkpoint_id)


def checkpoint_state(conn: Any, vm_id: str, checkpoint_id: str) -> str | None:
    """The checkpoint's state (``created``/``invalid``), None when it does not exist."""
    try:
        return conn.checkpoints.get(vm_id, checkpoint_id).state or "created"
    except NotFound:
        return None
