"""A VM's network interfaces (oVirt REST API guide: VmNics, VmNic): list,
add, show, update, remove. Stored inside the VM record (``vm["nics"]``),
each ``{"id", "name", "interface", "mac", "vnic_profile_id", "linked",
"plugged"}``; the VM's OVF carries them (see vmsettings.py)."""

from __future__ import annotations

from imagetool.ova.ovfvm import NIC_TYPES, check_mac
from imagetool.errors import FormatError
from imagetool.server.domain import inventory, vms
from imagetool.server.rest.codec import get_bool, get_id, get_str
from imagetool.server.rest.common import get_member, list_members, ref
from imagetool.server.rest.router import Reply, Request, bad_request, missing
from imagetool.server.validate import check_text

MAX_NIC_NAME = 50


def nic_repr(req: Request, vm: dict, nic: dict) -> dict:
    return {"href": req.href("vms", vm["id"], "nics", nic["id"]), "id": nic["id"],
            "name": nic["name"], "interface": nic["interface"],
            "mac": {"address": nic["mac"]}, "linked": nic.get("linked", True),
            "plugged": nic.get("plugged", True),
            "vnic_profile": ref(req, "vnicprofiles", nic.get("vnic_profile_id")),
            "vm": ref(req, "vms", vm["id"])}


def _fields(data: dict) -> dict:
    """The NIC fields ``data`` gives, each value checked (None: not given;
    ``vnic_profile_id`` only when ``vnic_profile`` is given, maybe as None)."""
    fields = {"name": check_text(get_str(data, "name"), "name", MAX_NIC_NAME)}
    interface = get_str(data, "interface")
    if interface is not None and interface not in NIC_TYPES.values():
        raise bad_request(f"Invalid value {interface!a} for interface: expected one of "
                          f"{', '.join(NIC_TYPES.values())}")
    fields["interface"] = interface
    mac = get_str(data, "mac", "address")
    if mac is not None:
        try:
            mac = check_mac(mac)
        except FormatError as e:
            raise bad_request(str(e)) from None
    fields["mac"] = mac
    if "vnic_profile" in data:
        fields["vnic_profile_id"] = get_id(data, "vnic_profile", "id", what="vNIC profile")
    for key in ("linked", "plugged"):
        fields[key] = get_bool(data, key)
    return fields


def list_nics(req: Request, vm_id: str) -> Reply:
    return list_members(req, inventory.get(req.engine, "vm", vm_id, "VM"), "nics", "nics", nic_repr)


def get_nic(req: Request, vm_id: str, nic_id: str) -> Reply:
    return get_member(req, inventory.get(req.engine, "vm", vm_id, "VM"), "nics", "id", nic_id,
                      "NIC", "nic", nic_repr)


def add_nic(req: Request, vm_id: str) -> Reply:
    data = req.data()
    if get_str(data, "name") is None:
        raise missing("NIC", "add", "name")
    vm, nic = vms.add_nic(req.engine, vm_id, _fields(data))
    return Reply(status=201, tag="nic", body=nic_repr(req, vm, nic))


def update_nic(req: Request, vm_id: str, nic_id: str) -> Reply:
    vm, nic = vms.update_nic(req.engine, vm_id, nic_id, _fields(req.data()))
    return Reply(tag="nic", body=nic_repr(req, vm, nic))


def remove_nic(req: Request, vm_id: str, nic_id: str) -> Reply:
    inventory.remove_member(req.engine, "vm", vm_id, "VM", "nics", nic_id, "NIC")
    return Reply(status=200)
