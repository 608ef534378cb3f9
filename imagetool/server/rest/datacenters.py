"""The one data center and cluster (``Default``) the local engine has.

Enough for clients that look up the cluster to create a VM or the data
center of a storage domain (``storage.name=...`` searches), and the data
center's storage domains (oVirt REST API guide: AttachedStorageDomains,
AttachedStorageDomain): attach, activate, deactivate, detach.
"""

from __future__ import annotations

from imagetool.server.rest import domain_files
from imagetool.server.rest.codec import get_id, get_str
from imagetool.server.rest.common import (action_links, find_storage_domain, get_or_404,
                                          record_job, ref, search_filter, sub_links)
from imagetool.server.rest.router import Reply, Request, conflict, missing, not_found
from imagetool.server.rest.storagedomains import check_no_disks, is_attached, sd_repr


def dc_repr(req: Request) -> dict:
    """The data center holding every storage domain."""
    engine = req.engine
    base = req.href("datacenters", engine.datacenter_id)
    return {"href": base, "id": engine.datacenter_id, "name": "Default",
            "description": "The local engine's data center",
            "link": sub_links(base, ["storagedomains", "clusters"]),
            "local": True, "status": "up", "storage_format": "v5",
            "version": {"major": 4, "minor": 7}}


def cluster_repr(req: Request) -> dict:
    """The cluster of the local host."""
    engine = req.engine
    return {"href": req.href("clusters", engine.cluster_id), "id": engine.cluster_id,
            "name": "Default", "description": "The local engine's cluster",
            "version": {"major": 4, "minor": 7},
            "cpu": {"architecture": "x86_64", "type": "Intel Nehalem Family"},
            "data_center": ref(req, "datacenters", engine.datacenter_id)}


def _dc_doc(req: Request) -> dict:
    # Searchable fields, including the storage domains' names (storage.name=x).
    names = [sd["name"] for sd in req.engine.store.list("storage_domain")]
    return {"id": req.engine.datacenter_id, "name": "Default", "status": "up",
            "storage.name": names}


def list_dcs(req: Request) -> Reply:
    doc = _dc_doc(req)
    search = req.query.get("search", "")
    if search.replace(" ", "").startswith("storage.name="):
        wanted = search.split("=", 1)[1].strip().strip('"')
        docs = [doc] if wanted in doc["storage.name"] else []
    else:
        docs = search_filter(req, [doc])
    return Reply(tag="data_centers", body=[dc_repr(req) for _ in docs])


def get_dc(req: Request, dc_id: str) -> Reply:
    _dc(req, dc_id)
    return Reply(tag="data_center", body=dc_repr(req))


def list_clusters(req: Request) -> Reply:
    docs = search_filter(req, [{"id": req.engine.cluster_id, "name": "Default"}])
    return Reply(tag="clusters", body=[cluster_repr(req) for _ in docs])


def get_cluster(req: Request, cluster_id: str) -> Reply:
    if cluster_id != req.engine.cluster_id:
        raise not_found(f"cluster '{cluster_id}'")
    return Reply(tag="cluster", body=cluster_repr(req))


def _dc(req: Request, dc_id: str) -> None:
    if dc_id != req.engine.datacenter_id:
        raise not_found(f"data center '{dc_id}'")


def _attached_repr(req: Request, sd: dict) -> dict:
    body = sd_repr(req, sd)
    base = req.href("datacenters", req.engine.datacenter_id, "storagedomains", sd["id"])
    body["href"] = base
    body["actions"] = action_links(req, base, ["activate", "deactivate"])
    return body


def _attached(req: Request, dc_id: str, sd_id: str) -> dict:
    _dc(req, dc_id)
    sd = get_or_404(req, "storage_domain", sd_id, "storage domain")
    if not is_attached(sd):
        raise not_found(f"storage domain '{sd_id}' in data center '{dc_id}'")
    return sd


