"""VM backups and checkpoints (engine API model 4.4+: VmBackups, VmBackup,
VmBackupDisks, VmCheckpoints, VmCheckpoint); the rules are in
``server/domain/backups.py``."""

from __future__ import annotations

from imagetool.server.domain import backups as bk
from imagetool.server.domain import inventory
from imagetool.server.rest import disks as disks_mod
from imagetool.server.rest.codec import get_id, get_list, get_str
from imagetool.server.rest.common import (action_links, deleting, done, iso_date, ref, showing,
                                          sub_links)
from imagetool.server.rest.router import ApiError, Reply, Request
from imagetool.server.validate import MAX_DESCRIPTION, check_text


def backup_repr(req: Request, b: dict) -> dict:
    base = req.href("vms", b["vm_id"], "backups", b["id"])
    return {
        "href": base, "id": b["id"], "phase": b["phase"],
        "from_checkpoint_id": b.get("from_checkpoint_id"),
        "to_checkpoint_id": b.get("to_checkpoint_id"),
        "description": b.get("description") or None,
        "creation_date": iso_date(b.get("created")),
        "modification_date": iso_date(b.get("modified")),
        "actions": action_links(base, ["finalize"]),
        "link": sub_links(base, ["disks"]),
        "vm": ref(req, "vms", b["vm_id"]),
        "host": {"href": req.href("hosts", req.engine.host_id), "id": req.engine.host_id},
    }


def _disks(req: Request, disk_ids: list[str]) -> list[dict]:
    """The disks of ``disk_ids`` still stored, as the disks service shows them."""
    found = (inventory.find(req.engine, "disk", i) for i in disk_ids)
    return [disks_mod.disk_repr(req, d) for d in found if d is not None]


def _backup_disks(req: Request, b: dict) -> list[dict]:
    out = _disks(req, b["disks"])
    if b["phase"] in bk.RUNNING:
        for body in out:
            body["backup_mode"] = b["modes"].get(body["id"])
    return out


def checkpoint_repr(req: Request, cp: dict) -> dict:
    base = req.href("vms", cp["vm_id"], "checkpoints", cp["id"])
    return {"href": base, "id": cp["id"], "parent_id": cp.get("parent_id"),
            "creation_date": iso_date(cp.get("created")), "state": cp.get("state", "created"),
            "description": cp.get("description") or None, "link": sub_links(base, ["disks"]),
            "vm": ref(req, "vms", cp["vm_id"])}


def add_backup(req: Request, vm_id: str) -> Reply:
    data = req.data()
    description = check_text(get_str(data, "description"), "description", MAX_DESCRIPTION)
    from_cp = get_id(data, "from_checkpoint_id", what="checkpoint")
    bid = get_id(data, "id", what="backup")
    disk_ids = []
    for d in get_list(data, "disks"):
        did = get_id(d, "id", what="disk")
        if did is None:
            raise ApiError(400, "Bad Request", "[Cannot backup VM: a disk without id]")
        disk_ids.append(did)
    b = bk.start(req.engine, vm_id, disk_ids, from_cp, description or "", bid)
    return Reply(status=201, tag="backup", body=backup_repr(req, b))


list_backups = showing("backups", bk.of_vm, backup_repr)
get_backup = showing("backup", bk.get_backup, backup_repr)
backup_disks = showing("disks", bk.get_backup, _backup_disks)
list_checkpoints = showing("checkpoints", bk.visible_checkpoints, checkpoint_repr)
get_checkpoint = showing("checkpoint", bk.get_checkpoint, checkpoint_repr)
checkpoint_disks = showing("disks", bk.get_checkpoint,
                           lambda req, cp: _disks(req, cp.get("disks", [])))


def finalize_backup(req: Request, vm_id: str, bid: str) -> Reply:
    req.data()
    b = bk.finalize(req.engine, vm_id, bid)
    return done(backup=backup_repr(req, b))


remove_checkpoint = deleting(bk.drop_checkpoint)
