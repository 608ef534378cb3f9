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
from imagetool.server.domain.inventory import check_disks_exist, get, named
from imagetool.server.domain.ovf import BLANK, check_unowned
from imagetool.server.jobs import record_job
from imagetool.server.faults import conflict
from imagetool.server.storage import new_id, volume_row

BLANK_TEMPLATE = {"id": BLANK, "name": "Blank", "description": "Blank template", "created": 0,
                  "memory": 1 << 30, "cpus": 1, "attachments": []}


def find(engine, template_id: str) -> dict:
    """A template by id (``Blank`` included), or a 404."""
    if template_id == BLANK:
        return BLANK_TEMPLATE
    return get(engine, "template", template_id, "template")


def every(engine) -> list[dict]:
    """``Blank`` and the stored templates."""
    return [BLANK_TEMPLATE, *engine.store.list("template")]


def _from_vm(engine, made: list, vm_id: str | None, vm_name: str | None,
             name: str) -> tuple[list[dict], dict]:
    """New disks, flattened copies of the VM's (recorded in ``made``),
    attached as the VM has them."""
    vm = named(engine.store.list("vm"), vm_id, vm_name, "VM")
    disks = []
    for a in vm.get("attachments", []):
        d = engine.store.get("disk", a["disk_id"])
        if d is not None:
            disk_ops.check_usable(d, "add Template")
            disks.append((a, d))
    return [_copy_disk(engine, made, a, d, name) for a, d in disks], vm


def _copy_disk(engine, made: list, a: dict, d: dict, name: str) -> dict:
    """The template's flattened copy of disk ``d``: its attachment."""
    new_disk, new_vol = new_id(), new_id()
    disk_ops.flatten(engine, "add Template", made, disk_ops.chain(engine.store, d), d["format"],
                     d["provisioned_size"], d["sd_id"], new_disk, new_vol,
                     preallocate=not d.get("sparse", True))
    now = time.time()
    with engine.store.transaction():
        engine.store.put("volume", volume_row(new_vol, new_disk, d["sd_id"], d["format"], now))
        engine.store.put("disk", dict(d, id=new_disk, image_id=new_vol, status="ok",
                                      name=f"{d['name']}_{name}", created=now, empty=False))
    return {"disk_id": new_disk, "interface": a.get("interface", "virtio_scsi"),
            "bootable": a.get("bootable", False)}


def add(engine, *, template_id: str, name: str, description: str, memory: int | None,
        ovf: str | None, disk_ids: list[str], vm_id: str | None = None,
        vm_name: str | None = None) -> dict:
    """A template from an OVF naming existing disks (``ovf``, ``disk_ids``),
    or from a VM whose disks are copied."""
    with disk_ops.removed_on_error(engine) as made, engine.store.transaction():
        if any(t["name"] == name for t in engine.store.list("template")) or name == "Blank":
            raise conflict("add Template", f"The template name {name} is already in use.")
        if engine.store.get("template", template_id):
            raise conflict("add Template", f"A template with id {template_id} exists.")
        if ovf:
            check_disks_exist(engine, disk_ids, "Template")
            check_unowned(engine, disk_ids, "add Template")
            atts = [{"disk_id": d, "interface": "virtio_scsi", "bootable": i == 0}
                    for i, d in enumerate(disk_ids)]
            source = {}
        else:
            atts, source = _from_vm(engine, made, vm_id, vm_name, name)
        t = {"id": template_id, "name": name, "description": description or "",
             "created": time.time(), "memory": memory or source.get("memory", 1 << 30),
             "cpus": source.get("cpus", 1), "os_type": source.get("os_type", "other"),
             "attachments": atts, "ovf": ovf}
        engine.store.put("template", t)
    record_job(engine.store, f"Creating Template {name}", ["Adding template"])
    return t


def remove(engine, template_id: str) -> None:
    """Remove the template and its disks (never ``Blank``)."""
    if template_id == BLANK:
        raise conflict("remove Template", "The Blank template cannot be removed.")
    with engine.store.transaction():
        t = find(engine, template_id)
        disks = disk_ops.attached_disks(engine, t)
        for d in disks:
            disk_ops.check_usable(d, "remove Template")
        engine.store.delete("template", template_id)
        for d in disks:
            engine.storage.delete_disk(d)
    record_job(engine.store, f"Removing Template {t['name']}", ["Removing template"])
