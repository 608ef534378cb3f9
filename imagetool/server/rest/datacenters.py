"""The one data center and cluster (``Default``) the local engine has.

Read-only: enough for clients that look up the cluster to create a VM or
the data center of a storage domain (``storage.name=...`` searches).
"""

from __future__ import annotations

from imagetool.server.rest.common import search_filter, sub_links
from imagetool.server.rest.router import Reply, Request, Router, not_found


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
            "data_center": {"href": req.href("datacenters", engine.datacenter_id),
                            "id": engine.datacenter_id}}


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
    if dc_id != req.engine.datacenter_id:
        raise not_found(f"data center '{dc_id}'")
    return Reply(tag="data_center", body=dc_repr(req))


def list_clusters(req: Request) -> Reply:
    docs = search_filter(req, [{"id": req.engine.cluster_id, "name": "Default"}])
    return Reply(tag="clusters", body=[cluster_repr(req) for _ in docs])


def get_cluster(req: Request, cluster_id: str) -> Reply:
    if cluster_id != req.engine.cluster_id:
        raise not_found(f"cluster '{cluster_id}'")
    return Reply(tag="cluster", body=cluster_repr(req))


def register(router: Router) -> None:
    """Add this module's routes."""
    router.add("GET", "/datacenters", list_dcs)
    router.add("GET", "/datacenters/{dc_id}", get_dc)
    router.add("GET", "/clusters", list_clusters)
    router.add("GET", "/clusters/{cluster_id}", get_cluster)
