"""VMs (oVirt REST API guide: Vms, Vm), their disk attachments and snapshots
(Snapshots, Snapshot and its sub-services).

A VM here is an inventory record: a name, disk attachments and snapshots;
it never runs. A snapshot turns each disk's active volume into a read-only
layer and puts a new empty qcow2 layer on top; removing it merges its layer
into the one above; restoring drops the layers above it.
"""

from __future__ import annotations

import time

from imagetool.server.rest import disks as disks_mod
from imagetool.server.rest.ovf import BLANK, build_ovf, ovf_disk_ids
from imagetool.server.rest.codec import get_bool, get_id, get_int, get_list, get_obj, get_str
from imagetool.server.rest.common import (action_links, get_or_404, iso_date, record_job, ref,
                                          search_filter, sub_links)
from imagetool.server.rest.router import (Reply, Request, Router, bad_request, conflict,
                                          missing, not_found)
from imagetool.server.rest.validate import MAX_DESCRIPTION, check_text
from imagetool.server.storage import new_id


# --- representations ----------------------------------------------------------

def vm_repr(req: Request, vm: dict, all_content: bool = False) -> dict:
    """A VM in the API model's shape (OVF in initialization with all_content)."""
    engine = req.engine
    base = req.href("vms", vm["id"])
    body = {
        "href": base, "id": vm["id"], "name": vm["name"],
        "description": vm.get("description") or None,
        "actions": action_links(req, base, []),
        "link": sub_links(base, ["diskattachments", "snapshots", "nics", "permissions"]),
        "creation_time": iso_date(vm.get("created")),
        "memory": vm.get("memory", 1 << 30), "status": "down", "type": "server",
        "stateless": False, "delete_protected": False,
        "os": {"type": vm.get("os_type", "other")},
        "cpu": {"architecture": "x86_64",
                "topology": {"cores": 1, "sockets": vm.get("cpus", 1), "threads": 1}},
        "cluster": {"href": req.href("clusters", engine.cluster_id), "id": engine.cluster_id},
        "template": {"href": req.href("templates", BLANK), "id": BLANK},
        "original_template": {"href": req.href("templates", BLANK), "id": BLANK},
    }
    if all_content:
        body["initialization"] = {"configuration": {"type": "ovf", "data": build_ovf(req, vm)}}
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
        "actions": action_links(req, base, ["restore"]),
        "link": sub_links(base, ["disks", "cdroms", "nics"]),
        "date": iso_date(snap.get("date")), "persist_memorystate": False,
        "snapshot_status": snap.get("status", "ok"), "snapshot_type": snap.get("type", "regular"),
        "vm": ref(req, "vms", vm["id"]),
    }


# --- VMs -------------------------------------------------------------------------

def _find_vm(req: Request, vm_id: str) -> dict:
    return get_or_404(req, "vm", vm_id, "VM")


def _attachment_from(req: Request, data: dict, action: str) -> dict:
    """An attachment dict from a <disk_attachment>; creates an inline new disk."""
    disk_ref = get_obj(data, "disk")
    if disk_ref is None:
        raise missing("DiskAttachment", action, "disk.id")
    disk_id = get_id(disk_ref, "id", what="disk")
    if disk_id is None:
        if get_str(disk_ref, "provisioned_size") is None:
            raise missing("DiskAttachment", action, "disk.id")
        # A new disk described inline (add disk + attach in one call).
        sub = Request(req.method, req.path, req.prefix, req.query, req.headers, b"", req.fmt,
                      req.engine, req.user, (None, disk_ref))
        disk_id = disks_mod.add_disk(sub).body["id"]
    disk = get_or_404(req, "disk", disk_id, "disk")
    return {"disk_id": disk["id"], "interface": get_str(data, "interface") or "virtio_scsi",
            "bootable": bool(get_bool(data, "bootable")),
            "active": get_bool(data, "active") is not False}


