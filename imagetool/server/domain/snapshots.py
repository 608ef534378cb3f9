"""VM snapshots (oVirt REST API guide: Snapshots, Snapshot): a snapshot turns
each disk's active volume into a read-only layer and puts a new empty
qcow2 layer on top; removing it merges its layer into the one above;
restoring drops the layers above it; a preview runs the VM on a new layer
over it until it is committed or undone; a new VM can be cloned from it.
"""

from __future__ import annotations

import time

from imagetool.server.domain import disks as disk_ops
from imagetool.server.domain import vmsettings
from imagetool.server.domain.inventory import get
from imagetool.server.jobs import record_job
from imagetool.server.faults import conflict, not_found
from imagetool.server.storage import new_id, volume_row


def _active(vm: dict) -> dict:
    return {"id": vm["active_snapshot_id"], "description": "Active VM", "type": "active",
            "status": "ok", "date": vm.get("created"), "volumes": {}}


def of_vm(engine, vm: dict) -> list[dict]:
    """The VM's snapshots: the virtual ``Active VM`` first, then the stored
    ones, and during a preview the set-aside ``Active VM before the preview``."""
    snaps = engine.store.list("snapshot", lambda s: s["vm_id"] == vm["id"])
    preview = vm.get("preview")
    if not preview:
        return [_active(vm), *snaps]
    for s in snaps:
        if s["id"] == preview["snapshot_id"]:
            s["status"] = "in_preview"
    before = {"id": preview["id"], "description": "Active VM before the preview",
              "type": "preview", "status": "ok", "date": preview["date"], "volumes": {}}
    return [_active(vm), *snaps, before]


def find(engine, vm_id: str, snap_id: str) -> tuple[dict, dict]:
    """(the VM, its snapshot ``snap_id``), or a 404 naming what is missing."""
    vm = get(engine, "vm", vm_id, "VM")
    for s in of_vm(engine, vm):
        if s["id"] == snap_id:
            return vm, s
    raise not_found(f"snapshot '{snap_id}'")


def disk_items(vm: dict, snap: dict) -> list[tuple[str, str | None]]:
    """(disk id, the snapshot's volume of it or None for the active state)."""
    if snap["type"] in ("active", "preview"):
        return [(a["disk_id"], None) for a in vm["attachments"]]
    return list(snap["volumes"].items())


def not_in_preview(vm: dict, action: str) -> None:
    if vm.get("preview"):
        raise conflict(action, f"VM {vm['name']} is previewing a snapshot: commit or undo "
                               "the preview first.")


def _past(engine, vm_id: str, snap_id: str, verb: str, done: str) -> tuple[dict, dict]:
    """The VM and a snapshot ``verb`` may act on: not the active one, no preview."""
    vm, snap = find(engine, vm_id, snap_id)
    if snap["type"] in ("active", "preview"):
        raise conflict(f"{verb} Snapshot", f"The active VM snapshot cannot be {done}.")
    not_in_preview(vm, f"{verb} Snapshot")
    return vm, snap


def _usable(engine, disk_ids, action: str) -> list[dict]:
    """The stored disks of ``disk_ids`` (gone ones passed over), each usable."""
    disks = [engine.store.get("disk", d) for d in disk_ids]
    disks = [d for d in disks if d is not None]
    for d in disks:
        disk_ops.check_usable(d, action)
    return disks


def add(engine, vm_id: str, description: str, wanted: list[str | None]) -> tuple[dict, dict]:
    """Freeze the active layer of each disk (of those ``wanted``, or all)
    and add a new one: (the VM, the snapshot)."""
    with engine.store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        not_in_preview(vm, "create Snapshot")
        disk_ids = [a["disk_id"] for a in vm["attachments"]
                    if not wanted or a["disk_id"] in wanted]
        disks = [get(engine, "disk", d, "disk") for d in disk_ids]
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
    record_job(engine.store, f"Creating VM Snapshot {description} for VM {vm['name']}",
               [f"Creating snapshot of disk {d['name']}" for d in disks])
    return vm, snap


