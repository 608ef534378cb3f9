"""Storage domains (oVirt REST API guide: StorageDomains, StorageDomain and
their sub-services): add, list/get, remove, their disks and disk snapshots;
attaching to and detaching from the data center is in ``datacenters.py``.

A domain added through the API lives in a local directory (storage type
``localfs``, or ``nfs`` whose ``path`` is the local directory the export is
mounted on), under ``<path>/<sd-id>/`` as vdsm lays out a file domain. It is
``unattached`` until attached to the data center. The engine creates
directories and writes disks there, so only directories the operator lists
with ``imagetool serve --storage-dir`` (or below one) are accepted: none by
default, the data directory's own domains being the only storage then.
"""

from __future__ import annotations

import os
import shutil
import time

from imagetool.server.rest import disks as disks_mod
from imagetool.server.rest import domain_files
from imagetool.server.rest.codec import get_id, get_str
from imagetool.server.rest.common import (action_links, get_or_404, get_owned, get_stored,
                                          list_stored, record_job, ref, search_filter,
                                          sub_links)
from imagetool.server.rest.hosts import find_host
from imagetool.server.rest.router import Reply, Request, bad_request, conflict, missing
from imagetool.server.validate import (MAX_DESCRIPTION, allowed_directory, check_text,
                                            shown)
from imagetool.server.storage import new_id, os_reason

SD_TYPES = ("data", "export", "iso")
STORAGE_TYPES = ("localfs", "nfs")
MAX_PATH = 4096


def sd_status(sd: dict) -> str:
    """``unattached``, ``active`` or ``maintenance`` (the engine's own domains start attached)."""
    if not sd.get("attached", True):
        return "unattached"
    return sd.get("status", "active")


def is_attached(sd: dict) -> bool:
    return sd.get("attached", True)


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
        "external_status": "ok", "master": sd["type"] == "data" and is_attached(sd),
        "status": sd_status(sd), "supports_discard": False,
        "storage": {"type": sd.get("storage_type", "localfs"),
                    "address": sd.get("address"),
                    "path": sd.get("path") or req.engine.storage.images_dir(sd["id"])},
        "storage_format": "v5", "type": sd["type"],
        "warning_low_space_indicator": 10, "critical_space_action_blocker": 5,
        "wipe_after_delete": False,
        "data_centers": ([ref(req, "datacenters", req.engine.datacenter_id)]
                         if is_attached(sd) else None),
    }


def _check_path(req: Request, path: str | None) -> str:
    """The real path of a new domain's directory, or a 4xx saying what is wrong.

    It must be an existing directory the engine can write, one of the
    ``serve --storage-dir`` directories or below one, outside the engine's
    data directory and outside every other domain (removing that domain
    would take the new one with it).
    """
    if not path:
        raise missing("StorageDomain", "add", "storage.path")
    check_text(path, "storage.path", MAX_PATH)
    engine = req.engine
    real = allowed_directory(getattr(engine, "storage_dirs", []), path,
                             action="add Storage Domain", option="--storage-dir",
                             without="This engine keeps storage domains only in its data "
                                     "directory")
    inside = [os.path.realpath(engine.data_dir)]
    inside += [os.path.realpath(engine.storage.domain_dir(sd["id"]))
               for sd in engine.store.list("storage_domain")]
    for d in inside:
        if real == d or real.startswith(os.path.join(d, "")):
            raise bad_request(f"Storage path {shown(path)} is inside the engine's data "
                              "directory or another storage domain")
    if not os.access(real, os.W_OK | os.X_OK):
        raise bad_request(f"Storage path {shown(path)} is not writable by the engine")
    return real


def add_sd(req: Request) -> Reply:
    """POST /storagedomains: a new domain in a local directory, unattached."""
    engine = req.engine
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
    path = _check_path(req, get_str(data, "storage", "path"))
    sd = {"id": new_id(), "name": name, "type": sd_type, "description": description or "",
          "created": time.time(), "path": path, "storage_type": storage_type,
          "address": address, "attached": False, "status": "unattached"}
    with engine.store.transaction():
        if any(d["name"] == name for d in engine.store.list("storage_domain")):
            raise conflict("add Storage Domain", f"The storage domain name {name} is "
                                                 "already in use.")
        engine.store.put("storage_domain", sd)
        try:
            domain_files.create_domain(engine.storage, sd)
        except OSError as e:
            engine.storage.forget_domain(sd["id"])
            raise conflict("add Storage Domain",
                           f"Cannot create the domain directory: {os_reason(e)}.") from None
    record_job(engine, f"Adding Storage Domain {name}", ["Creating domain"])
    return Reply(status=201, tag="storage_domain", body=sd_repr(req, sd))


def remove_sd(req: Request, sd_id: str) -> Reply:
    """DELETE /storagedomains/{id}: only a detached domain holding no disks.

    ``format=true`` (or ``destroy=true``) deletes the domain's directory too;
    otherwise its files stay where they are, as the engine leaves them.
    """
    engine = req.engine
    with engine.store.transaction():
        sd = get_or_404(req, "storage_domain", sd_id, "storage domain")
        if is_attached(sd):
            raise conflict("remove Storage Domain",
                           f"Storage Domain {sd['name']} is attached to a data center: "
                           "detach it first.")
        check_no_disks(req, sd, "remove Storage Domain")
        root = engine.storage.domain_dir(sd_id)
        engine.store.delete("storage_domain", sd_id)
    engine.storage.forget_domain(sd_id)
    if req.flag("format") or req.flag("destroy"):
        shutil.rmtree(root, ignore_errors=True)
    record_job(engine, f"Removing Storage Domain {sd['name']}", ["Removing domain"])
    return Reply(status=200)


def check_no_disks(req: Request, sd: dict, action: str) -> None:
    """Refuse ``action`` (409) while the domain holds disks."""
    if req.engine.store.list("disk", lambda d: d["sd_id"] == sd["id"]):
        raise conflict(action, f"Storage Domain {sd['name']} holds disks: remove or move "
                               "them first.")


def list_sds(req: Request) -> Reply:
    return list_stored(req, "storage_domain", "storage_domains", sd_repr)


def get_sd(req: Request, sd_id: str) -> Reply:
    return get_stored(req, "storage_domain", sd_id, "storage domain", "storage_domain",
                      sd_repr)


def list_sd_disks(req: Request, sd_id: str) -> Reply:
    get_or_404(req, "storage_domain", sd_id, "storage domain")
    docs = req.engine.store.list("disk", lambda d: d["sd_id"] == sd_id)
    docs = search_filter(req, docs, disks_mod.SEARCH_FIELDS)
    return Reply(tag="disks", body=[disks_mod.disk_repr(req, d) for d in docs])


def get_sd_disk(req: Request, sd_id: str, disk_id: str) -> Reply:
    disk = get_owned(req, "disk", disk_id, "disk", "sd_id", sd_id)
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
    vol = get_owned(req, "volume", vol_id, "disk snapshot", "sd_id", sd_id)
    return Reply(tag="disk_snapshot",
                 body=disks_mod.snapshot_repr(req, vol, req.href("storagedomains", sd_id, "disksnapshots")))


def remove_sd_snapshot(req: Request, sd_id: str, vol_id: str) -> Reply:
    """DELETE /storagedomains/{sd}/disksnapshots/{id}: as on the disk's own path."""
    vol = get_owned(req, "volume", vol_id, "disk snapshot", "sd_id", sd_id)
    return disks_mod.remove_disk_snapshot(req, vol["disk_id"], vol_id)
