"""VMs (oVirt REST API guide: Vms, Vm), their disk attachments and snapshots
(Snapshots, Snapshot and its sub-services).

A VM here is an inventory record: a name, disk attachments and snapshots;
it never runs. A snapshot turns each disk's active volume into a read-only
layer and puts a new empty qcow2 layer on top; removing it merges its layer
into the one above; restoring drops the layers above it.
"""

from __future__ import annotations

import time

from imagetool.server.domain import disks as disk_ops
from imagetool.server.rest import disks as disks_mod
from imagetool.server.rest import vmsettings
from imagetool.server.rest.ovf import BLANK, build_ovf, check_unowned, ovf_disk_ids
from imagetool.server.rest.codec import get_bool, get_id, get_list, get_obj, get_str
from imagetool.server.rest.common import (action_links, get_member, get_or_404, iso_date,
                                          list_members, record_job, ref, search_filter,
                                          sub_links)
from imagetool.server.rest.router import (Reply, Request, bad_request, conflict,
                                          missing, not_found)
from imagetool.server.rest.validate import MAX_DESCRIPTION, check_text
from imagetool.server.storage import new_id, volume_row

INTERFACES = ("ide", "sata", "spapr_vscsi", "virtio", "virtio_scsi")


# --- representations ----------------------------------------------------------

