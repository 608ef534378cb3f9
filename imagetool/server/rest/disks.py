"""Disks (oVirt REST API guide: Disks, Disk, DiskSnapshots): add, list, get,
update, remove, copy, move, and their disk snapshots (the volumes of the
disk's chain); the operations are ``server/domain/disks.py``'s."""

from __future__ import annotations

from imagetool.server.domain import disks, inventory
from imagetool.server.rest.codec import get_bool, get_id, get_int, get_str
from imagetool.server.rest.common import (acting, action_links, deleting, done,
                                          find_storage_domain, first_sd_ref, ref, stored,
                                          sub_links)
from imagetool.server.rest.router import Reply, Request, bad_request, missing
from imagetool.server.validate import MAX_DESCRIPTION, check_size, check_text
from imagetool.server.storage import new_id

SEARCH_FIELDS = {"alias": "name"}
FORMATS = ("cow", "raw")
CONTENT_TYPES = ("data", "iso", "ovf_store", "memory_dump_volume", "memory_metadata_volume",
                 "hosted_engine", "hosted_engine_sanlock", "hosted_engine_metadata",
                 "hosted_engine_configuration", "backup_scratch")


def disk_actual_size(req: Request, disk: dict) -> int:
    # One volume listing per request, not one per disk of a long list.
    cache = req.__dict__.setdefault("_volumes", None)
    if cache is None:
        cache = req.__dict__["_volumes"] = inventory.entities(req.engine, "volume")
    return disks.actual_size(req.engine, disk, cache)


def disk_repr(req: Request, d: dict) -> dict:
    base = req.href("disks", d["id"])
    actual = disk_actual_size(req, d)
    return {
        "href": base, "id": d["id"], "name": d["name"],
        "description": d.get("description") or None,
        "actions": action_links(base, ["copy", "move"]),
        "link": sub_links(base, ["disksnapshots", "permissions", "statistics"]),
        "actual_size": actual, "alias": d["name"], "backup": d.get("backup", "none"),
        "content_type": d.get("content_type", "data"), "format": d["format"],
        "image_id": d["image_id"], "propagate_errors": False,
        "provisioned_size": d["provisioned_size"],
        "initial_size": d.get("initial_size"),
        "qcow_version": "qcow2_v3" if d["format"] == "cow" else None,
        "shareable": False, "sparse": d.get("sparse", True), "status": d["status"],
        "storage_type": "image", "total_size": actual,
        "wipe_after_delete": False,
        "disk_profile": None,
        "storage_domains": [ref(req, "storagedomains", d["sd_id"])],
    }


def snapshot_repr(req: Request, v: dict, collection_href: str) -> dict:
    """A volume as a DiskSnapshot (id = volume id, parent = the volume below)."""
    disk = inventory.find(req.engine, "disk", v["disk_id"]) or {}
    size = disks.volume_size(req.engine, v)
    return {
        "href": f"{collection_href}/{v['id']}", "id": v["id"],
        "name": disk.get("name"), "alias": disk.get("name"),
        "description": disk.get("description") or None,
        "actual_size": size, "total_size": size,
        "content_type": disk.get("content_type", "data"), "format": v["format"],
        "image_id": v["id"], "provisioned_size": disk.get("provisioned_size"),
        "sparse": disk.get("sparse", True), "status": disk.get("status", "ok"),
        "storage_type": "image", "shareable": False, "propagate_errors": False,
        "wipe_after_delete": False,
        "disk": ref(req, "disks", v["disk_id"]),
        "parent": {"id": v["parent_id"]} if v.get("parent_id") else None,
        "snapshot": {"id": v["snapshot_id"]} if v.get("snapshot_id") else None,
        "storage_domains": [ref(req, "storagedomains", v["sd_id"])],
    }


