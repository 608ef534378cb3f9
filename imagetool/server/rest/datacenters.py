"""The one data center and cluster (``Default``) the local engine has.

Enough for clients that look up the cluster to create a VM or the data
center of a storage domain (``storage.name=...`` searches), and the data
center's storage domains (oVirt REST API guide: AttachedStorageDomains,
AttachedStorageDomain): attach, activate, deactivate, detach.
"""

from __future__ import annotations

from imagetool.server.domain import storagedomains as sds
from imagetool.server.rest.codec import get_id, get_str
from imagetool.server.rest.common import (acting, action_links, deleting, ref, search_filter,
                                          showing, sub_links)
from imagetool.server.rest.router import Reply, Request, missing, not_found
from imagetool.server.rest.storagedomains import sd_repr


def dc_repr(req: Request) -> dict:
    engine = req.engine
    base = req.href("datacenters", engine.datacenter_id)
    return {"href": base, "id": engine.datacenter_id, "name": "Default",
            "description": "The local engine's data center",
            "link": sub_links(base, ["storagedomains", "clusters"]),
            "local": True, "status": "up", "storage_format": "v5",
            "version": {"major": 4, "minor": 7}}


def cluster_repr(req: Request) -> dict:
    engine = req.engine
    return {"href": req.href("clusters", engine.cluster_id), "id": engine.cluster_id,
            "name": "Default", "description": "The local engine's cluster",
            "version": {"major": 4, "minor": 7},
            "cpu": {"architecture": "x86_64", "type": "Intel Nehalem Family"},
            "data_center": ref(req, "datacenters", engine.datacenter_id)}


def _dc_doc(req: Request) -> dict:
    # Searchable fields, including the storage domains' names (storage.name=x).
    return {"id": req.engine.datacenter_id, "name": "Default", "status": "up",
            "storage.name": sds.names(req.engine)}


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
    sds.check_dc(req.engine, dc_id)
    return Reply(tag="data_center", body=dc_repr(req))


def list_clusters(req: Request) -> Reply:
    docs = search_filter(req, [{"id": req.engine.cluster_id, "name": "Default"}])
    return Reply(tag="clusters", body=[cluster_repr(req) for _ in docs])


def get_cluster(req: Request, cluster_id: str) -> Reply:
    if cluster_id != req.engine.cluster_id:
        raise not_found(f"cluster '{cluster_id}'")
    return Reply(tag="cluster", body=cluster_repr(req))


def _attached_repr(req: Request, sd: dict) -> dict:
    body = sd_repr(req, sd)
    base = req.href("datacenters", req.engine.datacenter_id, "storagedomains", sd["id"])
    body["href"] = base
    body["actions"] = action_links(base, ["activate", "deactivate"])
    return body


def list_dc_sds(req: Request, dc_id: str) -> Reply:
    docs = search_filter(req, sds.attached(req.engine, dc_id))
    return Reply(tag="storage_domains", body=[_attached_repr(req, sd) for sd in docs])


def attach_sd(req: Request, dc_id: str) -> Reply:
    sds.check_dc(req.engine, dc_id)
    data = req.data()
    sd_id = get_id(data, "id", what="storage domain")
    name = get_str(data, "name")
    if sd_id is None and name is None:
        raise missing("StorageDomain", "attach", "id|name")
    sd = sds.attach(req.engine, dc_id, sd_id, name)
    return Reply(status=201, tag="storage_domain", body=_attached_repr(req, sd))


get_dc_sd = showing("storage_domain", sds.get_attached, _attached_repr)
activate_sd = acting(sds.set_status, "active")
deactivate_sd = acting(sds.set_status, "maintenance")


detach_sd = deleting(sds.detach)


def list_dc_clusters(req: Request, dc_id: str) -> Reply:
    sds.check_dc(req.engine, dc_id)
    return list_clusters(req)


def get_dc_cluster(req: Request, dc_id: str, cluster_id: str) -> Reply:
    sds.check_dc(req.engine, dc_id)
    return get_cluster(req, cluster_id)
