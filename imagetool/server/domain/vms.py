"""VMs (oVirt REST API guide: Vms, Vm, DiskAttachments, VmNics).

A VM here is an inventory record: a name, settings, disk attachments,
NICs and snapshots (``snapshots.py``); it never runs. The disks a new VM
gets must be no other VM's or template's: removing it removes them.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from imagetool.ova.ovfvm import OvfVm
from imagetool.server.domain import disks as disk_ops
from imagetool.server.domain import networks, vmsettings
from imagetool.server.domain.inventory import get, member
from imagetool.server.domain.ovf import check_unowned
from imagetool.server.jobs import record_job
from imagetool.server.faults import bad_request, conflict, not_found
from imagetool.server.storage import new_id


def check_name_free(engine, name: str, action: str) -> None:
    if any(v["name"] == name for v in engine.store.list("vm")):
        raise conflict(action, f"The VM name {name} is already in use.")


def add(engine, *, vm_id: str | None, name: str, attachments: list[dict],
        ovf: str | None, settings: OvfVm | None, given: OvfVm) -> dict:
    """Store a new VM with ``settings`` (an OVF's, or None) and the request
    body's ``given`` over them; the job names what the OVF said that is
    not kept."""
    check_name_free(engine, name, "add VM")
    if vm_id and engine.store.get("vm", vm_id):
        raise conflict("add VM", f"A VM with id {vm_id} already exists.")
    vm = {"id": vm_id or new_id(), "name": name,
          "description": "", "created": time.time(),
          "memory": vmsettings.DEFAULT_MEMORY, "os_type": "other",
          "attachments": attachments, "active_snapshot_id": new_id(), "ovf": ovf}
    with engine.store.transaction():
        # One transaction: a refusal also undoes the networks the NICs created.
        merged = vmsettings.merge(settings, given) if settings is not None else given
        notes = [f"Not kept from the OVF: {n}" for n in vmsettings.apply(engine, vm, merged)]
        vmsettings.check_memory(vm)
        # The disks it attaches must be no VM's or template's (checked in
        # the same transaction, so two VMs cannot both take a disk).
        check_unowned(engine, [a["disk_id"] for a in vm["attachments"]], "add VM")
        engine.store.put("vm", vm)
    record_job(engine.store, f"Creating VM {name}", ["Adding VM", *notes])
    return vm


def update(engine, vm_id: str, name: str | None, given: OvfVm) -> dict:
    """Rename the VM and apply the settings ``given`` sets."""
    with engine.store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        if name is not None and name != vm["name"]:
            check_name_free(engine, name, "update VM")
            vm["name"] = name
        if given.sockets or given.cores or given.threads:
            cpu = vmsettings.cpu_of(vm)
            for key in ("sockets", "cores", "threads"):
                setattr(given, key, getattr(given, key) or cpu[key])
        vmsettings.apply(engine, vm, given)
        vmsettings.check_memory(vm)
        engine.store.put("vm", vm)
    return vm


def remove(engine, vm_id: str, detach_only: bool) -> None:
    """Remove the VM and its snapshots, and its disks unless ``detach_only``."""
    with engine.store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        disks = disk_ops.attached_disks(engine, vm)
        disk_ops.check_not_backed_up(engine, "remove VM", vm=vm)
        for d in disks:
            if d["status"] == "locked":
                disk_ops.check_usable(d, "remove VM")
            disk_ops.check_not_backed_up(engine, "remove VM", disk=d)
        for snap in engine.store.list("snapshot", lambda s: s["vm_id"] == vm_id):
            engine.store.delete("snapshot", snap["id"])
        engine.store.delete("vm", vm_id)
        if not detach_only:
            for d in disks:
                engine.storage.delete_disk(d)
    record_job(engine.store, f"Removing VM {vm['name']}", ["Removing VM"])


# --- disk attachments -----------------------------------------------------------

def attach(engine, vm_id: str, make: Callable[[], dict]) -> tuple[dict, dict]:
    """Attach the disk of the attachment ``make`` gives (it may create the
    disk: it runs in the same transaction, once the VM is found): (the VM,
    the attachment)."""
    with engine.store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        att = make()
        if any(a["disk_id"] == att["disk_id"] for a in vm["attachments"]):
            raise conflict("attach Virtual Disk", "The disk is already attached to the VM.")
        for other in engine.store.list("vm"):
            if any(a["disk_id"] == att["disk_id"] for a in other.get("attachments", [])):
                raise conflict("attach Virtual Disk",
                               f"The disk is already attached to VM {other['name']}.")
        vm["attachments"].append(att)
        engine.store.put("vm", vm)
    return vm, att


def update_attachment(engine, vm_id: str, disk_id: str, flags: dict[str, Any],
                      change_disk: Callable[[], Any] | None = None) -> tuple[dict, dict]:
    """Set the attachment's ``flags`` (active, bootable, interface; None
    ones stay) after ``change_disk`` changed the disk itself, in one
    transaction: (the VM, the attachment)."""
    with engine.store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        att = member(vm, "attachments", "disk_id", disk_id, "disk attachment")
        if change_disk is not None:
            change_disk()
        att.update({k: v for k, v in flags.items() if v is not None})
        engine.store.put("vm", vm)
    return vm, att


def detach(engine, vm_id: str, disk_id: str) -> None:
    """Detach a disk (it stays), unless a backup holds it."""
    with engine.store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        left = [a for a in vm["attachments"] if a["disk_id"] != disk_id]
        if len(left) == len(vm["attachments"]):
            raise not_found(f"disk attachment '{disk_id}'")
        disk_ops.check_not_backed_up(engine, "detach Virtual Disk",
                                     disk=engine.store.get("disk", disk_id))
        vm["attachments"] = left
        engine.store.put("vm", vm)


# --- NICs ---------------------------------------------------------------------------

def _set_nic(engine, vm: dict, nic: dict, fields: dict[str, Any]) -> dict:
    """``nic`` with the checked ``fields`` a request gives (only those present)."""
    name = fields.get("name")
    if name is not None:
        if any(n["name"] == name and n["id"] != nic.get("id") for n in vm.get("nics", [])):
            raise bad_request(f"VM {vm['name']} already has a NIC named {name}")
    if fields.get("mac") is not None:
        networks.check_mac_free(engine, fields["mac"], vm, nic.get("id"))
    profile_id = fields.get("vnic_profile_id")
    if profile_id is not None:
        get(engine, "vnic_profile", profile_id, "vNIC profile")
    nic.update({k: v for k, v in fields.items()
                if v is not None or k == "vnic_profile_id"})
    return nic


def add_nic(engine, vm_id: str, fields: dict[str, Any]) -> tuple[dict, dict]:
    """A new NIC of the VM (a MAC from the pool when none is given)."""
    with engine.store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        nic = _set_nic(engine, vm, {"id": new_id(), "interface": "virtio",
                                    "vnic_profile_id": None, "linked": True,
                                    "plugged": True}, fields)
        nic.setdefault("mac", networks.new_mac(engine))
        vm.setdefault("nics", []).append(nic)
        engine.store.put("vm", vm)
    return vm, nic


def update_nic(engine, vm_id: str, nic_id: str, fields: dict[str, Any]) -> tuple[dict, dict]:
    with engine.store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        nic = _set_nic(engine, vm, member(vm, "nics", "id", nic_id, "NIC"), fields)
        engine.store.put("vm", vm)
    return vm, nic
