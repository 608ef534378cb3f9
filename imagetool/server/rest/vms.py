"""VMs (oVirt REST API guide: Vms, Vm), their disk attachments and their
network interfaces (VmNics, VmNic); the operations are
``server/domain/vms.py``'s, snapshots are ``snapshots.py``'s here and there."""

from __future__ import annotations

from imagetool.errors import FormatError
from imagetool.ova.ovfvm import NIC_TYPES, check_mac
from imagetool.server.domain import inventory, snapshots, vms
from imagetool.server.domain.ovf import BLANK, build_ovf, ovf_disk_ids
from imagetool.server.domain import vmsettings as vm_settings
from imagetool.server.rest import disks as disks_mod
from imagetool.server.rest import vmsettings
from imagetool.server.rest.codec import get_bool, get_id, get_list, get_obj, get_str
from imagetool.server.rest.common import (action_links, configuration, deleting, iso_date, members,
                                          ref, stored, sub_links)
from imagetool.server.rest.router import Reply, Request, bad_request, missing, not_found
from imagetool.server.validate import check_text

INTERFACES = ("ide", "sata", "spapr_vscsi", "virtio", "virtio_scsi")
MAX_NIC_NAME = 50


# --- representations ----------------------------------------------------------

def vm_repr(req: Request, vm: dict, all_content: bool = False) -> dict:
    """A VM in the API model's shape (OVF in initialization with all_content)."""
    engine = req.engine
    base = req.href("vms", vm["id"])
    body = {
        "href": base, "id": vm["id"], "name": vm["name"],
        "description": vm.get("description") or None,
        "actions": action_links(base, ["export", "previewsnapshot", "commitsnapshot",
                                       "undosnapshot"]),
        "link": sub_links(base, ["diskattachments", "snapshots", "nics", "permissions"]),
        "creation_time": iso_date(vm.get("created")),
        "status": "down", "type": "server",
        "stateless": False, "delete_protected": False,
        **vmsettings.vm_fields(vm),
        "cluster": {"href": req.href("clusters", engine.cluster_id), "id": engine.cluster_id},
        "template": {"href": req.href("templates", BLANK), "id": BLANK},
        "original_template": {"href": req.href("templates", BLANK), "id": BLANK},
    }
    if all_content:
        body["initialization"] = {"configuration": {"type": "ovf", "data": build_ovf(req.engine, vm)}}
    return body


def attachment_repr(req: Request, vm: dict, att: dict) -> dict:
    """A disk attachment (id = disk id, as the engine does)."""
    return {
        "href": req.href("vms", vm["id"], "diskattachments", att["disk_id"]),
        "id": att["disk_id"], "active": att.get("active", True),
        "bootable": att.get("bootable", False), "interface": att.get("interface", "virtio_scsi"),
        "logical_name": None, "pass_discard": False, "read_only": False,
        "uses_scsi_reservation": False,
        "disk": ref(req, "disks", att["disk_id"]), "vm": ref(req, "vms", vm["id"]),
    }


def snapshot_repr(req: Request, vm: dict, snap: dict) -> dict:
    """A VM snapshot; the active state is the virtual ``Active VM`` snapshot."""
    base = req.href("vms", vm["id"], "snapshots", snap["id"])
    return {
        "href": base, "id": snap["id"], "description": snap["description"],
        "actions": action_links(base, ["restore"]),
        "link": sub_links(base, ["disks", "cdroms", "nics"]),
        "date": iso_date(snap.get("date")), "persist_memorystate": False,
        "snapshot_status": snap.get("status", "ok"), "snapshot_type": snap.get("type", "regular"),
        "vm": ref(req, "vms", vm["id"]),
    }


# --- VMs -------------------------------------------------------------------------

def _interface(data: dict, choices=INTERFACES) -> str | None:
    """The ``interface`` of a disk attachment (or NIC) if given: one of
    ``choices``, else 400."""
    interface = get_str(data, "interface")
    if interface is not None and interface not in choices:
        raise bad_request(f"Invalid value {interface!a} for interface: expected one of "
                          f"{', '.join(choices)}")
    return interface