def remove(engine, vm_id: str, snap_id: str) -> None:
    """Merge each of the snapshot's layers into the layer above."""
    store = engine.store
    with store.transaction():
        vm, snap = _past(engine, vm_id, snap_id, "remove", "removed")
        for d in _usable(engine, snap["volumes"], "remove Snapshot"):
            disk_ops.merge_down(engine, d, snap["volumes"][d["id"]])
        store.delete("snapshot", snap_id)
    record_job(engine.store, f"Removing Snapshot {snap['description']} of VM {vm['name']}",
               ["Merging layers"])


def restore(engine, vm_id: str, snap_id: str) -> None:
    """Drop every layer above the snapshot's, add a fresh top."""
    store, st = engine.store, engine.storage
    with store.transaction():
        vm, snap = _past(engine, vm_id, snap_id, "restore", "restored")
        dropped_snaps: set[str] = set()
        # Every disk is checked before a layer of any goes: the files go at
        # once, a refusal must not leave a disk's rows without them.
        for d in _usable(engine, snap["volumes"], "restore Snapshot"):
            base_vol = snap["volumes"][d["id"]]
            for v in reversed(disk_ops.chain(store, d)):
                if v["id"] == base_vol:
                    break
                if v.get("snapshot_id"):
                    dropped_snaps.add(v["snapshot_id"])
                store.delete("volume", v["id"])
                st.remove_volume(d["sd_id"], d["id"], v["id"])
            store.update("disk", d["id"], image_id=st.add_layer(d, base_vol)["id"])
        for sid in dropped_snaps - {snap_id}:
            store.delete("snapshot", sid)
    record_job(engine.store, f"Restoring VM Snapshot {snap['description']} of VM {vm['name']}",
               ["Restoring layers"])


def preview(engine, vm_id: str, snap_id: str) -> None:
    """Run the VM on a new layer over the snapshot.

    The active layers are set aside (the ``Active VM before the preview``
    snapshot) until ``end_preview`` drops them (commit) or puts them back
    (undo) (oVirt REST API guide, Vm: previewsnapshot).
    """
    store, st = engine.store, engine.storage
    with store.transaction():
        vm, snap = _past(engine, vm_id, snap_id, "preview", "previewed")
        disks = _usable(engine, snap["volumes"], "preview Snapshot")
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
    record_job(engine.store, f"Previewing Snapshot {snap['description']} of VM {vm['name']}",
               ["Creating preview layers"])


def end_preview(engine, vm_id: str, action: str, commit: bool) -> None:
    """Keep the previewed state for good (``commit``) or drop it, back to
    the set-aside layers."""
    store, st = engine.store, engine.storage
    with store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        preview = vm.get("preview")
        if not preview:
            raise conflict(f"{action} Snapshot", f"VM {vm['name']} is not previewing a "
                                                 "snapshot.")
        snap = store.get("snapshot", preview["snapshot_id"]) or {"volumes": {},
                                                                 "description": "?"}
        dropped_snaps: set[str] = set()
        files = []
        for d in _usable(engine, preview["saved"], f"{action} Snapshot"):
            disk_id, saved = d["id"], preview["saved"][d["id"]]
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
    record_job(engine.store, f"{verb} Snapshot {snap['description']} of VM {vm['name']}",
               ["Dropping layers"])


# --- a new VM from a snapshot ---------------------------------------------------

def chain_to(store, disk: dict, vol_id: str) -> list[dict]:
    """The disk's volumes from the base up to ``vol_id`` (a snapshot's layer)."""
    vols = disk_ops.chain(store, disk)
    saved = _preview_saved(store, disk)
    if not any(v["id"] == vol_id for v in vols) and saved:
        vols = disk_ops.chain(store, dict(disk, image_id=saved))
    for i, v in enumerate(vols):
        if v["id"] == vol_id:
            return vols[:i + 1]
    raise ValueError(f"volume {vol_id} is not in the chain of disk {disk['id']}")


