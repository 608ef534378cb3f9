"""Storage domains (oVirt REST API guide: StorageDomains, StorageDomain):
adding one in a local directory, removing it, what it holds; attaching to
and detaching from the data center is ``datacenters.py``'s.

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

from imagetool.server import storage_files
from imagetool.server.domain.inventory import get, named
from imagetool.server.jobs import record_job
from imagetool.server.faults import bad_request, conflict, not_found
from imagetool.server.files import os_reason
from imagetool.server.storage import new_id
from imagetool.server.validate import allowed_directory, shown


def status(sd: dict) -> str:
    """``unattached``, ``active`` or ``maintenance`` (the engine's own domains start attached)."""
    if not sd.get("attached", True):
        return "unattached"
    return sd.get("status", "active")


def is_attached(sd: dict) -> bool:
    return sd.get("attached", True)


def disks_of(engine, sd_id: str) -> list[dict]:
    return engine.store.list("disk", lambda d: d["sd_id"] == sd_id)


def volumes_of(engine, sd_id: str) -> list[dict]:
    """The volumes on the domain (its disk snapshots)."""
    return engine.store.list("volume", lambda v: v["sd_id"] == sd_id)


def path(engine, sd: dict) -> str:
    """The directory the domain was added in, or where the engine keeps it."""
    return sd.get("path") or engine.storage.images_dir(sd["id"])


def space(engine, sd: dict) -> tuple[int, int, int]:
    """(available, used, committed) bytes: committed is the disks' provisioned sizes."""
    available, used = engine.storage.space(sd["id"])
    return available, used, sum(d["provisioned_size"] for d in disks_of(engine, sd["id"]))


def check_path(engine, path: str) -> str:
    """The real path of a new domain's directory, or a 4xx saying what is wrong.

    It must be an existing directory the engine can write, one of the
    ``serve --storage-dir`` directories or below one, outside the engine's
    data directory and outside every other domain (removing that domain
    would take the new one with it).
    """
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


def add(engine, *, name: str, sd_type: str, storage_type: str, description: str,
        address: str | None, path: str) -> dict:
    """A new domain in directory ``path`` (checked by ``check_path``), unattached."""
    sd = {"id": new_id(), "name": name, "type": sd_type, "description": description,
          "created": time.time(), "path": path, "storage_type": storage_type,
          "address": address, "attached": False, "status": "unattached"}
    with engine.store.transaction():
        if any(d["name"] == name for d in engine.store.list("storage_domain")):
            raise conflict("add Storage Domain", f"The storage domain name {name} is "
                                                 "already in use.")
        engine.store.put("storage_domain", sd)
        try:
            storage_files.create_domain(engine.storage, sd)
        except OSError as e:
            engine.storage.forget_domain(sd["id"])
            raise conflict("add Storage Domain",
                           f"Cannot create the domain directory: {os_reason(e)}.") from None
    record_job(engine.store, f"Adding Storage Domain {name}", ["Creating domain"])
    return sd


def remove(engine, sd_id: str, destroy: bool) -> None:
    """Remove a detached domain holding no disks; ``destroy`` deletes its
    directory too (otherwise its files stay where they are, as the engine
    leaves them)."""
    with engine.store.transaction():
        sd = get(engine, "storage_domain", sd_id, "storage domain")
        if is_attached(sd):
            raise conflict("remove Storage Domain",
                           f"Storage Domain {sd['name']} is attached to a data center: "
                           "detach it first.")
        check_no_disks(engine, sd, "remove Storage Domain")
        root = engine.storage.domain_dir(sd_id)
        engine.store.delete("storage_domain", sd_id)
    engine.storage.forget_domain(sd_id)
    if destroy:
        shutil.rmtree(root, ignore_errors=True)
    record_job(engine.store, f"Removing Storage Domain {sd['name']}", ["Removing domain"])


def check_no_disks(engine, sd: dict, action: str) -> None:
    """Refuse ``action`` (409) while the domain holds disks."""
    if disks_of(engine, sd["id"]):
        raise conflict(action, f"Storage Domain {sd['name']} holds disks: remove or move "
                               "them first.")


# --- the data center's domains (oVirt REST API guide: AttachedStorageDomains) --------

def check_dc(engine, dc_id: str) -> None:
    """404 unless ``dc_id`` is the engine's one data center."""
    if dc_id != engine.datacenter_id:
        raise not_found(f"data center '{dc_id}'")


def names(engine) -> list[str]:
    return [sd["name"] for sd in engine.store.list("storage_domain")]


def attached(engine, dc_id: str) -> list[dict]:
    check_dc(engine, dc_id)
    return [sd for sd in engine.store.list("storage_domain") if is_attached(sd)]


def get_attached(engine, dc_id: str, sd_id: str) -> dict:
    """An attached domain, or a 404."""
    check_dc(engine, dc_id)
    sd = get(engine, "storage_domain", sd_id, "storage domain")
    if not is_attached(sd):
        raise not_found(f"storage domain '{sd_id}' in data center '{dc_id}'")
    return sd


def attach(engine, dc_id: str, sd_id: str | None, name: str | None) -> dict:
    """Attach (and activate) the domain with that id (or name: the REST
    door required one of them)."""
    with engine.store.transaction():
        sd = named(engine.store.list("storage_domain"), sd_id, name, "storage domain")
        if is_attached(sd):
            raise conflict("attach Storage Domain",
                           f"Storage Domain {sd['name']} is already attached to a data center.")
        sd.update(attached=True, status="active")
        engine.store.put("storage_domain", sd)
        storage_files.update_pool(engine.storage, sd, dc_id)
    record_job(engine.store, f"Attaching Storage Domain {sd['name']} to Data Center Default",
               ["Attaching domain"])
    return sd


def _busy(engine, sd: dict) -> str | None:
    """Why the domain cannot leave service now (a disk on it is locked), or None."""
    for d in disks_of(engine, sd["id"]):
        if d["status"] == "locked":
            return f"Disk {d['name']} on it is locked (a transfer or operation runs)"
    return None


def set_status(engine, dc_id: str, sd_id: str, status: str) -> None:
    """Activate (``active``) or deactivate (``maintenance``) an attached domain."""
    action = "activate" if status == "active" else "deactivate"
    with engine.store.transaction():
        sd = get_attached(engine, dc_id, sd_id)
        why = _busy(engine, sd) if status == "maintenance" else None
        if why:
            raise conflict(f"{action} Storage Domain", f"{why}.")
        sd["status"] = status
        engine.store.put("storage_domain", sd)


def detach(engine, dc_id: str, sd_id: str) -> None:
    """Detach a domain in maintenance.

    As in the engine, an active domain must be deactivated first; a data
    domain still holding disks stays (the local engine keeps no
    unregistered disks).
    """
    with engine.store.transaction():
        sd = get_attached(engine, dc_id, sd_id)
        if sd.get("status", "active") != "maintenance":
            raise conflict("detach Storage Domain",
                           f"Storage Domain {sd['name']} is active: deactivate it (put it "
                           "in maintenance) first.")
        check_no_disks(engine, sd, "detach Storage Domain")
        sd.update(attached=False, status="unattached")
        engine.store.put("storage_domain", sd)
        storage_files.update_pool(engine.storage, sd, None)
    record_job(engine.store, f"Detaching Storage Domain {sd['name']} from Data Center Default",
               ["Detaching domain"])
