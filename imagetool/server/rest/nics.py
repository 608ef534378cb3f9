"""A VM's network interfaces (oVirt REST API guide: VmNics, VmNic): list,
add, show, update, remove. Stored inside the VM record (``vm["nics"]``),
each ``{"id", "name", "interface", "mac", "vnic_profile_id", "linked",
"plugged"}``; the VM's OVF carries them (see vmsettings.py)."""

from __future__ import annotations

from imagetool.ova.ovfvm import NIC_TYPES, check_mac
from imagetool.errors import FormatError
from imagetool.server.rest import networks
from imagetool.server.rest.codec import get_bool, get_id, get_str
from imagetool.server.rest.common import (get_member, get_or_404, list_members, ref,
                                          remove_member)
from imagetool.server.rest.router import Reply, Request, bad_request, missing, not_found
from imagetool.server.rest.validate import check_text
from imagetool.server.storage import new_id

MAX_NIC_NAME = 50


def nic_repr(req: Request, vm: dict, nic: dict) -> dict:
    return {"href": req.href("vms", vm["id"], "nics", nic["id"]), "id": nic["id"],
            "name": nic["name"], "interface": nic["interface"],
            "mac": {"address": nic["mac"]}, "linked": nic.get("linked", True),
            "plugged": nic.get("plugged", True),
            "vnic_profile": ref(req, "vnicprofiles", nic.get("vnic_profile_id")),
            "vm": ref(req, "vms", vm["id"])}


def _vm(req: Request, vm_id: str) -> dict:
    return get_or_404(req, "vm", vm_id, "VM")


def _fields(req: Request, data: dict, vm: dict, nic: dict) -> dict:
    """``nic`` updated with what ``data`` gives, every value checked."""
    name = check_text(get_str(data, "name"), "name", MAX_NIC_NAME)
    if name is not None:
        if any(n["name"] == name and n["id"] != nic.get("id") for n in vm.get("nics", [])):
            raise bad_request(f"VM {vm['name']} already has a NIC named {name}")
        nic["name"] = name
    interface = get_str(data, "interface")
    if interface is not None:
        if interface not in NIC_TYPES.values():
            raise bad_request(f"Invalid value {interface!a} for interface: expected one of "
                              f"{', '.join(NIC_TYPES.values())}")
        nic["interface"] = interface
    mac = get_str(data, "mac", "address")
    if mac is not None:
        try:
            mac = check_mac(mac)
        except FormatError as e:
            raise bad_request(str(e)) from None
        networks.check_mac_free(req.engine, mac, vm, nic.get("id"))
        nic["mac"] = mac
    if "vnic_profile" in data:
        profile_id = get_id(data, "vnic_profile", "id", what="vNIC profile")
        if profile_id is not None:
            networks.find_profile(req, profile_id)
        nic["vnic_profile_id"] = profile_id
    for key in ("linked", "plugged"):
        value = get_bool(data, key)
        if value is not None:
            nic[key] = value
    return nic


def list_nics(req: Request, vm_id: str) -> Reply:
    return list_members(req, _vm(req, vm_id), "nics", "nics", nic_repr)


def get_nic(req: Request, vm_id: str, nic_id: str) -> Reply:
    return get_member(req, _vm(req, vm_id), "nics", "id", nic_id, "NIC", "nic", nic_repr)


def add_nic(req: Request, vm_id: str) -> Reply:
    engine = req.engine
    data = req.data()
    if get_str(data, "name") is None:
        raise missing("NIC", "add", "name")
    with engine.store.transaction():
        vm = _vm(req, vm_id)
        nic = _fields(req, data, vm, {"id": new_id(), "interface": "virtio",
                                      "vnic_profile_id": None, "linked": True,
                                      "plugged": True})
        nic.setdefault("mac", networks.new_mac(engine))
        vm.setdefault("nics", []).append(nic)
        engine.store.put("vm", vm)
    return Reply(status=201, tag="nic", body=nic_repr(req, vm, nic))


def update_nic(req: Request, vm_id: str, nic_id: str) -> Reply:
    engine = req.engine
    data = req.data()
    with engine.store.transaction():
        vm = _vm(req, vm_id)
        nic = next((n for n in vm.get("nics", []) if n["id"] == nic_id), None)
        if nic is None:
            raise not_found(f"NIC '{nic_id}'")
        _fields(req, data, vm, nic)
        engine.store.put("vm", vm)
    return Reply(tag="nic", body=nic_repr(req, vm, nic))


def remove_nic(req: Request, vm_id: str, nic_id: str) -> Reply:
    remove_member(req, "vm", vm_id, "VM", "nics", nic_id, "NIC")
    return Reply(status=200)
