"""Storage domains (oVirt REST API guide: StorageDomains, StorageDomain and
their sub-services): add, list/get, remove, their disks and disk snapshots;
attaching to and detaching from the data center is in ``datacenters.py``.
The rules (where a domain may live, when it may go) are
``server/domain/storagedomains.py``'s.
"""

from __future__ import annotations

from imagetool.server.domain import inventory
from imagetool.server.domain import storagedomains as sds
from imagetool.server.rest import disks as disks_mod
from imagetool.server.rest.codec import get_id, get_str
from imagetool.server.rest.common import action_links, ref, search_filter, stored, sub_links
from imagetool.server.rest.hosts import find_host
from imagetool.server.rest.router import Reply, Request, bad_request, missing
from imagetool.server.validate import MAX_DESCRIPTION, check_text, shown

SD_TYPES = ("data", "export", "iso")
STORAGE_TYPES = ("localfs", "nfs")
MAX_PATH = 4096


def sd_repr(req: Request, sd: dict) -> dict:
    """A storage domain in the API model's shape, space from the real FS."""
    available, used, committed = sds.space(req.engine, sd)
    base = req.href("storagedomains", sd["id"])
    return {
        "href": base, "id": sd["id"], "name": sd["name"],
        "description": sd.get("description"),
        "actions": action_links(base, []),
        "link": sub_links(base, ["disks", "disksnapshots", "files", "permissions",
                                  "storageconnections", "templates", "vms"]),
        "available": available, "used": used, "committed": committed,
        "backup": False, "block_size": 512, "discard_after_delete": False,
        "external_status": "ok", "master": sd["type"] == "data" and sds.is_attached(sd),
        "status": sds.status(sd), "supports_discard": False,
        "storage": {"type": sd.get("storage_type", "localfs"),
                    "address": sd.get("address"),
                    "path": sds.path(req.engine, sd)},
        "storage_format": "v5", "type": sd["type"],
        "warning_low_space_indicator": 10, "critical_space_action_blocker": 5,
        "wipe_after_delete": False,
        "data_centers": ([ref(req, "datacenters", req.engine.datacenter_id)]
                         if sds.is_attached(sd) else None),
    }


def add_sd(req: Request) -> Reply:
    """POST /storagedomains: a new domain in a local directory, unattached."""
    data = req.data()
    name = check_text(get_str(data, "name"), "name")
    sd_type = get_str(data, "type")
    storage_type = get_str(data, "storage", "type")
    if not name or not sd_type or not storage_type:
        raise missing("StorageDomain", "add", "name, type, storage.type, storage.path")
    if sd_type not in SD_TYPES:
        raise bad_request(f"Invalid value {shown(sd_type)} for storage domain type: expected "
                          "data, export or iso")
    if storage_type not in STORAGE_TYPES:
        raise bad_request(f"Invalid value {shown(storage_type)} for storage type: the local "
                          "engine serves localfs or nfs (a locally mounted directory)")
    description = check_text(get_str(data, "description"), "description", MAX_DESCRIPTION)
    address = check_text(get_str(data, "storage", "address"), "storage.address")
    host_id = get_id(data, "host", "id", what="host")
    host_name = get_str(data, "host", "name")
    if host_id or host_name:
        find_host(req, host_id, host_name)
    path = get_str(data, "storage", "path")
    if not path:
        raise missing("StorageDomain", "add", "storage.path")
    check_text(path, "storage.path", MAX_PATH)
    sd = sds.add(req.engine, name=name, sd_type=sd_type, storage_type=storage_type,
                 description=description or "", address=address,
                 path=sds.check_path(req.engine, path))
    return Reply(status=201, tag="storage_domain", body=sd_repr(req, sd))


def remove_sd(req: Request, sd_id: str) -> Reply:
    # format=true, or destroy=true, deletes the domain's directory too.
    sds.remove(req.engine, sd_id, req.flag("format") or req.flag("destroy"))
    return Reply(status=200)


list_sds, get_sd = stored("storage_domain", "storage domain", "storage_domain", sd_repr)


def list_sd_disks(req: Request, sd_id: str) -> Reply:
    inventory.get(req.engine, "storage_domain", sd_id, "storage domain")
    docs = search_filter(req, sds.disks_of(req.engine, sd_id), disks_mod.SEARCH_FIELDS)
    return Reply(tag="disks", body=[disks_mod.disk_repr(req, d) for d in docs])


def get_sd_disk(req: Request, sd_id: str, disk_id: str) -> Reply:
    disk = inventory.get_owned(req.engine, "disk", disk_id, "disk", "sd_id", sd_id)
    return Reply(tag="disk", body=disks_mod.disk_repr(req, disk))


def add_sd_disk(req: Request, sd_id: str) -> Reply:
    sd = inventory.get(req.engine, "storage_domain", sd_id, "storage domain")
    return disks_mod.add_disk(req, default_sd=sd)


def list_sd_snapshots(req: Request, sd_id: str) -> Reply:
    inventory.get(req.engine, "storage_domain", sd_id, "storage domain")
    vols = search_filter(req, sds.volumes_of(req.engine, sd_id))
    return Reply(tag="disk_snapshots",
                 body=[disks_mod.snapshot_repr(req, v, req.href("storagedomains", sd_id, "disksnapshots"))
                       for v in vols])


def get_sd_snapshot(req: Request, sd_id: str, vol_id: str) -> Reply:
    vol = inventory.get_owned(req.engine, "volume", vol_id, "disk snapshot", "sd_id", sd_id)
    return Reply(tag="disk_snapshot",
                 body=disks_mod.snapshot_repr(req, vol, req.href("storagedomains", sd_id, "disksnapshots")))


def remove_sd_snapshot(req: Request, sd_id: str, vol_id: str) -> Reply:
    vol = inventory.get_owned(req.engine, "volume", vol_id, "disk snapshot", "sd_id", sd_id)
    return disks_mod.remove_disk_snapshot(req, disk_id=vol["disk_id"], vol_id=vol_id)
