"""The engine calls a backup makes: VM lookup, snapshots, VM backups, checkpoints.

Snapshots follow the oVirt REST API guide (Snapshots, Snapshot, its disks);
VM backups and checkpoints follow the engine API model of oVirt 4.4 and later
(``/vms/{id}/backups``, ``/vms/{id}/checkpoints``: phases ``initializing``,
``starting``, ``ready``, ``finalizing``, ``succeeded``, ``failed``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from imagetool.engine import codec
from imagetool.errors import EngineError, NotFound, TimeoutExpired

POLL = 0.2


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


def find_vm(conn: Any, vm: str) -> Any:
    return conn.vms.find(vm)


def vm_ovf(conn: Any, vm_id: str) -> str:
    return conn.vms.get(vm_id, all_content=True).ovf or ""


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


def _deadline(timeout: float) -> float:
    return time.monotonic() + timeout


# --- snapshots ----------------------------------------------------------------------

def create_snapshot(conn: Any, vm_id: str, description: str, disk_ids: list[str],
                    timeout: float = 600.0) -> str:
    """Take a snapshot of the disks (no memory); wait until it is ``ok``."""
    snap = conn.snapshots.add(vm_id, description=description, disk_ids=disk_ids,
                              persist_memorystate=False)
    end = _deadline(timeout)
    while True:
        try:
            s = conn.snapshots.get(vm_id, snap.id)
        except NotFound:
            raise EngineError(f"snapshot {snap.id} of VM {vm_id} disappeared while "
                              "being created") from None
        if s.snapshot_status in (None, "ok"):
            return snap.id
        if time.monotonic() > end:
            raise TimeoutExpired(f"snapshot {snap.id} still {s.snapshot_status} after "
                                 f"{timeout:.0f} s")
        time.sleep(POLL)


def snapshot_exists(conn: Any, vm_id: str, snapshot_id: str) -> bool:
    try:
        conn.snapshots.get(vm_id, snapshot_id)
        return True
    except NotFound:
        return False


def remove_snapshot(conn: Any, vm_id: str, snapshot_id: str, timeout: float = 600.0) -> None:
    """Remove (merge) a snapshot and wait until it is gone; gone already is fine."""
    end = _deadline(timeout)
    while True:
        try:
            conn.snapshots.remove(vm_id, snapshot_id)
            break
        except NotFound:
            return
        except EngineError as e:
            # Locked disks (a transfer still ending): try again shortly.
            if getattr(e, "status", None) != 409 or time.monotonic() > end:
                raise
            time.sleep(POLL)
    while snapshot_exists(conn, vm_id, snapshot_id):
        if time.monotonic() > end:
            raise TimeoutExpired(f"snapshot {snapshot_id} still exists after {timeout:.0f} s")
        time.sleep(POLL)


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
    from imagetool.phases import ACTIVE

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

@dataclass
class Backup:
    id: str
    phase: str | None
    from_checkpoint_id: str | None
    to_checkpoint_id: str | None
    disk_modes: dict[str, str | None]


def _text(tree: Any, *path: str) -> str | None:
    for p in path:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(p)
    return codec.to_str(tree) if tree is not None else None


def _items(tree: Any, tag: str) -> list:
    if isinstance(tree, dict):
        tree = tree.get(tag, [])
    if isinstance(tree, dict):
        return [tree]
    return list(tree or [])


def _backup_from(tree: Any) -> Backup:
    disks = {}
    node = tree.get("disks") if isinstance(tree, dict) else None
    for d in _items(node or {}, "disk"):
        if isinstance(d, dict) and d.get("id"):
            disks[codec.to_str(d["id"])] = _text(d, "backup_mode")
    return Backup(id=_text(tree, "id"), phase=_text(tree, "phase"),
                  from_checkpoint_id=_text(tree, "from_checkpoint_id"),
                  to_checkpoint_id=_text(tree, "to_checkpoint_id"), disk_modes=disks)


def supports_backups(conn: Any, vm_id: str) -> bool:
    """Whether the engine has the VM backup API (4.4+)."""
    if getattr(conn, "legacy", False):
        return False
    try:
        conn.get_tree(f"vms/{vm_id}/checkpoints")
        return True
    except NotFound:
        return False
    except EngineError as e:
        if getattr(e, "status", None) in (404, 405, 501):
            return False
        raise


def start_backup(conn: Any, vm_id: str, disk_ids: list[str],
                 from_checkpoint_id: str | None, description: str) -> Backup:
    body = {"description": description,
            "from_checkpoint_id": from_checkpoint_id,
            "disks": {"disk": [{"id": d} for d in disk_ids]}}
    tree = conn.post_tree(f"vms/{vm_id}/backups", codec.to_xml("backup", body))
    return _backup_from(tree)


def get_backup(conn: Any, vm_id: str, backup_id: str) -> Backup:
    return _backup_from(conn.get_tree(f"vms/{vm_id}/backups/{backup_id}"))


def backup_disks(conn: Any, vm_id: str, backup_id: str) -> dict[str, str | None]:
    tree = conn.get_tree(f"vms/{vm_id}/backups/{backup_id}/disks")
    return {codec.to_str(d["id"]): _text(d, "backup_mode")
            for d in _items(tree, "disk") if isinstance(d, dict) and d.get("id")}


def wait_backup(conn: Any, vm_id: str, backup_id: str, phases: tuple[str, ...],
                timeout: float = 600.0) -> Backup:
    end = _deadline(timeout)
    while True:
        b = get_backup(conn, vm_id, backup_id)
        if b.phase in phases:
            return b
        if b.phase == "failed":
            raise EngineError(f"backup {backup_id} of VM {vm_id} failed")
        if time.monotonic() > end:
            raise TimeoutExpired(f"backup {backup_id} still {b.phase} after {timeout:.0f} s")
        time.sleep(POLL)


def finalize_backup(conn: Any, vm_id: str, backup_id: str, timeout: float = 600.0) -> str:
    """Finalize a backup and wait for its end; returns the final phase.

    A backup already ended (or forgotten by the engine) is fine.
    """
    try:
        b = get_backup(conn, vm_id, backup_id)
    except NotFound:
        return "gone"
    if b.phase not in ("succeeded", "failed", "finalizing"):
        end = _deadline(timeout)
        while True:
            try:
                conn.post_tree(f"vms/{vm_id}/backups/{backup_id}/finalize",
                               codec.to_xml("action", {}))
                break
            except NotFound:
                return "gone"
            except EngineError as e:
                # Transfers of the backup still ending.
                if getattr(e, "status", None) != 409 or time.monotonic() > end:
                    raise
                time.sleep(POLL)
    try:
        return wait_backup(conn, vm_id, backup_id, ("succeeded", "failed"), timeout).phase
    except EngineError:
        return "failed"
    except NotFound:
        return "gone"


def checkpoint_ids(conn: Any, vm_id: str) -> list[str]:
    tree = conn.get_tree(f"vms/{vm_id}/checkpoints")
    return [codec.to_str(c["id"]) for c in _items(tree, "checkpoint")
            if isinstance(c, dict) and c.get("id")]


def remove_checkpoint(conn: Any, vm_id: str, checkpoint_id: str) -> None:
    """Remove a checkpoint (``DELETE /vms/{id}/checkpoints/{id}``); gone already is fine."""
    try:
        conn.request("DELETE", f"vms/{vm_id}/checkpoints/{checkpoint_id}")
    except NotFound:
        pass


def checkpoint_state(conn: Any, vm_id: str, checkpoint_id: str) -> str | None:
    """The checkpoint's state (``created``/``invalid``), None when it does not exist."""
    try:
        tree = conn.get_tree(f"vms/{vm_id}/checkpoints/{checkpoint_id}")
    except NotFound:
        return None
    return _text(tree, "state") or "created"
