"""Hosts (oVirt REST API guide: Hosts, Host): the one local host, always up."""

from __future__ import annotations

from imagetool.server.rest.common import action_links, search_filter, sub_links
from imagetool.server.rest.router import Reply, Request, Router, not_found


def host_repr(req: Request) -> dict:
    """The local host in the API model's shape."""
    engine = req.engine
    base = req.href("hosts", engine.host_id)
    return {
        "href": base, "id": engine.host_id, "name": "local",
        "comment": None, "description": "imagetool local host",
        "actions": action_links(req, base, []),
        "link": sub_links(base, ["nics", "statistics", "storage", "tags"]),
        "address": engine.public_host, "status": "up", "type": "rhel",
        "external_status": "ok", "port": engine.dataplane_port,
        "protocol": "stomp", "spm": {"priority": 5, "status": "spm"},
        "summary": {"active": 0, "migrating": 0, "total": 0},
        "update_available": False,
        "version": {"full_version": "imagetool", "major": 4, "minor": 5},
        "cluster": {"href": req.href("clusters", engine.cluster_id), "id": engine.cluster_id},
    }


def _host_doc(req: Request) -> dict:
    return {"id": req.engine.host_id, "name": "local", "status": "up",
            "address": req.engine.public_host}


def list_hosts(req: Request) -> Reply:
    docs = search_filter(req, [_host_doc(req)])
    return Reply(tag="hosts", body=[host_repr(req) for _ in docs])


def get_host(req: Request, host_id: str) -> Reply:
    if host_id != req.engine.host_id:
        raise not_found(f"host '{host_id}'")
    return Reply(tag="host", body=host_repr(req))


def register(router: Router) -> None:
    """Add this module's routes."""
    router.add("GET", "/hosts", list_hosts)
    router.add("GET", "/hosts/{host_id}", get_host)
