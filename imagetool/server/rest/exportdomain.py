"""Export storage domains (oVirt REST API guide: Vm ``export``,
StorageDomainVms, StorageDomainVm ``import``/remove,
StorageDomainVmDiskAttachments); what an export domain holds and how a VM
goes onto it and comes back is ``server/domain/export_domain.py``'s. The
same ``export`` action with ``host``/``directory``/``filename`` writes an
OVA on the host instead (``server/domain/ova_export.py``)."""

from __future__ import annotations

from imagetool.server.domain import export_domain, ova_export
from imagetool.server.rest.codec import get_bool, get_obj, get_str
from imagetool.server.rest.common import (action_links, deleting, done, find_storage_domain,
                                          first_sd_ref, ref, sub_links)
from imagetool.server.rest.hosts import find_host
from imagetool.server.rest.router import Reply, Request, missing, not_found
from imagetool.server.rest.vms import INTERFACES, check_cluster, vm_repr
from imagetool.server.validate import MAX_PATH, check_text


def _disk_body(req: Request, sd: dict, disk_id: str, d: dict) -> dict:
    top = d["volumes"][-1]
    size, actual = export_domain.disk_sizes(req.engine, sd, disk_id, d)
    return {"href": req.href("storagedomains", sd["id"], "disks", disk_id), "id": disk_id,
            "name": d["alias"], "alias": d["alias"], "description": d["description"] or None,
            "format": top["format"], "image_id": top["id"], "provisioned_size": size,
            "actual_size": actual, "total_size": actual, "sparse": d["sparse"],
            "status": "ok", "storage_type": "image", "content_type": "data",
            "storage_domains": [ref(req, "storagedomains", sd["id"])]}


def _sd_vm_repr(req: Request, sd: dict, p: dict) -> dict:
    base = req.href("storagedomains", sd["id"], "vms", p["id"])
    return {"href": base, "id": p["id"], "name": p["name"] or p["id"],
            "description": p["description"] or None,
            "actions": action_links(base, ["import"]),
            "link": sub_links(base, ["diskattachments", "disks"]),
            "memory": p["memory"], "os": {"type": p["os_type"]}, "status": "down",
            "type": "server", "storage_domain": ref(req, "storagedomains", sd["id"])}


def _att_repr(req: Request, sd: dict, p: dict, disk_id: str, d: dict) -> dict:
    return {"href": req.href("storagedomains", sd["id"], "vms", p["id"], "diskattachments",
                             disk_id),
            "id": disk_id, "active": True, "bootable": d["bootable"],
            "interface": d["interface"] if d["interface"] in INTERFACES else "virtio_scsi",
            "pass_discard": False, "read_only": False,
            "disk": _disk_body(req, sd, disk_id, d),
            "vm": {"href": req.href("storagedomains", sd["id"], "vms", p["id"]), "id": p["id"]}}


# --- StorageDomainVms ----------------------------------------------------------

def list_sd_vms(req: Request, sd_id: str) -> Reply:
    """The VMs on an export domain (a data domain has no unregistered VMs here)."""
    sd = export_domain.domain(req.engine, sd_id, "list VMs")
    vms = export_domain.exported(req.engine, sd) if sd["type"] == "export" else []
    return Reply(tag="vms", body=[_sd_vm_repr(req, sd, p) for p in vms])


def get_sd_vm(req: Request, sd_id: str, vm_id: str) -> Reply:
    sd, p = export_domain.sd_vm(req.engine, sd_id, vm_id, "get VM")
    return Reply(tag="vm", body=_sd_vm_repr(req, sd, p))


def list_sd_vm_attachments(req: Request, sd_id: str, vm_id: str) -> Reply:
    sd, p = export_domain.sd_vm(req.engine, sd_id, vm_id, "list disk attachments")
    return Reply(tag="disk_attachments",
                 body=[_att_repr(req, sd, p, k, d) for k, d in p["disks"].items()])


def get_sd_vm_attachment(req: Request, sd_id: str, vm_id: str, disk_id: str) -> Reply:
    sd, p = export_domain.sd_vm(req.engine, sd_id, vm_id, "get disk attachment")
    if disk_id not in p["disks"]:
        raise not_found(f"disk attachment '{disk_id}'")
    return Reply(tag="disk_attachment", body=_att_repr(req, sd, p, disk_id,
                                                       p["disks"][disk_id]))


remove_sd_vm = deleting(export_domain.remove_vm)


def export_vm(req: Request, vm_id: str) -> Reply:
    """POST /vms/{id}/export: the VM's disks and OVF onto an export domain
    (with ``host``/``directory`` instead: an OVA on the host, export_to_path);
    ``discard_snapshots`` collapses each chain, ``exclusive`` replaces the
    same VM on the domain."""
    data = req.data()
    sd_ref = first_sd_ref(data)
    if sd_ref is None and ("directory" in data or "host" in data):
        # The same action with host/directory/filename: an OVA on the host.
        return export_to_path(req, vm_id, data)
    if sd_ref is None:
        raise missing("Action", "export", "storageDomain.id|name")
    sd = find_storage_domain(req, sd_ref, "export VM")
    export_domain.export_vm(req.engine, vm_id, sd, exclusive=bool(get_bool(data, "exclusive")),
                            discard=bool(get_bool(data, "discard_snapshots")))
    return done()


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
    return done(job=ref(req, "jobs", job["id"]))


def import_vm(req: Request, sd_id: str, vm_id: str) -> Reply:
    """POST /storagedomains/{export}/vms/{vm}/import: the VM into a data domain
    (``clone``, ``vm.name``, ``collapse_snapshots`` as a query parameter, as
    the engine reads it, or in the body)."""
    data = req.data()
    src_sd, p = export_domain.sd_vm(req.engine, sd_id, vm_id, "import VM")
    dst_ref = first_sd_ref(data)
    if dst_ref is None:
        raise missing("Action", "import", "storageDomain.id|name")
    dst_sd = find_storage_domain(req, dst_ref, "import VM")
    export_domain.check_import_target(dst_sd)
    check_cluster(req, get_obj(data, "cluster"))
    clone = bool(get_bool(data, "clone"))
    collapse = req.flag("collapse_snapshots") or bool(get_bool(data, "collapse_snapshots"))
    name = check_text(get_str(data, "vm", "name"), "vm.name") or p["name"] or vm_id
    vm = export_domain.import_vm(req.engine, src_sd, p, dst_sd, clone=clone, collapse=collapse,
                                 name=name)
    return done(vm=vm_repr(req, vm))
