"""VM backups and checkpoints of the local engine (oVirt engine API model 4.4+:
Backup, Checkpoint; phases ``initializing``, ``ready``, ``finalizing``,
``succeeded``, ``failed``).

Starting a backup freezes each of its disks the way the engine's
snapshot-based ("hybrid") backup does: the active volume becomes a hidden
read-only layer and a new empty layer takes the writes, so backup transfers
read the disks as they were at the start whatever is written meanwhile.
Finalizing merges that layer back. A new checkpoint starts tracking writes
(``server/dirty.py``) at the same moment; an incremental disk's dirty
ranges are those of ``from_checkpoint_id`` frozen then. Only disks with
``backup=incremental`` take part in checkpoints, as on the engine.

Phases move as ``imagetool.phases.BACKUP_TRANSITIONS`` allows (``_set``
refuses anything else). A backup nobody finalizes must not hold its VM
for ever: one with no activity (no transfer of it running, none ended,
no phase change) for the engine's ``backup_timeout`` ends like a
premature finalize (layers merged back, checkpoint dropped, ``failed``),
as an idle image transfer is cancelled; so does one a previous run of
the engine left running (``recover``). Both are done by the transfer
monitor's tick (``expire``), and by a new backup of the same VM before
it checks that none runs.
"""

from __future__ import annotations

import logging
import time

from imagetool.iocore.copier import CopyOptions, copy_local
from imagetool.formats import allocated_ranges
from imagetool.iocore.backend import Extent
from imagetool.formats.raw import RawBackend
from imagetool.phases import BACKUP_RUNNING as RUNNING
from imagetool.phases import FINISHED, BackupPhase, can_move_backup
from imagetool.server.domain import disks as disk_ops
from imagetool.server.domain.inventory import get, get_owned
from imagetool.server.faults import ApiError, conflict, not_found
from imagetool.server.storage import new_id

log = logging.getLogger(__name__)

B = BackupPhase
# Seconds a backup may see no activity before it is ended (serve's default).
BACKUP_TIMEOUT = 600.0


def _refused(status: int, message: str, reason: str | None = None) -> ApiError:
    """A request the backup rules refuse (400 or 409), its detail in brackets."""
    return ApiError(status, reason or {400: "Bad Request", 409: "Operation Failed"}[status],
                    f"[{message}]")


def checkpoints(engine, vm_id: str) -> list[dict]:
    cps = engine.store.list("checkpoint", lambda c: c["vm_id"] == vm_id)
    return sorted(cps, key=lambda c: c["created"])


def start(engine, vm_id: str, disk_ids: list[str], from_cp: str | None,
          description: str, backup_id: str | None = None) -> dict:
    """Create a backup of VM ``vm_id`` (phase initializing; ready once committed)."""
    with engine.store.transaction():
        return _start(engine, get(engine, "vm", vm_id, "VM"), disk_ids, from_cp, description,
                      backup_id)


def _start(engine, vm: dict, disk_ids: list[str], from_cp: str | None,
           description: str, backup_id: str | None) -> dict:
    store = engine.store
    attached = {a["disk_id"] for a in vm.get("attachments", [])}
    if not disk_ids:
        raise _refused(400, "Cannot backup VM: no disks were given")
    for d in disk_ids:
        if d not in attached:
            raise _refused(400, f"Cannot backup VM: disk {d} is not attached to the VM")
    if len(set(disk_ids)) != len(disk_ids):
        raise _refused(400, "Cannot backup VM: a disk is given twice")
    expire(engine, vm["id"])
    if any(b["vm_id"] == vm["id"] and b["phase"] in RUNNING for b in store.list("backup")):
        raise _refused(409, "Cannot backup VM. A backup of the VM is already running.")
    if backup_id and store.get("backup", backup_id):
        raise _refused(409, f"Cannot backup VM: a backup with id {backup_id} exists")
    parent = None
    if from_cp:
        parent = store.get("checkpoint", from_cp)
        if parent is None or parent["vm_id"] != vm["id"]:
            raise _refused(400, f"Cannot backup VM: checkpoint {from_cp} does not exist")
        if parent.get("state") != "created":
            raise _refused(400, f"Cannot backup VM: checkpoint {from_cp} is invalid")
    disks = [store.get("disk", d) for d in disk_ids]
    for d in disks:
        disk_ops.check_usable(d, "backup VM")
    now = time.time()
    cp_id = new_id()
    bid = backup_id or new_id()
    frozen, dirty, modes, members = {}, {}, {}, []
    for d in disks:
        incremental = d.get("backup") == "incremental"
        ranges = None
        if from_cp and incremental and d["id"] in parent["disks"]:
            ranges = engine.dirty.ranges(d["id"], from_cp)
        modes[d["id"]] = "incremental" if ranges is not None else "full"
        dirty[d["id"]] = ranges
        frozen[d["id"]] = _freeze(engine, d, now)
        if incremental:
            engine.dirty.add_checkpoint(d["id"], cp_id)
            members.append(d["id"])
    leaf = checkpoints(engine, vm["id"])
    cp = {"id": cp_id, "vm_id": vm["id"], "parent_id": leaf[-1]["id"] if leaf else None,
          "created": now, "state": "created", "disks": members, "description": description,
          "pending": bid}
    store.put("checkpoint", cp)
    doc = {"id": bid, "vm_id": vm["id"], "phase": B.INITIALIZING.value, "disks": disk_ids,
           "from_checkpoint_id": from_cp, "to_checkpoint_id": cp_id, "modes": modes,
           "frozen": frozen, "dirty": dirty, "description": description,
           "created": now, "modified": now}
    store.put("backup", doc)
    store.after_commit(lambda: _set(engine, bid, B.READY))
    return doc