def vm_repr(req: Request, vm: dict, all_content: bool = False) -> dict:
    """A VM in the API model's shape (OVF in initialization with all_content)."""
    engine = req.engine
    base = req.href("vms", vm["id"])
    body = {
        "href": base, "id": vm["id"], "name": vm["name"],
        "description": vm.get("description") or None,
        "actions": action_links(req, base, ["export", "previewsnapshot", "commitsnapshot",
                                            "undosnapshot"]),
        "link": sub_links(base, ["diskattachments", "snapshots", "nics", "permissions"]),
        "creation_time": iso_date(vm.get("created")),
        "status": "down", "type": "server",
        "stateless": False, "delete_protected": False,
        **vmsettings.vm_fields(req, vm),
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


def _interface(data: dict) -> str | None:
    """The attachment's ``interface`` if given: one of INTERFACES, else 400."""
    interface = get_str(data, "interface")
    if interface is not None and interface not in INTERFACES:
        raise bad_request(f"Invalid value {interface!a} for interface: expected one of "
                          f"{', '.join(INTERFACES)}")
    return interface


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
        sub = Request(req.method, req.path, req.prefix, req.query, req.headers, b"", req.fmt,
                      req.engine, req.user, (None, disk_ref))
        disk_id = disks_mod.add_disk(sub).body["id"]
    disk = get_or_404(req, "disk", disk_id, "disk")
    return {"disk_id": disk["id"], "interface": interface,
            "bootable": bool(get_bool(data, "bootable")),
            "active": get_bool(data, "active") is not False}


def add_vm(req: Request) -> Reply:
    """POST /vms: a VM record, optionally from an OVF and with disk attachments."""
    engine = req.engine
    data = req.data()
    name = check_text(get_str(data, "name"), "name")
    given = vmsettings.from_body(data)
    description = given.description
    vm_id = get_id(data, "id", what="VM")
    check_cluster(req, get_obj(data, "cluster"))
    ovf = get_str(data, "initialization", "configuration", "data")
    # "ova": the OVF of an OVA, whose disks are named by Disk/@ovf:diskId.
    ovf_kind = (get_str(data, "initialization", "configuration", "type") or "ovf").lower()
    if ovf and ovf_kind not in ("ovf", "ova"):
        raise bad_request(f"Unknown configuration type {ovf_kind!r} (ovf or ova)")
    snap_refs = get_list(data, "snapshots")
    if snap_refs:
        return _clone_from_snapshot(req, name, description, snap_refs, vm_id)
    attachments = [_attachment_from(req, a, "add") for a in get_list(data, "disk_attachments")]
    settings = None
    if ovf:
        # The OVF's structure first (no DTD, no disk outside the DiskSection),
        # then the settings it gives.
        ovf_name, disk_ids = ovf_disk_ids(ovf, ovf_kind)
        settings = vmsettings.read_ovf(ovf, ovf_kind)
        name = name or check_text(ovf_name, "OVF Name")
        missing_ids = [d for d in disk_ids if engine.store.get("disk", d) is None]
        if missing_ids:
            raise bad_request(f"Cannot add VM from OVF: disks {', '.join(missing_ids)} do not "
                              "exist; upload them first with the ids the OVF names")
        known = {a["disk_id"] for a in attachments}
        attachments += [vmsettings.attachment_for(settings, d, i)
                        for i, d in enumerate(disk_ids) if d not in known]
    if not name:
        raise missing("VM", "add", "name, cluster.id|name")
    if any(v["name"] == name for v in engine.store.list("vm")):
        raise conflict("add VM", f"The VM name {name} is already in use.")
    if vm_id and engine.store.get("vm", vm_id):
        raise conflict("add VM", f"A VM with id {vm_id} already exists.")
    vm = {"id": vm_id or new_id(), "name": name,
          "description": "", "created": time.time(),
          "memory": vmsettings.DEFAULT_MEMORY, "os_type": "other",
          "attachments": attachments, "active_snapshot_id": new_id(), "ovf": ovf}
    with engine.store.transaction():
        # One transaction: a refusal also undoes the networks the NICs created.
        notes = _apply_settings(engine, vm, settings, given)
        _put_new_vm(engine, vm)
    record_job(engine, f"Creating VM {name}", ["Adding VM", *notes])
    return Reply(status=201, tag="vm", body=vm_repr(req, vm))


def _apply_settings(engine, vm: dict, ovf, given) -> list[str]:
    """The OVF's settings (if any) with the request body's over them, checked;
    returns the job steps naming what the OVF said that is not kept."""
    settings = vmsettings.merge(ovf, given) if ovf is not None else given
    notes = vmsettings.apply(engine, vm, settings)
    vmsettings.check_memory(vm)
    return [f"Not kept from the OVF: {n}" for n in notes]


def _put_new_vm(engine, vm: dict) -> None:
    """Store a new VM; the disks it attaches, named by its OVF or its
    ``disk_attachments``, must be no VM's or template's (checked in the same
    transaction, so two VMs cannot both take a disk)."""
    with engine.store.transaction():
        check_unowned(engine.store, [a["disk_id"] for a in vm["attachments"]], "add VM")
        engine.store.put("vm", vm)


def update_vm(req: Request, vm_id: str) -> Reply:
    """PUT /vms/{id}: name, description, comment, memory and its policy, CPU
    topology, OS type, BIOS type, custom properties."""
    engine = req.engine
    data = req.data()
    name = check_text(get_str(data, "name"), "name")
    given = vmsettings.from_body(data)
    with engine.store.transaction():
        vm = _find_vm(req, vm_id)
        if name is not None and name != vm["name"]:
            if any(v["name"] == name for v in engine.store.list("vm")):
                raise conflict("update VM", f"The VM name {name} is already in use.")
            vm["name"] = name
        if given.sockets or given.cores or given.threads:
            cpu = dict(vm.get("cpu") or {"sockets": vm.get("cpus", 1), "cores": 1,
                                         "threads": 1})
            given.sockets = given.sockets or cpu["sockets"]
            given.cores = given.cores or cpu["cores"]
            given.threads = given.threads or cpu["threads"]
        vmsettings.apply(engine, vm, given)
        vmsettings.check_memory(vm)
        engine.store.put("vm", vm)
    return Reply(tag="vm", body=vm_repr(req, vm))


def check_cluster(req: Request, cluster: dict | None) -> None:
    """404 unless ``<cluster id|name>`` (when given) is the engine's one cluster."""
    if not cluster:
        return
    cid = get_id(cluster, "id", what="cluster")
    name = get_str(cluster, "name")
    if (cid and cid != req.engine.cluster_id) or (not cid and name and name != "Default"):
        raise not_found(f"cluster '{cid or name}'")


def chain_to(store, disk: dict, vol_id: str) -> list[dict]:
    """The disk's volumes from the base up to ``vol_id`` (a snapshot's layer)."""
    vols = disk_ops.chain(store, disk)
    saved = (req_preview_saved(store, disk))
    if not any(v["id"] == vol_id for v in vols) and saved:
        vols = disk_ops.chain(store, dict(disk, image_id=saved))
    for i, v in enumerate(vols):
        if v["id"] == vol_id:
            return vols[:i + 1]
    raise ValueError(f"volume {vol_id} is not in the chain of disk {disk['id']}")


def req_preview_saved(store, disk: dict) -> str | None:
    """The active layer a preview set aside for this disk, if any."""
    for vm in store.list("vm", lambda v: bool(v.get("preview"))):
        saved = vm["preview"]["saved"].get(disk["id"])
        if saved:
            return saved
    return None


def _clone_from_snapshot(req: Request, name: str | None, description: str | None,
                         snap_refs: list, vm_id: str | None) -> Reply:
    """POST /vms with ``<snapshots><snapshot id/>``: a new VM whose disks are
    copies (flattened) of the snapshot's disks, as the engine clones a VM
    from a snapshot (oVirt REST API guide, Vms add: "clone a virtual machine
    from a snapshot")."""
    engine = req.engine
    store = engine.store
    snap_id = get_id(snap_refs[0], "id", what="snapshot")
    if snap_id is None:
        raise missing("VM", "add", "snapshots.snapshot.id")
    if not name:
        raise missing("VM", "add", "name, cluster.id|name")
    # The source disks are locked from the plan to the end of the copy: a
    # snapshot removed (its layers merged) or any other change of their
    # chains meanwhile would pull volumes from under the copy. Whatever
    # comes first wins: the other one gets a 404 (the snapshot is gone) or
    # a 409 (the disks are locked).
    with store.transaction():
        snap = store.get("snapshot", snap_id)
        if snap is None:
            raise not_found(f"snapshot '{snap_id}'")
        source = _find_vm(req, snap["vm_id"])
        if any(v["name"] == name for v in store.list("vm")):
            raise conflict("add VM", f"The VM name {name} is already in use.")
        if vm_id and store.get("vm", vm_id):
            raise conflict("add VM", f"A VM with id {vm_id} already exists.")
        disks = {d: get_or_404(req, "disk", d, "disk") for d in snap["volumes"]}
        for d in disks.values():
            disk_ops.check_usable(d, "clone VM from Snapshot")
        plan = [(d, chain_to(store, d, snap["volumes"][d["id"]])) for d in disks.values()]
        for d in disks.values():
            store.update("disk", d["id"], status="locked")
    try:
        return _copy_snapshot_disks(req, name, description, vm_id, snap, source, plan)
    finally:
        with store.transaction():
            for d in disks.values():
                if (store.get("disk", d["id"]) or {}).get("status") == "locked":
                    store.update("disk", d["id"], status="ok")


def _copy_snapshot_disks(req: Request, name: str, description: str | None,
                         vm_id: str | None, snap: dict, source: dict, plan: list) -> Reply:
    """The copy of a clone from a snapshot, its source disks locked."""
    engine = req.engine
    store, st = engine.store, engine.storage
    made: list[tuple[dict, dict, dict]] = []
    pending = None
    try:
        for d, vols in plan:
            sd = store.get("storage_domain", d["sd_id"])
            new_disk, new_vol = new_id(), new_id()
            pending = (sd["id"], new_disk)
            fmt = vols[0]["format"]
            st.flatten(vols, fmt, d["provisioned_size"], sd["id"], new_disk, new_vol,
                       preallocate=not d.get("sparse", True))
            now = time.time()
            made.append((dict(d, id=new_disk, name=f"{d['name']}_{name}"[:255], image_id=new_vol,
                              format=fmt, status="ok", created=now, empty=False),
                         volume_row(new_vol, new_disk, sd["id"], fmt, now),
                         next(a for a in source["attachments"] if a["disk_id"] == d["id"])
                         if any(a["disk_id"] == d["id"] for a in source["attachments"])
                         else {"interface": "virtio_scsi", "bootable": False, "active": True}))
            pending = None
    except BaseException:
        for disk, _, _ in made:
            st.remove_disk(disk["sd_id"], disk["id"])
        if pending is not None:
            st.remove_disk(*pending)
        raise
    vm = {"id": vm_id or new_id(), "name": name,
          "description": description or source.get("description", ""),
          "created": time.time(), **vmsettings.copied(source),
          "attachments": [dict(att, disk_id=disk["id"]) for disk, _, att in made],
          "active_snapshot_id": new_id(), "ovf": None}
    with store.transaction():
        taken = (f"The VM name {name} is already in use." if any(
            v["name"] == name for v in store.list("vm")) else
            f"A VM with id {vm_id} already exists." if vm_id and store.get("vm", vm_id)
            else None)
        if taken is None:   # else another request took the name or id meanwhile
            for disk, vol, _ in made:
                store.put("volume", vol)
                store.put("disk", disk)
            store.put("vm", vm)
    if taken is not None:
        for disk, _, _ in made:
            st.remove_disk(disk["sd_id"], disk["id"])
        raise conflict("add VM", taken)
    record_job(engine, f"Creating VM {name} from Snapshot {snap['description']}",
               [f"Copying disk {disk['name']}" for disk, _, _ in made])
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
        disks = disk_ops.attached_disks(engine, vm)
        disk_ops.check_not_backed_up(engine, "remove VM", vm=vm)
        for d in disks:
            if d["status"] == "locked":
                disk_ops.check_usable(d, "remove VM")
            disk_ops.check_not_backed_up(engine, "remove VM", disk=d)
        for snap in engine.store.list("snapshot", lambda s: s["vm_id"] == vm_id):
            engine.store.delete("snapshot", snap["id"])
        engine.store.delete("vm", vm_id)
        if not req.flag("detach_only"):
            for d in disks:
                engine.storage.delete_disk(d)
    record_job(engine, f"Removing VM {vm['name']}", ["Removing VM"])
    return Reply(status=200)


# --- disk attachments -----------------------------------------------------------

def list_attachments(req: Request, vm_id: str) -> Reply:
    return list_members(req, _find_vm(req, vm_id), "attachments", "disk_attachments",
                        attachment_repr)


def get_attachment(req: Request, vm_id: str, disk_id: str) -> Reply:
    return get_member(req, _find_vm(req, vm_id), "attachments", "disk_id", disk_id,
                      "disk attachment", "disk_attachment", attachment_repr)


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


def update_attachment(req: Request, vm_id: str, disk_id: str) -> Reply:
    """PUT /vms/{id}/diskattachments/{disk}: active, bootable, interface, and the
    disk itself (``disk.provisioned_size`` extends it, ``disk.name`` renames it)."""
    engine = req.engine
    data = req.data()
    interface = _interface(data)
    with engine.store.transaction():
        vm = _find_vm(req, vm_id)
        att = next((a for a in vm["attachments"] if a["disk_id"] == disk_id), None)
        if att is None:
            raise not_found(f"disk attachment '{disk_id}'")
        disk_data = get_obj(data, "disk")
        if disk_data:
            sub = Request("PUT", req.path, req.prefix, req.query, req.headers, b"", req.fmt,
                          engine, req.user, (None, disk_data))
            disks_mod.update_disk(sub, disk_id)
        for key in ("active", "bootable"):
            value = get_bool(data, key)
            if value is not None:
                att[key] = value
        if interface is not None:
            att["interface"] = interface
        engine.store.put("vm", vm)
    return Reply(tag="disk_attachment", body=attachment_repr(req, vm, att))


def remove_attachment(req: Request, vm_id: str, disk_id: str) -> Reply:
    engine = req.engine
    with engine.store.transaction():
        vm = _find_vm(req, vm_id)
        left = [a for a in vm["attachments"] if a["disk_id"] != disk_id]
        if len(left) == len(vm["attachments"]):
            raise not_found(f"disk attachment '{disk_id}'")
        disk_ops.check_not_backed_up(engine, "detach Virtual Disk",
                                      disk=engine.store.get("disk", disk_id))
        vm["attachments"] = left
        engine.store.put("vm", vm)
    return Reply(status=200)


# --- snapshots --------------------------------------------------------------------

def _active_snapshot(vm: dict) -> dict:
    return {"id": vm["active_snapshot_id"], "description": "Active VM", "type": "active",
            "status": "ok", "date": vm.get("created"), "volumes": {}}


def _snapshots(req: Request, vm: dict) -> list[dict]:
    snaps = req.engine.store.list("snapshot", lambda s: s["vm_id"] == vm["id"])
    preview = vm.get("preview")
    if not preview:
        return [_active_snapshot(vm), *snaps]
    for s in snaps:
        if s["id"] == preview["snapshot_id"]:
            s["status"] = "in_preview"
    before = {"id": preview["id"], "description": "Active VM before the preview",
              "type": "preview", "status": "ok", "date": preview["date"], "volumes": {}}
    return [_active_snapshot(vm), *snaps, before]


def _not_in_preview(vm: dict, action: str) -> None:
    if vm.get("preview"):
        raise conflict(action, f"VM {vm['name']} is previewing a snapshot: commit or undo "
                               "the preview first.")


def _find_snapshot(req: Request, vm: dict, snap_id: str) -> dict:
    for s in _snapshots(req, vm):
        if s["id"] == snap_id:
            return s
    raise not_found(f"snapshot '{snap_id}'")


def _past_snapshot(req: Request, vm_id: str, snap_id: str, verb: str,
                   done: str) -> tuple[dict, dict]:
    """The VM and a snapshot ``verb`` may act on: not the active one, no preview."""
    vm = _find_vm(req, vm_id)
    snap = _find_snapshot(req, vm, snap_id)
    if snap["type"] in ("active", "preview"):
        raise conflict(f"{verb} Snapshot", f"The active VM snapshot cannot be {done}.")
    _not_in_preview(vm, f"{verb} Snapshot")
    return vm, snap


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
        _not_in_preview(vm, "create Snapshot")
        wanted = [get_id(a, "disk", "id", what="disk") or get_id(a, "id", what="disk")
                  for a in get_list(data, "disk_attachments")]
        disk_ids = [a["disk_id"] for a in vm["attachments"]
                    if not wanted or a["disk_id"] in wanted]
        disks = [get_or_404(req, "disk", d, "disk") for d in disk_ids]
        for d in disks:
            disk_ops.check_usable(d, "create Snapshot")
        snap = {"id": new_id(), "vm_id": vm_id, "description": description, "type": "regular",
                "status": "ok", "date": time.time(), "volumes": {}}
        for d in disks:
            old = d["image_id"]
            new = engine.storage.add_layer(d, old, snap["date"])["id"]
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
        vm, snap = _past_snapshot(req, vm_id, snap_id, "remove", "removed")
        disks = [store.get("disk", d) for d in snap["volumes"]]
        for d in disks:
            if d is not None:
                disk_ops.check_usable(d, "remove Snapshot")
        for d in disks:
            if d is not None:
                disk_ops.merge_down(engine, d, snap["volumes"][d["id"]])
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
        vm, snap = _past_snapshot(req, vm_id, snap_id, "restore", "restored")
        dropped_snaps: set[str] = set()
        for disk_id, base_vol in snap["volumes"].items():
            d = store.get("disk", disk_id)
            if d is None:
                continue
            disk_ops.check_usable(d, "restore Snapshot")
            for v in reversed(disk_ops.chain(store, d)):
                if v["id"] == base_vol:
                    break
                if v.get("snapshot_id"):
                    dropped_snaps.add(v["snapshot_id"])
                store.delete("volume", v["id"])
                st.remove_volume(d["sd_id"], disk_id, v["id"])
            store.update("disk", disk_id, image_id=st.add_layer(d, base_vol)["id"])
        for sid in dropped_snaps - {snap_id}:
            store.delete("snapshot", sid)
    record_job(engine, f"Restoring VM Snapshot {snap['description']} of VM {vm['name']}",
               ["Restoring layers"])
    return Reply(tag="action", body={"status": "complete"})


def _snapshot_action(req: Request, action: str) -> str:
    """The ``<snapshot id>`` of a previewsnapshot action body (400 when missing)."""
    snap_id = get_id(req.data(), "snapshot", "id", what="snapshot")
    if snap_id is None:
        raise missing("Action", action, "snapshot.id")
    return snap_id


def preview_snapshot(req: Request, vm_id: str) -> Reply:
    """POST /vms/{id}/previewsnapshot: run the VM on a new layer over the snapshot.

    The active layers are set aside (the ``Active VM before the preview``
    snapshot) until ``commitsnapshot`` drops them or ``undosnapshot`` puts
    them back (oVirt REST API guide, Vm: previewsnapshot).
    """
    engine = req.engine
    store, st = engine.store, engine.storage
    snap_id = _snapshot_action(req, "previewsnapshot")
    with store.transaction():
        vm, snap = _past_snapshot(req, vm_id, snap_id, "preview", "previewed")
        disks = [store.get("disk", d) for d in snap["volumes"]]
        disks = [d for d in disks if d is not None]
        for d in disks:
            disk_ops.check_usable(d, "preview Snapshot")
        preview = {"snapshot_id": snap_id, "id": new_id(), "date": time.time(), "saved": {}}
        created = []
        try:
            for d in disks:
                layer = st.add_layer(d, snap["volumes"][d["id"]])
                created.append((d, layer["id"]))
                preview["saved"][d["id"]] = d["image_id"]
                store.update("disk", d["id"], image_id=layer["id"])
        except BaseException:
            for d, vol_id in created:
                st.remove_volume(d["sd_id"], d["id"], vol_id)
            raise
        vm["preview"] = preview
        store.put("vm", vm)
    record_job(engine, f"Previewing Snapshot {snap['description']} of VM {vm['name']}",
               ["Creating preview layers"])
    return Reply(tag="action", body={"status": "complete"})


def _end_preview(req: Request, vm_id: str, action: str, commit: bool) -> Reply:
    engine = req.engine
    store, st = engine.store, engine.storage
    req.data()
    with store.transaction():
        vm = _find_vm(req, vm_id)
        preview = vm.get("preview")
        if not preview:
            raise conflict(f"{action} Snapshot", f"VM {vm['name']} is not previewing a "
                                                 "snapshot.")
        snap = store.get("snapshot", preview["snapshot_id"]) or {"volumes": {},
                                                                 "description": "?"}
        disks = {d: store.get("disk", d) for d in preview["saved"]}
        for d in disks.values():
            if d is not None:
                disk_ops.check_usable(d, f"{action} Snapshot")
        dropped_snaps: set[str] = set()
        files = []
        for disk_id, saved in preview["saved"].items():
            d = disks[disk_id]
            if d is None:
                continue
            if commit:
                # Drop the layers above the snapshot's in the set-aside chain.
                base = snap["volumes"].get(disk_id)
                cur = store.get("volume", saved)
                while cur is not None and cur["id"] != base:
                    if cur.get("snapshot_id"):
                        dropped_snaps.add(cur["snapshot_id"])
                    store.delete("volume", cur["id"])
                    files.append((d, cur["id"]))
                    cur = store.get("volume", cur.get("parent_id") or "")
            else:
                store.delete("volume", d["image_id"])
                files.append((d, d["image_id"]))
                store.update("disk", disk_id, image_id=saved)
        for sid in dropped_snaps - {preview["snapshot_id"]}:
            store.delete("snapshot", sid)
        vm["preview"] = None
        store.put("vm", vm)
    for d, vol_id in files:
        st.remove_volume(d["sd_id"], d["id"], vol_id)
    verb = "Committing" if commit else "Undoing"
    record_job(engine, f"{verb} Snapshot {snap['description']} of VM {vm['name']}",
               ["Dropping layers"])
    return Reply(tag="action", body={"status": "complete"})


def commit_snapshot(req: Request, vm_id: str) -> Reply:
    """POST /vms/{id}/commitsnapshot: keep the previewed state for good."""
    return _end_preview(req, vm_id, "commit", commit=True)


def undo_snapshot(req: Request, vm_id: str) -> Reply:
    """POST /vms/{id}/undosnapshot: drop the preview, back to the set-aside layers."""
    return _end_preview(req, vm_id, "undo", commit=False)


def _snapshot_disk_items(req: Request, vm: dict, snap: dict) -> list[tuple[str, str | None]]:
    if snap["type"] in ("active", "preview"):
        return [(a["disk_id"], None) for a in vm["attachments"]]
    return list(snap["volumes"].items())


def _snapshot_disk_repr(req: Request, vm: dict, snap: dict, disk_id: str,
                        vol_id: str | None) -> dict | None:
    d = req.engine.store.get("disk", disk_id)
    if d is None:
        return None
    body = disks_mod.disk_repr(req, d)
    if vol_id:
        body["image_id"] = vol_id
        body["href"] = req.href("vms", vm["id"], "snapshots", snap["id"], "disks", disk_id)
        body["snapshot"] = ref(req, f"vms/{vm['id']}/snapshots", snap["id"])
    return body


def get_snapshot_disk(req: Request, vm_id: str, snap_id: str, disk_id: str) -> Reply:
    """GET /vms/{id}/snapshots/{sid}/disks/{disk}: one disk as the snapshot has it."""
    vm = _find_vm(req, vm_id)
    snap = _find_snapshot(req, vm, snap_id)
    for d, vol_id in _snapshot_disk_items(req, vm, snap):
        if d == disk_id:
            body = _snapshot_disk_repr(req, vm, snap, d, vol_id)
            if body is not None:
                return Reply(tag="disk", body=body)
    raise not_found(f"disk '{disk_id}' of snapshot '{snap_id}'")


def list_snapshot_disks(req: Request, vm_id: str, snap_id: str) -> Reply:
    """The disks of a snapshot, each as it was (image_id = the snapshot's layer)."""
    vm = _find_vm(req, vm_id)
    snap = _find_snapshot(req, vm, snap_id)
    bodies = [_snapshot_disk_repr(req, vm, snap, disk_id, vol_id)
              for disk_id, vol_id in _snapshot_disk_items(req, vm, snap)]
    return Reply(tag="disks", body=[b for b in bodies if b is not None])
