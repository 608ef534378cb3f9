"""Templates (oVirt REST API guide: Templates, Template, TemplateDiskAttachments).

A template here is an inventory record like a VM: a name, memory, CPUs and
disk attachments. It is added from a VM (``<vm>``: each of the VM's disks
is copied, flattened, into a new disk of the template, as the engine's
AddVmTemplate does) or from an OVF configuration (``initialization.
configuration``, type ``ova`` or ``ovf``) naming disks that already exist,
as ``upload_ova_as_vm_or_template.py`` sends it. ``Blank``, the template of
every VM, is always there and cannot be removed.
"""

from __future__ import annotations

import time

from imagetool.server.domain import disks as disk_ops
from imagetool.server.rest.codec import get_id, get_int, get_obj, get_str
from imagetool.server.rest.common import (action_links, get_member, iso_date, list_members,
                                          record_job, ref, search_filter, sub_links)
from imagetool.server.domain.ovf import BLANK, check_unowned, ovf_disk_ids
from imagetool.server.rest.router import (Reply, Request, bad_request, conflict,
                                          missing, not_found)
from imagetool.server.validate import MAX_DESCRIPTION, check_text
from imagetool.server.storage import new_id, volume_row

_BLANK = {"id": BLANK, "name": "Blank", "description": "Blank template", "created": 0,
          "memory": 1 << 30, "cpus": 1, "attachments": []}


def template_repr(req: Request, t: dict) -> dict:
    engine = req.engine
    base = req.href("templates", t["id"])
    return {
        "href": base, "id": t["id"], "name": t["name"],
        "description": t.get("description") or None,
        "actions": action_links(req, base, []),
        "link": sub_links(base, ["diskattachments", "nics", "permissions", "watchdogs"]),
        "creation_time": iso_date(t.get("created")), "status": "ok", "type": "server",
        "memory": t.get("memory", 1 << 30), "stateless": False, "delete_protected": False,
        "os": {"type": t.get("os_type", "other")},
        "cpu": {"architecture": "x86_64",
                "topology": {"cores": 1, "sockets": t.get("cpus", 1), "threads": 1}},
        "cluster": {"href": req.href("clusters", engine.cluster_id), "id": engine.cluster_id},
        "version": {"version_number": 1, "version_name": "base version",
                    "base_template": ref(req, "templates", t["id"])},
    }


def attachment_repr(req: Request, t: dict, att: dict) -> dict:
    return {
        "href": req.href("templates", t["id"], "diskattachments", att["disk_id"]),
        "id": att["disk_id"], "active": True, "bootable": att.get("bootable", False),
        "interface": att.get("interface", "virtio_scsi"), "pass_discard": False,
        "read_only": False, "uses_scsi_reservation": False,
        "disk": ref(req, "disks", att["disk_id"]), "template": ref(req, "templates", t["id"]),
    }


def _find(req: Request, template_id: str) -> dict:
    if template_id == BLANK:
        return _BLANK
    t = req.engine.store.get("template", template_id)
    if t is None:
        raise not_found(f"template '{template_id}'")
    return t


def list_templates(req: Request) -> Reply:
    docs = search_filter(req, [_BLANK, *req.engine.store.list("template")])
    return Reply(tag="templates", body=[template_repr(req, t) for t in docs])


def get_template(req: Request, template_id: str) -> Reply:
    return Reply(tag="template", body=template_repr(req, _find(req, template_id)))


def _from_vm(req: Request, vm_ref: dict, template_id: str,
             name: str) -> tuple[list[dict], dict]:
    """New disks, flattened copies of the VM's, attached as the VM has them."""
    engine = req.engine
    vm_id = get_id(vm_ref, "id", what="VM")
    vm_name = get_str(vm_ref, "name")
    vm = engine.store.get("vm", vm_id) if vm_id else next(
        (v for v in engine.store.list("vm") if v["name"] == vm_name), None)
    if vm is None:
        raise not_found(f"VM '{vm_id or vm_name}'")
    disks = []
    for a in vm.get("attachments", []):
        d = engine.store.get("disk", a["disk_id"])
        if d is not None:
            disk_ops.check_usable(d, "add Template")
            disks.append((a, d))
    atts = []
    for a, d in disks:
        new_disk, new_vol = new_id(), new_id()
        engine.storage.flatten(disk_ops.chain(engine.store, d), d["format"],
                               d["provisioned_size"], d["sd_id"], new_disk, new_vol,
                               preallocate=not d.get("sparse", True))
        now = time.time()
        with engine.store.transaction():
            engine.store.put("volume", volume_row(new_vol, new_disk, d["sd_id"], d["format"], now))
            engine.store.put("disk", dict(d, id=new_disk, image_id=new_vol, status="ok",
                                          name=f"{d['name']}_{name}", created=now,
                                          empty=False))
        atts.append({"disk_id": new_disk, "interface": a.get("interface", "virtio_scsi"),
                     "bootable": a.get("bootable", False)})
    return atts, vm