def add_vm(req: Request) -> Reply:
    """POST /vms: a VM record, optionally from an OVF and with disk attachments."""
    engine = req.engine
    data = req.data()
    name = check_text(get_str(data, "name"), "name")
    description = check_text(get_str(data, "description"), "description", MAX_DESCRIPTION)
    os_type = check_text(get_str(data, "os", "type"), "os.type")
    memory = get_int(data, "memory")
    if memory is not None and memory <= 0:
        raise bad_request("VM memory must be positive")
    vm_id = get_id(data, "id", what="VM")
    ovf = get_str(data, "initialization", "configuration", "data")
    # "ova": the OVF of an OVA, whose disks are named by Disk/@ovf:diskId.
    ovf_kind = (get_str(data, "initialization", "configuration", "type") or "ovf").lower()
    if ovf and ovf_kind not in ("ovf", "ova"):
        raise bad_request(f"Unknown configuration type {ovf_kind!r} (ovf or ova)")
    attachments = [_attachment_from(req, a, "add") for a in get_list(data, "disk_attachments")]
    if ovf:
        ovf_name, disk_ids = ovf_disk_ids(ovf, ovf_kind)
        name = name or check_text(ovf_name, "OVF Name")
        missing_ids = [d for d in disk_ids if engine.store.get("disk", d) is None]
        if missing_ids:
            raise bad_request(f"Cannot add VM from OVF: disks {', '.join(missing_ids)} do not "
                              "exist; upload them first with the ids the OVF names")
        known = {a["disk_id"] for a in attachments}
        attachments += [{"disk_id": d, "interface": "virtio_scsi", "bootable": i == 0,
                         "active": True} for i, d in enumerate(disk_ids) if d not in known]
    if not name:
        raise missing("VM", "add", "name, cluster.id|name")
    if any(v["name"] == name for v in engine.store.list("vm")):
        raise conflict("add VM", f"The VM name {name} is already in use.")
    if vm_id and engine.store.get("vm", vm_id):
        raise conflict("add VM", f"A VM with id {vm_id} already exists.")
    vm = {"id": vm_id or new_id(), "name": name,
          "description": description or "", "created": time.time(),
          "memory": memory or (1 << 30),
          "os_type": os_type or "other",
          "attachments": attachments, "active_snapshot_id": new_id(), "ovf": ovf}
    engine.store.put("vm", vm)
    record_job(engine, f"Creating VM {name}", ["Adding VM"])
    return Reply(status=201, tag="vm", body=vm_repr(req, vm))


def _with_follow(req: Request, vm: dict) -> dict:
    """vm_repr plus what ``follow=disk_attachments[.disk],snapshots`` asks to embed."""
    body = vm_repr(req, vm, req.flag("all_content"))
    follow = {f.strip() for f in req.query.get("follow", "").split(",") if f.strip()}
    if follow & {"disk_attachments", "disk_attachments.disk"}:
        atts = []
        for a in vm.get("attachments", []):
            att = attachment_repr(req, vm, a)
            disk = req.engine.store.get("disk", a["disk_id"])
            if "disk_attachments.disk" in follow and disk is not None:
                att["disk"] = disks_mod.disk_repr(req, disk)
            atts.append(att)
        body["disk_attachments"] = atts
    if "snapshots" in follow:
        body["snapshots"] = [snapshot_repr(req, vm, s) for s in _snapshots(req, vm)]
    return body


def list_vms(req: Request) -> Reply:
    docs = search_filter(req, req.engine.store.list("vm"))
    return Reply(tag="vms", body=[_with_follow(req, v) for v in docs])


def get_vm(req: Request, vm_id: str) -> Reply:
    return Reply(tag="vm", body=_with_follow(req, _find_vm(req, vm_id)))


def remove_vm(req: Request, vm_id: str) -> Reply:
    """DELETE /vms/{id}: removes its disks too unless ``detach_only=true``."""
    engine = req.engine
    with engine.store.transaction():
        vm = _find_vm(req, vm_id)
        disks = [engine.store.get("disk", a["disk_id"]) for a in vm.get("attachments", [])]
        disks = [d for d in disks if d is not None]
        for d in disks:
            if d["status"] == "locked":
                disks_mod.check_usable(d, "remove VM")
        for snap in engine.store.list("snapshot", lambda s: s["vm_id"] == vm_id):
            engine.store.delete("snapshot", snap["id"])
        engine.store.delete("vm", vm_id)
        if not req.flag("detach_only"):
            for d in disks:
                disks_mod.delete_disk_files(engine, d)
    record_job(engine, f"Removing VM {vm['name']}", ["Removing VM"])
    return Reply(status=200)


# --- disk attachments -----------------------------------------------------------

def list_attachments(req: Request, vm_id: str) -> Reply:
    vm = _find_vm(req, vm_id)
    return Reply(tag="disk_attachments",
                 body=[attachment_repr(req, vm, a) for a in vm.get("attachments", [])])


def get_attachment(req: Request, vm_id: str, disk_id: str) -> Reply:
    vm = _find_vm(req, vm_id)
    for a in vm.get("attachments", []):
        if a["disk_id"] == disk_id:
            return Reply(tag="disk_attachment", body=attachment_repr(req, vm, a))
    raise not_found(f"disk attachment '{disk_id}'")