def _set(engine, bid: str, new: BackupPhase, **fields) -> dict | None:
    """Move the backup to phase ``new``, as ``BACKUP_TRANSITIONS`` allows."""
    old = engine.store.get("backup", bid)["phase"]
    if not can_move_backup(old, new):
        raise RuntimeError(f"backup {bid}: no move from phase {old} to {new}")
    return engine.store.update("backup", bid, phase=new.value, modified=time.time(), **fields)


def _freeze(engine, disk: dict, now: float) -> str:
    """Put a new empty layer over the disk's active volume; return the old one."""
    store = engine.store
    old = disk["image_id"]
    new = engine.storage.add_layer(disk, old, now, backup_layer=False)["id"]
    store.update("volume", old, backup_frozen=True)
    # The disk keeps its format: the layer is the engine's own, as the
    # scratch disk of a real engine's backup is (a raw disk stays raw).
    store.update("disk", disk["id"], image_id=new)
    return old


def _thaw(engine, disk: dict, frozen_id: str) -> None:
    """Merge the backup's layer back into the volume it froze.

    When nothing was written during the backup, or the frozen volume is
    raw, the frozen volume becomes the active volume again (a raw one
    gets the writes made meanwhile written into it in place first), so
    the disk keeps its format and its size. Otherwise (writes over a
    qcow2 volume, or a snapshot taken meanwhile) the layer is merged as a
    snapshot's is.
    """
    store, st = engine.store, engine.storage
    lower = store.get("volume", frozen_id)
    if disk["image_id"] == frozen_id:           # thawed already (an end run again)
        store.update("volume", frozen_id, backup_frozen=False)
        return
    upper = store.get("volume", disk["image_id"])
    if upper is None or upper.get("parent_id") != frozen_id:
        disk_ops.merge_down(engine, disk, frozen_id)
        return
    upper_path = st.volume_path(disk["sd_id"], disk["id"], upper["id"])
    written = allocated_ranges(upper_path, "qcow2")
    if written and lower.get("format") != "raw":
        disk_ops.merge_down(engine, disk, frozen_id)
        return
    if written:
        # A preallocated disk's zeroed ranges stay allocated.
        with st.open_volume(upper) as reader, RawBackend(
                st.volume_path(disk["sd_id"], disk["id"], frozen_id), "r+",
                sparse=bool(disk.get("sparse", True))) as writer:
            copy_local(reader, writer, CopyOptions(check_size=False),
                       extents=[Extent(a, b - a) for a, b in written])
    store.update("volume", frozen_id, backup_frozen=False)
    store.update("disk", disk["id"], image_id=frozen_id)
    store.delete("volume", upper["id"])
    # The file goes once the inventory no longer names it (a crash before
    # the commit leaves the chain as it was, reading the same data).
    store.after_commit(lambda: st.remove_volume(disk["sd_id"], disk["id"], upper["id"]))


def of_vm(engine, vm_id: str) -> list[dict]:
    """The backups of VM ``vm_id`` (404 when there is no such VM)."""
    get(engine, "vm", vm_id, "VM")
    return engine.store.list("backup", lambda b: b["vm_id"] == vm_id)


def get_backup(engine, vm_id: str, bid: str) -> dict:
    """Backup ``bid`` of VM ``vm_id``, or a 404."""
    return get_owned(engine, "backup", bid, "backup", "vm_id", vm_id)


def finalize(engine, vm_id: str, bid: str) -> dict:
    """Merge the frozen layers back and end the backup (``succeeded``)."""
    with engine.store.transaction():
        return _finalize(engine, get_backup(engine, vm_id, bid))


def _finalize(engine, b: dict) -> dict:
    bid = b["id"]
    if b["phase"] not in RUNNING or b["phase"] == B.FINALIZING:
        return b
    if _busy(engine, bid):
        raise _refused(409, "Cannot stop VM backup. The VM backup has active image "
                               "transfers; finalize them first.")
    return _end(engine, b, ok=b["phase"] == B.READY)


def _busy(engine, bid: str) -> list[dict]:
    """The backup's transfers that have not finished."""
    return [t for t in engine.store.list("transfer", lambda t: t.get("backup_id") == bid)
            if t["phase"] not in FINISHED]