def _sub_request(req: Request, method: str, body: dict) -> Request:
    """The request a part of this one's body makes (an inline disk)."""
    return Request(method, req.path, req.prefix, req.query, req.headers, b"", req.fmt,
                   req.engine, req.user, (None, body))


def _attachment_from(req: Request, data: dict, action: str) -> dict:
    """An attachment dict from a <disk_attachment>; creates an inline new disk."""
    interface = _interface(data) or "virtio_scsi"     # checked before a disk is made
    disk_ref = get_obj(data, "disk")
    if disk_ref is None:
        raise missing("DiskAttachment", action, "disk.id")
    disk_id = get_id(disk_ref, "id", what="disk")
    if disk_id is None:
        if get_str(disk_ref, "provisioned_size") is None:
            raise missing("DiskAttachment", action, "disk.id")
        # A new disk described inline (add disk + attach in one call).
        disk_id = disks_mod.add_disk(_sub_request(req, req.method, disk_ref)).body["id"]
    disk = inventory.get(req.engine, "disk", disk_id, "disk")
    return {"disk_id": disk["id"], "interface": interface,
            "bootable": bool(get_bool(data, "bootable")),
            "active": get_bool(data, "active") is not False}


def add_vm(req: Request) -> Reply:
    """POST /vms: a VM record, optionally from an OVF and with disk attachments."""
    data = req.data()
    name = check_text(get_str(data, "name"), "name")
    given = vmsettings.from_body(data)
    vm_id = get_id(data, "id", what="VM")
    check_cluster(req, get_obj(data, "cluster"))
    ovf, ovf_kind = configuration(data)
    snap_refs = get_list(data, "snapshots")
    if snap_refs:
        snap_id = get_id(snap_refs[0], "id", what="snapshot")
        if snap_id is None:
            raise missing("VM", "add", "snapshots.snapshot.id")
        if not name:
            raise missing("VM", "add", "name, cluster.id|name")
        vm = snapshots.clone(req.engine, snap_id, name, given.description, vm_id)
        return Reply(status=201, tag="vm", body=vm_repr(req, vm))
    attachments = [_attachment_from(req, a, "add") for a in get_list(data, "disk_attachments")]
    settings = None
    if ovf:
        # The OVF's structure first (no DTD, no disk outside the DiskSection),
        # then the settings it gives.
        ovf_name, disk_ids = ovf_disk_ids(ovf, ovf_kind)
        settings = vmsettings.read_ovf(ovf, ovf_kind)
        name = name or check_text(ovf_name, "OVF Name")
        inventory.check_disks_exist(req.engine, disk_ids, "VM")
        known = {a["disk_id"] for a in attachments}
        attachments += [vm_settings.attachment_for(settings, d, i)
                        for i, d in enumerate(disk_ids) if d not in known]
    if not name:
        raise missing("VM", "add", "name, cluster.id|name")
    vm = vms.add(req.engine, vm_id=vm_id, name=name, attachments=attachments, ovf=ovf,
                 settings=settings, given=given)
    return Reply(status=201, tag="vm", body=vm_repr(req, vm))


def update_vm(req: Request, vm_id: str) -> Reply:
    """PUT /vms/{id}: name, description, comment, memory and its policy, CPU
    topology, OS type, BIOS type, custom properties."""
    data = req.data()
    name = check_text(get_str(data, "name"), "name")
    vm = vms.update(req.engine, vm_id, name, vmsettings.from_body(data))
    return Reply(tag="vm", body=vm_repr(req, vm))


def check_cluster(req: Request, cluster: dict | None) -> None:
    """404 unless ``<cluster id|name>`` (when given) is the engine's one cluster."""
    if not cluster:
        return
    cid = get_id(cluster, "id", what="cluster")
    name = get_str(cluster, "name")
    if (cid and cid != req.engine.cluster_id) or (not cid and name and name != "Default"):
        raise not_found(f"cluster '{cid or name}'")