def add_attachment(req: Request, vm_id: str) -> Reply:
    engine = req.engine
    with engine.store.transaction():
        vm = _find_vm(req, vm_id)
        att = _attachment_from(req, req.data(), "add")
        if any(a["disk_id"] == att["disk_id"] for a in vm["attachments"]):
            raise conflict("attach Virtual Disk", "The disk is already attached to the VM.")
        for other in engine.store.list("vm"):
            if any(a["disk_id"] == att["disk_id"] for a in other.get("attachments", [])):
                raise conflict("attach Virtual Disk",
                               f"The disk is already attached to VM {other['name']}.")
        vm["attachments"].append(att)
        engine.store.put("vm", vm)
    return Reply(status=201, tag="disk_attachment", body=attachment_repr(req, vm, att))


def remove_attachment(req: Request, vm_id: str, disk_id: str) -> Reply:
    engine = req.engine
    with engine.store.transaction():
        vm = _find_vm(req, vm_id)
        left = [a for a in vm["attachments"] if a["disk_id"] != disk_id]
        if len(left) == len(vm["attachments"]):
            raise not_found(f"disk attachment '{disk_id}'")
        vm["attachments"] = left
        engine.store.put("vm", vm)
    return Reply(status=200)


# --- snapshots --------------------------------------------------------------------

def _active_snapshot(vm: dict) -> dict:
    return {"id": vm["active_snapshot_id"], "description": "Active VM", "type": "active",
            "status": "ok", "date": vm.get("created"), "volumes": {}}


def _snapshots(req: Request, vm: dict) -> list[dict]:
    snaps = req.engine.store.list("snapshot", lambda s: s["vm_id"] == vm["id"])
    return [_active_snapshot(vm), *snaps]


def _find_snapshot(req: Request, vm: dict, snap_id: str) -> dict:
    for s in _snapshots(req, vm):
        if s["id"] == snap_id:
            return s
    raise not_found(f"snapshot '{snap_id}'")


def list_snapshots(req: Request, vm_id: str) -> Reply:
    vm = _find_vm(req, vm_id)
    return Reply(tag="snapshots", body=[snapshot_repr(req, vm, s) for s in _snapshots(req, vm)])


def get_snapshot(req: Request, vm_id: str, snap_id: str) -> Reply:
    vm = _find_vm(req, vm_id)
    return Reply(tag="snapshot", body=snapshot_repr(req, vm, _find_snapshot(req, vm, snap_id)))


def add_snapshot(req: Request, vm_id: str) -> Reply:
    """POST /vms/{id}/snapshots: freeze each disk's active layer, add a new one."""
    engine = req.engine
    data = req.data()
    description = check_text(get_str(data, "description"), "description", MAX_DESCRIPTION)
    if description is None:
        raise missing("Snapshot", "add", "description")
    with engine.store.transaction():
        vm = _find_vm(req, vm_id)
        wanted = [get_id(a, "disk", "id", what="disk") or get_id(a, "id", what="disk")
                  for a in get_list(data, "disk_attachments")]
        disk_ids = [a["disk_id"] for a in vm["attachments"]
                    if not wanted or a["disk_id"] in wanted]
        disks = [get_or_404(req, "disk", d, "disk") for d in disk_ids]
        for d in disks:
            disks_mod.check_usable(d, "create Snapshot")
        snap = {"id": new_id(), "vm_id": vm_id, "description": description, "type": "regular",
                "status": "ok", "date": time.time(), "volumes": {}}
        for d in disks:
            old = d["image_id"]
            new = new_id()
            engine.storage.create_volume(d["sd_id"], d["id"], new, "cow", d["provisioned_size"],
                                         parent_id=old)
            engine.store.put("volume", {"id": new, "disk_id": d["id"], "sd_id": d["sd_id"],
                                        "format": "cow", "parent_id": old, "snapshot_id": None,
                                        "created": snap["date"]})
            engine.store.update("volume", old, snapshot_id=snap["id"])
            engine.store.update("disk", d["id"], image_id=new, format="cow")
            snap["volumes"][d["id"]] = old
        engine.store.put("snapshot", snap)
    record_job(engine, f"Creating VM Snapshot {description} for VM {vm['name']}",
               [f"Creating snapshot of disk {d['name']}" for d in disks])
    return Reply(status=201, tag="snapshot", body=snapshot_repr(req, vm, snap))