def _end(engine, b: dict, ok: bool) -> dict:
    """Merge the frozen layers back; ``succeeded`` when ``ok`` and every merge
    worked, else ``failed`` with the new checkpoint dropped. Call under the
    store's transaction. A backup found in finalizing (the engine stopped
    mid-merge) is merged again: layers already merged are gone."""
    store, bid = engine.store, b["id"]
    if b["phase"] != B.FINALIZING:
        b = _set(engine, bid, B.FINALIZING, finalize_ok=ok)
    ok = bool(b.get("finalize_ok", ok))
    for disk_id, vol_id in b["frozen"].items():
        d = store.get("disk", disk_id)
        if d is None or store.get("volume", vol_id) is None:
            continue
        try:
            _thaw(engine, d, vol_id)
        except Exception:
            ok = False
    cp = store.get("checkpoint", b["to_checkpoint_id"])
    if cp is not None:
        if ok:
            cp.pop("pending", None)
            store.put("checkpoint", cp)
        else:
            remove_checkpoint(engine, cp)
    return _set(engine, bid, B.SUCCEEDED if ok else B.FAILED)


def recover(engine) -> None:
    """Mark the backups a previous run of the engine left running: their
    client is gone with their transfers, so ``expire`` ends them (failed)
    once those transfers are settled."""
    with engine.store.transaction():
        for b in engine.store.list("backup", lambda b: b["phase"] in RUNNING):
            engine.store.update("backup", b["id"], abandoned=True)


def expire(engine, vm_id: str | None = None, now: float | None = None) -> list[str]:
    """End the running backups (of ``vm_id``, or all) that a previous run
    left or that saw no activity for ``engine.backup_timeout`` seconds;
    a backup with a transfer still running waits for it (the transfer has
    its own inactivity timeout). The ids of the backups ended."""
    store = engine.store
    ended = []
    for b in store.list("backup", lambda b: b["phase"] in RUNNING
                        and (vm_id is None or b["vm_id"] == vm_id)):
        with store.transaction():
            b = store.get("backup", b["id"])
            if b is None or b["phase"] not in RUNNING:
                continue
            transfers = store.list("transfer", lambda t: t.get("backup_id") == b["id"])
            if any(t["phase"] not in FINISHED for t in transfers):
                continue
            # Finished transfers are forgotten after a while: their last
            # activity is kept on the backup.
            last = max([b.get("modified") or b["created"], b.get("active_at") or 0]
                       + [t.get("finished_at") or t["created"] for t in transfers])
            if last > (b.get("active_at") or 0) and transfers:
                b = store.update("backup", b["id"], active_at=last)
            idle = (now or time.time()) - last
            if not b.get("abandoned") and idle <= engine.backup_timeout:
                continue
            why = ("left running by a previous run of the engine" if b.get("abandoned")
                   else f"no activity for {idle:.0f} s")
            log.warning("backup %s of VM %s: %s; ending it", b["id"], b["vm_id"], why)
            _end(engine, b, ok=False)
            ended.append(b["id"])
    return ended


def visible_checkpoints(engine, vm_id: str) -> list[dict]:
    """The VM's checkpoints a client sees (not one of a running backup)."""
    get(engine, "vm", vm_id, "VM")
    return [c for c in checkpoints(engine, vm_id) if not c.get("pending")]


def get_checkpoint(engine, vm_id: str, cid: str) -> dict:
    """Checkpoint ``cid`` of VM ``vm_id`` as a client sees it, or a 404."""
    cp = get(engine, "checkpoint", cid, "checkpoint")
    if cp["vm_id"] != vm_id or cp.get("pending"):
        raise not_found(f"checkpoint '{cid}'")
    return cp


def drop_checkpoint(engine, vm_id: str, cid: str) -> None:
    """Remove a checkpoint, unless a backup of the VM runs."""
    with engine.store.transaction():
        cp = get_checkpoint(engine, vm_id, cid)
        if any(b["vm_id"] == vm_id and b["phase"] in RUNNING
               for b in engine.store.list("backup")):
            raise conflict("remove checkpoint", "A backup of the VM is running.")
        remove_checkpoint(engine, cp)


def remove_checkpoint(engine, cp: dict) -> None:
    """Forget a checkpoint; its child is re-linked to its parent."""
    store = engine.store
    for child in store.list("checkpoint", lambda c: c.get("parent_id") == cp["id"]):
        store.update("checkpoint", child["id"], parent_id=cp.get("parent_id"))
    for d in cp.get("disks", []):
        engine.dirty.remove_checkpoint(d, cp["id"])
    store.delete("checkpoint", cp["id"])


def backup_volume(engine, backup_id: str, disk_id: str) -> tuple[dict, dict]:
    """(backup, frozen volume) for a backup transfer of ``disk_id``."""
    b = engine.store.get("backup", backup_id)
    if b is None:
        raise _refused(404, f"backup '{backup_id}' not found", "Bad Request")
    if b["phase"] != B.READY:
        raise _refused(409, f"Cannot transfer image. The VM backup is in phase "
                               f"{b['phase']}, expected ready.")
    if disk_id not in b["frozen"]:
        raise _refused(400, f"Cannot transfer image: disk {disk_id} is not part of "
                               f"backup {backup_id}")
    return b, engine.store.get("volume", b["frozen"][disk_id])
