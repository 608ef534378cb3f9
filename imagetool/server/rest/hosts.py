"""Hosts (oVirt REST API guide: Hosts, Host): the local hosts, always up.

``serve --hosts N`` lists N hosts in the one cluster and data center; they
all serve the same storage through one data plane, so a client can spread
its transfers over hosts (an image transfer reports the host it was given)
as it would over the hosts of a real data center.
"""

from __future__ import annotations

from imagetool.server.domain import inventory
from imagetool.server.rest.common import action_links, search_filter, sub_links
from imagetool.server.rest.router import Reply, Request


def host_repr(req: Request, host: dict) -> dict:
    engine = req.engine
    base = req.href("hosts", host["id"])
    first = host["id"] == engine.host_id
    return {
        "href": base, "id": host["id"], "name": host["name"],
        "comment": None, "description": "imagetool local host",
        "actions": action_links(base, []),
        "link": sub_links(base, ["nics", "statistics", "storage", "tags"]),
        "address": engine.public_host, "status": "up", "type": "rhel",
        "external_status": "ok", "port": engine.dataplane_port,
        "protocol": "stomp",
        "spm": {"priority": 5, "status": "spm" if first else "none"},
        "summary": {"active": 0, "migrating": 0, "total": 0},
        "update_available": False,
        "cpu": {"type": {"architecture": "x86_64"}},
        "version": {"full_version": "imagetool", "major": 4, "minor": 5},
        "cluster": {"href": req.href("clusters", engine.cluster_id), "id": engine.cluster_id},
    }


def find_host(req: Request, host_id: str | None, name: str | None) -> dict:
    """The host with this id (or else this name); 404 when there is none."""
    return inventory.named(req.engine.hosts, host_id, name, "host")


def list_hosts(req: Request) -> Reply:
    # Searchable as listed: every host is up, at the engine's address.
    docs = search_filter(req, [dict(h, status="up", address=req.engine.public_host)
                               for h in req.engine.hosts])
    return Reply(tag="hosts", body=[host_repr(req, d) for d in docs])


def get_host(req: Request, host_id: str) -> Reply:
    return Reply(tag="host", body=host_repr(req, find_host(req, host_id, None)))