def _preview_saved(store, disk: dict) -> str | None:
    """The active layer a preview set aside for this disk, if any."""
    for vm in store.list("vm", lambda v: bool(v.get("preview"))):
        saved = vm["preview"]["saved"].get(disk["id"])
        if saved:
            return saved
    return None


def _name_taken(store, name: str, vm_id: str | None) -> str | None:
    """Why a new VM cannot have that name or id (None when it can)."""
    if any(v["name"] == name for v in store.list("vm")):
        return f"The VM name {name} is already in use."
    if vm_id and store.get("vm", vm_id):
        return f"A VM with id {vm_id} already exists."
    return None


def clone(engine, snap_id: str, name: str, description: str | None,
          vm_id: str | None) -> dict:
    """A new VM whose disks are copies (flattened) of the snapshot's disks,
    as the engine clones a VM from a snapshot (oVirt REST API guide, Vms
    add: "clone a virtual machine from a snapshot")."""
    store = engine.store
    # The source disks are locked from the plan to the end of the copy: a
    # snapshot removed (its layers merged) or any other change of their
    # chains meanwhile would pull volumes from under the copy. Whatever
    # comes first wins: the other one gets a 404 (the snapshot is gone) or
    # a 409 (the disks are locked).
    with store.transaction():
        snap = get(engine, "snapshot", snap_id, "snapshot")
        source = get(engine, "vm", snap["vm_id"], "VM")
        taken = _name_taken(store, name, vm_id)
        if taken is not None:
            raise conflict("add VM", taken)
        disks = {d: get(engine, "disk", d, "disk") for d in snap["volumes"]}
        for d in disks.values():
            disk_ops.check_usable(d, "clone VM from Snapshot")
        plan = [(d, chain_to(store, d, snap["volumes"][d["id"]])) for d in disks.values()]
        for d in disks.values():
            store.update("disk", d["id"], status="locked")
    try:
        return _copy_disks(engine, name, description, vm_id, snap, source, plan)
    finally:
        with store.transaction():
            for d in disks.values():
                if (store.get("disk", d["id"]) or {}).get("status") == "locked":
                    store.update("disk", d["id"], status="ok")


def _copy_disks(engine, name: str, description: str | None, vm_id: str | None,
                snap: dict, source: dict, plan: list) -> dict:
    """The copy of a clone from a snapshot, its source disks locked."""
    store = engine.store
    made: list[tuple[dict, dict, dict]] = []
    with disk_ops.removed_on_error(engine) as copied:
        for d, vols in plan:
            sd = store.get("storage_domain", d["sd_id"])
            new_disk, new_vol = new_id(), new_id()
            fmt = vols[0]["format"]
            disk_ops.flatten(engine, "add VM", copied, vols, fmt, d["provisioned_size"], sd["id"],
                             new_disk, new_vol, preallocate=not d.get("sparse", True))
            now = time.time()
            made.append((dict(d, id=new_disk, name=f"{d['name']}_{name}"[:255], image_id=new_vol,
                              format=fmt, status="ok", created=now, empty=False),
                         volume_row(new_vol, new_disk, sd["id"], fmt, now),
                         next((a for a in source["attachments"] if a["disk_id"] == d["id"]),
                              {"interface": "virtio_scsi", "bootable": False, "active": True})))
        vm = {"id": vm_id or new_id(), "name": name,
              "description": description or source.get("description", ""),
              "created": time.time(), **vmsettings.copied(source),
              "attachments": [dict(att, disk_id=disk["id"]) for disk, _, att in made],
              "active_snapshot_id": new_id(), "ovf": None}
        with store.transaction():
            taken = _name_taken(store, name, vm_id)
            if taken is None:   # else another request took the name or id meanwhile
                for disk, vol, _ in made:
                    store.put("volume", vol)
                    store.put("disk", disk)
                store.put("vm", vm)
        if taken is not None:
            raise conflict("add VM", taken)
    record_job(engine.store, f"Creating VM {name} from Snapshot {snap['description']}",
               [f"Copying disk {disk['name']}" for disk, _, _ in made])
    return vm