def add_template(req: Request) -> Reply:
    """POST /templates: from ``<vm>`` or from an OVF configuration."""
    engine = req.engine
    data = req.data()
    name = check_text(get_str(data, "name"), "name")
    description = check_text(get_str(data, "description"), "description", MAX_DESCRIPTION)
    memory = get_int(data, "memory")
    if memory is not None and memory <= 0:
        raise bad_request("Template memory must be positive")
    ovf = get_str(data, "initialization", "configuration", "data")
    kind = (get_str(data, "initialization", "configuration", "type") or "ovf").lower()
    vm_ref = get_obj(data, "vm")
    template_id = get_id(data, "id", what="template") or new_id()
    if ovf:
        if kind not in ("ovf", "ova"):
            raise bad_request(f"Unknown configuration type {kind!r} (ovf or ova)")
        ovf_name, disk_ids = ovf_disk_ids(ovf, kind)
        name = name or check_text(ovf_name, "OVF Name")
    if not name or not (ovf or vm_ref):
        raise missing("Template", "add", "name, vm.id|name or initialization.configuration")
    with engine.store.transaction():
        if any(t["name"] == name for t in engine.store.list("template")) or name == "Blank":
            raise conflict("add Template", f"The template name {name} is already in use.")
        if engine.store.get("template", template_id):
            raise conflict("add Template", f"A template with id {template_id} exists.")
        if ovf:
            missing_ids = [d for d in disk_ids if engine.store.get("disk", d) is None]
            if missing_ids:
                raise bad_request(f"Cannot add Template from OVF: disks "
                                  f"{', '.join(missing_ids)} do not exist; upload them "
                                  "first with the ids the OVF names")
            check_unowned(engine, disk_ids, "add Template")
            atts = [{"disk_id": d, "interface": "virtio_scsi", "bootable": i == 0}
                    for i, d in enumerate(disk_ids)]
            source = {}
        else:
            atts, source = _from_vm(req, vm_ref, template_id, name)
        t = {"id": template_id, "name": name, "description": description or "",
             "created": time.time(), "memory": memory or source.get("memory", 1 << 30),
             "cpus": source.get("cpus", 1), "os_type": source.get("os_type", "other"),
             "attachments": atts, "ovf": ovf}
        engine.store.put("template", t)
    record_job(engine, f"Creating Template {name}", ["Adding template"])
    return Reply(status=201, tag="template", body=template_repr(req, t))


def remove_template(req: Request, template_id: str) -> Reply:
    """DELETE /templates/{id}: the template and its disks."""
    engine = req.engine
    if template_id == BLANK:
        raise conflict("remove Template", "The Blank template cannot be removed.")
    with engine.store.transaction():
        t = _find(req, template_id)
        disks = disk_ops.attached_disks(engine, t)
        for d in disks:
            disk_ops.check_usable(d, "remove Template")
        engine.store.delete("template", template_id)
        for d in disks:
            engine.storage.delete_disk(d)
    record_job(engine, f"Removing Template {t['name']}", ["Removing template"])
    return Reply(status=200)


def list_attachments(req: Request, template_id: str) -> Reply:
    return list_members(req, _find(req, template_id), "attachments", "disk_attachments",
                        attachment_repr)


def get_attachment(req: Request, template_id: str, disk_id: str) -> Reply:
    return get_member(req, _find(req, template_id), "attachments", "disk_id", disk_id,
                      "disk attachment", "disk_attachment", attachment_repr)
