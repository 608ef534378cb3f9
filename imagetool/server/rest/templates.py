"""Templates (oVirt REST API guide: Templates, Template,
TemplateDiskAttachments); what they are and the operations are
``server/domain/templates.py``'s."""

from __future__ import annotations

from imagetool.server.domain import templates
from imagetool.server.domain.ovf import ovf_disk_ids
from imagetool.server.rest.codec import get_id, get_int, get_obj, get_str
from imagetool.server.rest.common import (action_links, configuration, deleting, iso_date, members,
                                          ref, search_filter, showing, sub_links)
from imagetool.server.rest.router import Reply, Request, bad_request, missing
from imagetool.server.storage import new_id
from imagetool.server.validate import MAX_DESCRIPTION, check_text


def template_repr(req: Request, t: dict) -> dict:
    engine = req.engine
    base = req.href("templates", t["id"])
    return {
        "href": base, "id": t["id"], "name": t["name"],
        "description": t.get("description") or None,
        "actions": action_links(base, []),
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


def list_templates(req: Request) -> Reply:
    docs = search_filter(req, templates.every(req.engine))
    return Reply(tag="templates", body=[template_repr(req, t) for t in docs])


def add_template(req: Request) -> Reply:
    data = req.data()
    name = check_text(get_str(data, "name"), "name")
    description = check_text(get_str(data, "description"), "description", MAX_DESCRIPTION)
    memory = get_int(data, "memory")
    if memory is not None and memory <= 0:
        raise bad_request("Template memory must be positive")
    vm_ref = get_obj(data, "vm")
    template_id = get_id(data, "id", what="template") or new_id()
    ovf, kind = configuration(data)
    disk_ids: list[str] = []
    if ovf:
        ovf_name, disk_ids = ovf_disk_ids(ovf, kind)
        name = name or check_text(ovf_name, "OVF Name")
    if not name or not (ovf or vm_ref):
        raise missing("Template", "add", "name, vm.id|name or initialization.configuration")
    source = {} if ovf else {"vm_id": get_id(vm_ref, "id", what="VM"),
                             "vm_name": get_str(vm_ref, "name")}
    t = templates.add(req.engine, template_id=template_id, name=name,
                      description=description or "", memory=memory, ovf=ovf,
                      disk_ids=disk_ids, **source)
    return Reply(status=201, tag="template", body=template_repr(req, t))


get_template = showing("template", templates.find, template_repr)
remove_template = deleting(templates.remove)


list_attachments, get_attachment = members(lambda req, id: templates.find(req.engine, id),
                                           "attachments", "disk_id", "disk attachment",
                                           "disk_attachment", attachment_repr)