def add_disk(req: Request, default_sd: dict | None = None) -> Reply:
    data = req.data()
    name = check_text(get_str(data, "name") or get_str(data, "alias"), "name")
    description = check_text(get_str(data, "description"), "description", MAX_DESCRIPTION)
    disk_id = get_id(data, "id", what="disk")
    size = get_int(data, "provisioned_size")
    fmt = get_str(data, "format")
    if size is None or fmt is None:
        raise missing("Disk", "add", "provisionedSize, format")
    if fmt not in FORMATS:
        raise bad_request(f"Invalid value '{fmt}' for disk format: expected cow or raw")
    check_size(size)
    backup = disks.check_backup(get_str(data, "backup") or "none", fmt, "add Virtual Disk")
    sd_ref = first_sd_ref(data)
    sd = find_storage_domain(req, sd_ref, "add Disk") if sd_ref else default_sd
    if sd is None:
        raise missing("Disk", "add", "storageDomains.storageDomain.id|name")
    disks.check_target(sd)
    content_type = get_str(data, "content_type") or "data"
    if content_type not in CONTENT_TYPES:
        raise bad_request(f"Invalid value '{content_type}' for disk content_type")
    sparse = get_bool(data, "sparse") is not False
    initial = get_int(data, "initial_size")
    if initial is not None:
        check_size(initial, "initial_size")
    disk = disks.add(req.engine, sd, size=size, sparse=sparse, initial=initial,
                     disk_id=disk_id, name=name or f"disk-{new_id()[:8]}", fmt=fmt,
                     content_type=content_type, backup=backup,
                     description=description or "")
    return Reply(status=201, tag="disk", body=disk_repr(req, disk))


list_disks, get_disk = stored("disk", "disk", "disk", disk_repr, SEARCH_FIELDS)


def update_disk(req: Request, disk_id: str) -> Reply:
    """PUT /disks/{id}: name, alias, description, provisioned_size (grow raw
    only), backup (none|incremental, cow disks only)."""
    data = req.data()
    size = get_int(data, "provisioned_size")
    if size is not None:
        check_size(size)
    description = None
    if "description" in data:
        description = check_text(get_str(data, "description"), "description",
                                 MAX_DESCRIPTION) or ""
    disk = disks.update(req.engine, disk_id,
                        name=check_text(get_str(data, "name") or get_str(data, "alias"), "name"),
                        description=description, size=size, backup=get_str(data, "backup"))
    return Reply(tag="disk", body=disk_repr(req, disk))


remove_disk = deleting(disks.remove)


def _action_target(req: Request, action: str) -> dict:
    sd_ref = first_sd_ref(req.data())
    if sd_ref is None:
        raise missing("Action", action, "storageDomain.id|name")
    return find_storage_domain(req, sd_ref, action)


def _moved(req: Request, disk: dict, job: dict) -> Reply:
    return done(disk=disk_repr(req, disk), job=ref(req, "jobs", job["id"]))


def copy_disk(req: Request, disk_id: str) -> Reply:
    sd = _action_target(req, "copy")
    new_name = check_text(get_str(req.data(), "disk", "name")
                          or get_str(req.data(), "disk", "alias"), "disk.name")
    return _moved(req, *disks.copy(req.engine, disk_id, sd, new_name))


def move_disk(req: Request, disk_id: str) -> Reply:
    return _moved(req, *disks.move(req.engine, disk_id, _action_target(req, "move")))


sparsify_disk = acting(disks.sparsify)


remove_disk_snapshot = deleting(disks.remove_snapshot)


def list_disk_snapshots(req: Request, disk_id: str) -> Reply:
    _, chain = disks.volumes(req.engine, disk_id)
    base = req.href("disks", disk_id, "disksnapshots")
    return Reply(tag="disk_snapshots", body=[snapshot_repr(req, v, base) for v in chain])


def get_disk_snapshot(req: Request, disk_id: str, vol_id: str) -> Reply:
    vol = inventory.get_owned(req.engine, "volume", vol_id, "disk snapshot", "disk_id", disk_id)
    return Reply(tag="disk_snapshot",
                 body=snapshot_repr(req, vol, req.href("disks", disk_id, "disksnapshots")))
