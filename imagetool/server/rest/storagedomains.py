"""Storage domains (oVirt REST API guide: StorageDomains, StorageDomain and
their sub-services): list/get, their disks and disk snapshots."""

from __future__ import annotations

from imagetool.server.rest import disks as disks_mod
from imagetool.server.rest.common import action_links, get_or_404, search_filter, sub_links
from imagetool.server.rest.router import Reply, Request, Router, not_found


def sd_repr(req: Request, sd: dict) -> dict:
    """A storage domain in the API model's shape, space from the real FS."""
    available, used = req.engine.storage.space(sd["id"])
    committed = sum(d["provisioned_size"] for d in req.engine.store.list(
        "disk", lambda d: d["sd_id"] == sd["id"]))
    base = req.href("storagedomains", sd["id"])
    return {
        "href": base, "id": sd["id"], "name": sd["name"],
        "description": sd.get("description"),
        "actions": action_links(req, base, []),
        "link": sub_links(base, ["disks", "disksnapshots", "files", "permissions",
                                  "storageconnections", "templates", "vms"]),
        "available": available, "used": used, "committed": committed,
        "backup": False, "block_size": 512, "discard_after_delete": False,
        "external_status": "ok", "master": sd["type"] == "data",
        "status": "active", "supports_discard": False,
        "storage": {"type": "localfs", "path": req.engine.storage.images_dir(sd["id"])},
        "storage_format": "v5", "type": sd["type"],
        "warning_low_space_indicator": 10, "critical_space_action_blocker": 5,
        "wipe_after_delete": False,
        "data_centers": [{"href": req.href("datacenters", req.engine.datacenter_id),
                          "id": req.engine.datacenter_id}],
    }


def list_sds(req: Request) -> Reply:
    docs = search_filter(req, req.engine.store.list("storage_domain"))
    return Reply(tag="storage_domains", body=[sd_repr(req, d) for d in docs])


def get_sd(req: Request, sd_id: str) -> Reply:
    return Reply(tag="storage_domain",
                 body=sd_repr(req, get_or_404(req, "storage_domain", sd_id, "storage domain")))


def list_sd_disks(req: Request, sd_id: str) -> Reply:
    get_or_404(req, "storage_domain", sd_id, "storage domain")
    docs = req.engine.store.list("disk", lambda d: d["sd_id"] == sd_id)
    docs = search_filter(req, docs, disks_mod.SEARCH_FIELDS)
    return Reply(tag="disks", body=[disks_mod.disk_repr(req, d) for d in docs])


def get_sd_disk(req: Request, sd_id: str, disk_id: str) -> Reply:
    disk = get_or_404(req, "disk", disk_id, "disk")
    if disk["sd_id"] != sd_id:
        raise not_found(f"disk '{disk_id}'")
    return Reply(tag="disk", body=disks_mod.disk_repr(req, disk))


def add_sd_disk(req: Request, sd_id: str) -> Reply:
    sd = get_or_404(req, "storage_domain", sd_id, "storage domain")
    return disks_mod.add_disk(req, default_sd=sd)


def list_sd_snapshots(req: Request, sd_id: str) -> Reply:
    get_or_404(req, "storage_domain", sd_id, "storage domain")
    vols = req.engine.store.list("volume", lambda v: v["sd_id"] == sd_id)
    vols = search_filter(req, vols)
    return Reply(tag="disk_snapshots",
                 body=[disks_mod.snapshot_repr(req, v, req.href("storagedomains", sd_id, "disksnapshots"))
                       for v in vols])


def get_sd_snapshot(req: Request, sd_id: str, vol_id: str) -> Reply:
    vol = get_or_404(req, "volume", vol_id, "disk snapshot")
    if vol["sd_id"] != sd_id:
        raise not_found(f"disk snapshot '{vol_id}'")
    return Reply(tag="disk_snapshot",
                 body=disks_mod.snapshot_repr(req, vol, req.href("storagedomains", sd_id, "disksnapshots")))


def register(router: Router) -> None:
    """Add this module's routes."""
    router.add("GET", "/storagedomains", list_sds)
    router.add("GET", "/storagedomains/{sd_id}", get_sd)
    router.add("GET", "/storagedomains/{sd_id}/disks", list_sd_disks)
    router.add("POST", "/storagedomains/{sd_id}/disks", add_sd_disk)
    router.add("GET", "/storagedomains/{sd_id}/disks/{disk_id}", get_sd_disk)
    router.add("GET", "/storagedomains/{sd_id}/disksnapshots", list_sd_snapshots)
    router.add("GET", "/storagedomains/{sd_id}/disksnapshots/{vol_id}", get_sd_snapshot)