def _with_follow(req: Request, vm: dict) -> dict:
    """vm_repr plus what ``follow=disk_attachments[.disk],snapshots`` asks to embed."""
    body = vm_repr(req, vm, req.flag("all_content"))
    follow = {f.strip() for f in req.query.get("follow", "").split(",") if f.strip()}
    if follow & {"disk_attachments", "disk_attachments.disk"}:
        atts = []
        for a in vm.get("attachments", []):
            att = attachment_repr(req, vm, a)
            disk = inventory.find(req.engine, "disk", a["disk_id"])
            if "disk_attachments.disk" in follow and disk is not None:
                att["disk"] = disks_mod.disk_repr(req, disk)
            atts.append(att)
        body["disk_attachments"] = atts
    if "snapshots" in follow:
        body["snapshots"] = [snapshot_repr(req, vm, s) for s in snapshots.of_vm(req.engine, vm)]
    return body


list_vms, get_vm = stored("vm", "VM", "vm", _with_follow)


def remove_vm(req: Request, vm_id: str) -> Reply:
    vms.remove(req.engine, vm_id, req.flag("detach_only"))
    return Reply(status=200)


# --- disk attachments -----------------------------------------------------------

def _vm(req: Request, vm_id: str) -> dict:
    return inventory.get(req.engine, "vm", vm_id, "VM")


list_attachments, get_attachment = members(_vm, "attachments", "disk_id", "disk attachment",
                                           "disk_attachment", attachment_repr)


def add_attachment(req: Request, vm_id: str) -> Reply:
    vm, att = vms.attach(req.engine, vm_id, lambda: _attachment_from(req, req.data(), "add"))
    return Reply(status=201, tag="disk_attachment", body=attachment_repr(req, vm, att))


def update_attachment(req: Request, vm_id: str, disk_id: str) -> Reply:
    """PUT /vms/{id}/diskattachments/{disk}: active, bootable, interface, and the
    disk itself (``disk.provisioned_size`` extends it, ``disk.name`` renames it)."""
    data = req.data()
    flags = {"interface": _interface(data), "active": get_bool(data, "active"),
             "bootable": get_bool(data, "bootable")}
    disk_data = get_obj(data, "disk")
    change = (lambda: disks_mod.update_disk(_sub_request(req, "PUT", disk_data), disk_id)) \
        if disk_data else None
    vm, att = vms.update_attachment(req.engine, vm_id, disk_id, flags, change)
    return Reply(tag="disk_attachment", body=attachment_repr(req, vm, att))


remove_attachment = deleting(vms.detach)


# --- NICs ---------------------------------------------------------------------------
# Stored inside the VM record (``vm["nics"]``), each ``{"id", "name", "interface",
# "mac", "vnic_profile_id", "linked", "plugged"}``; the VM's OVF carries them.

def nic_repr(req: Request, vm: dict, nic: dict) -> dict:
    return {"href": req.href("vms", vm["id"], "nics", nic["id"]), "id": nic["id"],
            "name": nic["name"], "interface": nic["interface"],
            "mac": {"address": nic["mac"]}, "linked": nic.get("linked", True),
            "plugged": nic.get("plugged", True),
            "vnic_profile": ref(req, "vnicprofiles", nic.get("vnic_profile_id")),
            "vm": ref(req, "vms", vm["id"])}


def _nic_fields(data: dict) -> dict:
    """The NIC fields ``data`` gives, each value checked (None: not given;
    ``vnic_profile_id`` only when ``vnic_profile`` is given, maybe as None)."""
    fields = {"name": check_text(get_str(data, "name"), "name", MAX_NIC_NAME),
              "interface": _interface(data, tuple(NIC_TYPES.values()))}
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


list_nics, get_nic = members(_vm, "nics", "id", "NIC", "nic", nic_repr)


def add_nic(req: Request, vm_id: str) -> Reply:
    data = req.data()
    if get_str(data, "name") is None:
        raise missing("NIC", "add", "name")
    vm, nic = vms.add_nic(req.engine, vm_id, _nic_fields(data))
    return Reply(status=201, tag="nic", body=nic_repr(req, vm, nic))


def update_nic(req: Request, vm_id: str, nic_id: str) -> Reply:
    vm, nic = vms.update_nic(req.engine, vm_id, nic_id, _nic_fields(req.data()))
    return Reply(tag="nic", body=nic_repr(req, vm, nic))


remove_nic = deleting(lambda engine, vm_id, nic_id: inventory.remove_member(
    engine, "vm", vm_id, "VM", "nics", nic_id, "NIC"))