def remove_snapshot(req: Request, vm_id: str, snap_id: str) -> Reply:
    """DELETE a snapshot: merge each of its layers into the layer above."""
    engine = req.engine
    store = engine.store
    with store.transaction():
        vm = _find_vm(req, vm_id)
        snap = _find_snapshot(req, vm, snap_id)
        if snap["type"] == "active":
            raise conflict("remove Snapshot", "The active VM snapshot cannot be removed.")
        disks = [store.get("disk", d) for d in snap["volumes"]]
        for d in disks:
            if d is not None:
                disks_mod.check_usable(d, "remove Snapshot")
        for d in disks:
            if d is not None:
                disks_mod.merge_down(engine, d, snap["volumes"][d["id"]])
        store.delete("snapshot", snap_id)
    record_job(engine, f"Removing Snapshot {snap['description']} of VM {vm['name']}",
               ["Merging layers"])
    return Reply(status=200)


def restore_snapshot(req: Request, vm_id: str, snap_id: str) -> Reply:
    """POST .../restore: drop every layer above the snapshot's, add a fresh top."""
    engine = req.engine
    store = engine.store
    st = engine.storage
    with store.transaction():
        vm = _find_vm(req, vm_id)
        snap = _find_snapshot(req, vm, snap_id)
        if snap["type"] == "active":
            raise conflict("restore Snapshot", "The active VM snapshot cannot be restored.")
        dropped_snaps: set[str] = set()
        for disk_id, base_vol in snap["volumes"].items():
            d = store.get("disk", disk_id)
            if d is None:
                continue
            disks_mod.check_usable(d, "restore Snapshot")
            for v in reversed(disks_mod.chain(store, d)):
                if v["id"] == base_vol:
                    break
                if v.get("snapshot_id"):
                    dropped_snaps.add(v["snapshot_id"])
                store.delete("volume", v["id"])
                st.remove_volume(d["sd_id"], disk_id, v["id"])
            new = new_id()
            st.create_volume(d["sd_id"], disk_id, new, "cow", d["provisioned_size"],
                             parent_id=base_vol)
            store.put("volume", {"id": new, "disk_id": disk_id, "sd_id": d["sd_id"],
                                 "format": "cow", "parent_id": base_vol, "snapshot_id": None,
                                 "created": time.time()})
            store.update("disk", disk_id, image_id=new)
        for sid in dropped_snaps - {snap_id}:
            store.delete("snapshot", sid)
    record_job(engine, f"Restoring VM Snapshot {snap['description']} of VM {vm['name']}",
               ["Restoring layers"])
    return Reply(tag="action", body={"status": "complete"})


def list_snapshot_disks(req: Request, vm_id: str, snap_id: str) -> Reply:
    """The disks of a snapshot, each as it was (image_id = the snapshot's layer)."""
    vm = _find_vm(req, vm_id)
    snap = _find_snapshot(req, vm, snap_id)
    out = []
    if snap["type"] == "active":
        items = [(a["disk_id"], None) for a in vm["attachments"]]
    else:
        items = list(snap["volumes"].items())
    for disk_id, vol_id in items:
        d = req.engine.store.get("disk", disk_id)
        if d is None:
            continue
        body = disks_mod.disk_repr(req, d)
        if vol_id:
            body["image_id"] = vol_id
            body["href"] = req.href("vms", vm_id, "snapshots", snap_id, "disks", disk_id)
            body["snapshot"] = ref(req, f"vms/{vm_id}/snapshots", snap_id)
        out.append(body)
    return Reply(tag="disks", body=out)


def register(router: Router) -> None:
    """Add this module's routes."""
    router.add("GET", "/vms", list_vms)
    router.add("POST", "/vms", add_vm)
    router.add("GET", "/vms/{vm_id}", get_vm)
    router.add("DELETE", "/vms/{vm_id}", remove_vm)
    router.add("GET", "/vms/{vm_id}/diskattachments", list_attachments)
    router.add("POST", "/vms/{vm_id}/diskattachments", add_attachment)
    router.add("GET", "/vms/{vm_id}/diskattachments/{disk_id}", get_attachment)
    router.add("DELETE", "/vms/{vm_id}/diskattachments/{disk_id}", remove_attachment)
    router.add("GET", "/vms/{vm_id}/snapshots", list_snapshots)
    router.add("POST", "/vms/{vm_id}/snapshots", add_snapshot)
    router.add("GET", "/vms/{vm_id}/snapshots/{snap_id}", get_snapshot)
    router.add("DELETE", "/vms/{vm_id}/snapshots/{snap_id}", remove_snapshot)
    router.add("POST", "/vms/{vm_id}/snapshots/{snap_id}/restore", restore_snapshot)
    router.add("GET", "/vms/{vm_id}/snapshots/{snap_id}/disks", list_snapshot_disks)