def list_dc_sds(req: Request, dc_id: str) -> Reply:
    _dc(req, dc_id)
    docs = search_filter(req, [sd for sd in req.engine.store.list("storage_domain")
                               if is_attached(sd)])
    return Reply(tag="storage_domains", body=[_attached_repr(req, sd) for sd in docs])


def get_dc_sd(req: Request, dc_id: str, sd_id: str) -> Reply:
    return Reply(tag="storage_domain", body=_attached_repr(req, _attached(req, dc_id, sd_id)))


def attach_sd(req: Request, dc_id: str) -> Reply:
    """POST /datacenters/{id}/storagedomains: attach (and activate) a domain."""
    engine = req.engine
    _dc(req, dc_id)
    data = req.data()
    if get_id(data, "id", what="storage domain") is None and get_str(data, "name") is None:
        raise missing("StorageDomain", "attach", "id|name")
    with engine.store.transaction():
        sd = find_storage_domain(req, data, "attach Storage Domain")
        if is_attached(sd):
            raise conflict("attach Storage Domain",
                           f"Storage Domain {sd['name']} is already attached to a data center.")
        sd.update(attached=True, status="active")
        engine.store.put("storage_domain", sd)
        domain_files.update_pool(engine.storage, sd, dc_id)
    record_job(engine, f"Attaching Storage Domain {sd['name']} to Data Center Default",
               ["Attaching domain"])
    return Reply(status=201, tag="storage_domain", body=_attached_repr(req, sd))


def _busy(engine, sd: dict) -> str | None:
    """Why the domain cannot leave service now (a disk on it is locked), or None."""
    for d in engine.store.list("disk", lambda d: d["sd_id"] == sd["id"]):
        if d["status"] == "locked":
            return f"Disk {d['name']} on it is locked (a transfer or operation runs)"
    return None


def _set_status(req: Request, dc_id: str, sd_id: str, status: str) -> Reply:
    engine = req.engine
    req.data()
    action = "activate" if status == "active" else "deactivate"
    with engine.store.transaction():
        sd = _attached(req, dc_id, sd_id)
        why = _busy(engine, sd) if status == "maintenance" else None
        if why:
            raise conflict(f"{action} Storage Domain", f"{why}.")
        sd["status"] = status
        engine.store.put("storage_domain", sd)
    return Reply(tag="action", body={"status": "complete"})


def activate_sd(req: Request, dc_id: str, sd_id: str) -> Reply:
    return _set_status(req, dc_id, sd_id, "active")


def deactivate_sd(req: Request, dc_id: str, sd_id: str) -> Reply:
    return _set_status(req, dc_id, sd_id, "maintenance")


def detach_sd(req: Request, dc_id: str, sd_id: str) -> Reply:
    """DELETE /datacenters/{id}/storagedomains/{sd}: detach a domain in maintenance.

    As in the engine, an active domain must be deactivated first; a data
    domain still holding disks stays (the local engine keeps no
    unregistered disks).
    """
    engine = req.engine
    with engine.store.transaction():
        sd = _attached(req, dc_id, sd_id)
        if sd.get("status", "active") != "maintenance":
            raise conflict("detach Storage Domain",
                           f"Storage Domain {sd['name']} is active: deactivate it (put it "
                           "in maintenance) first.")
        check_no_disks(req, sd, "detach Storage Domain")
        sd.update(attached=False, status="unattached")
        engine.store.put("storage_domain", sd)
        domain_files.update_pool(engine.storage, sd, None)
    record_job(engine, f"Detaching Storage Domain {sd['name']} from Data Center Default",
               ["Detaching domain"])
    return Reply(status=200)


def list_dc_clusters(req: Request, dc_id: str) -> Reply:
    _dc(req, dc_id)
    return list_clusters(req)


def get_dc_cluster(req: Request, dc_id: str, cluster_id: str) -> Reply:
    _dc(req, dc_id)
    return get_cluster(req, cluster_id)
