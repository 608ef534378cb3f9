"""Vm ``export`` to a directory of a host, as an OVA (oVirt REST API guide:
Vm export, ``host``/``directory``/``filename``); the export itself is
``server/domain/ova_export.py``'s."""

from __future__ import annotations

from imagetool.server.domain import ova_export
from imagetool.server.rest.codec import get_obj, get_str
from imagetool.server.rest.common import ref
from imagetool.server.rest.hosts import find_host
from imagetool.server.rest.router import Reply, Request, missing
from imagetool.server.validate import MAX_PATH, check_text


def export_to_path(req: Request, vm_id: str, data: dict) -> Reply:
    """POST /vms/{id}/export with ``host``, ``directory`` (and ``filename``)."""
    host = get_obj(data, "host") or {}
    if not (get_str(host, "id") or get_str(host, "name")):
        raise missing("Action", "exportToPathOnHost", "host.id|name")
    find_host(req, get_str(host, "id"), get_str(host, "name"))
    directory = check_text(get_str(data, "directory"), "directory", MAX_PATH)
    filename = check_text(get_str(data, "filename"), "filename")
    if directory is None:
        raise missing("Action", "exportToPathOnHost", "directory")
    if len(directory) > 1 and directory.endswith("/"):
        directory = directory.rstrip("/") or "/"
    job = ova_export.start(req.engine, vm_id, directory, filename)
    return Reply(tag="action", body={"status": "complete",
                                     "job": ref(req, "jobs", job["id"])})
