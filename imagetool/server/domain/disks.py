"""Disks (oVirt REST API guide: Disks, Disk, DiskSnapshots): a disk is a chain
of volumes on a storage domain; adding, changing, copying, moving,
sparsifying and removing one, and merging a layer of its chain away."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator

from imagetool.phases import BACKUP_RUNNING
from imagetool.server.domain.inventory import get, get_owned
from imagetool.server.jobs import record_job
from imagetool.server.faults import bad_request, conflict
from imagetool.server.files import make_private_dirs, os_reason
from imagetool.server.layers import commit_layer, merge_layer, sparsify_layer
from imagetool.server.storage import new_id, volume_row


def chain(store, disk: dict, all_volumes: list[dict] | None = None) -> list[dict]:
    """The disk's volumes from base to active (top).

    ``all_volumes``: every volume, when the caller already has them (lists).
    """
    if all_volumes is None:
        all_volumes = store.list("volume", lambda v: v["disk_id"] == disk["id"])
    vols = {v["id"]: v for v in all_volumes if v["disk_id"] == disk["id"]}
    out = []
    cur = vols.get(disk["image_id"])
    while cur is not None:
        out.append(cur)
        cur = vols.get(cur.get("parent_id"))
    return list(reversed(out))


def actual_size(engine: Any, disk: dict, all_volumes: list[dict] | None = None) -> int:
    """Bytes allocated by every volume of the disk."""
    return sum(volume_size(engine, v) for v in chain(engine.store, disk, all_volumes))


def volume_size(engine: Any, v: dict) -> int:
    st = engine.storage
    return st.allocated_size(st.volume_path(v["sd_id"], v["disk_id"], v["id"]))


def check_usable(disk: dict, action: str) -> None:
    """409 when the disk is locked (a transfer or operation runs) or illegal."""
    if disk["status"] == "locked":
        raise conflict(action, f"Disk {disk['name']} is locked. Please try again later.")
    if disk["status"] == "illegal":
        raise conflict(action, f"Disk {disk['name']} is in illegal state.")


def check_not_backed_up(engine, action: str, vm: dict | None = None,
                        disk: dict | None = None) -> None:
    """409 while a VM backup holds ``vm`` or ``disk``: its frozen layers are
    under the disk, and its client may still be reading them (oVirt engine:
    a VM or disk in a running backup is locked)."""
    for b in engine.store.list("backup", lambda b: b["phase"] in BACKUP_RUNNING):
        if vm is not None and b["vm_id"] == vm["id"]:
            raise conflict(action, f"VM {vm['name']} is being backed up (backup {b['id']}, "
                                   f"phase {b['phase']}): finalize the backup first.")
        if disk is not None and disk["id"] in b["disks"]:
            raise conflict(action, f"Disk {disk['name']} is being backed up (backup "
                                   f"{b['id']}, phase {b['phase']}): finalize the backup "
                                   "first.")


def check_active(sd: dict, action: str) -> None:
    """409 unless the domain is attached to the data center and active."""
    if not sd.get("attached", True) or sd.get("status", "active") != "active":
        state = "not attached to a data center" if not sd.get("attached", True) \
            else "in maintenance"
        raise conflict(action, f"Storage Domain {sd['name']} is {state}: attach and "
                               "activate it first.")


def check_backup(backup: str, fmt: str, action: str) -> str:
    """A disk's ``backup`` mode: none or incremental, the latter for cow only."""
    if backup not in ("none", "incremental"):
        raise bad_request(f"Invalid value '{backup}' for disk backup: expected none or "
                          "incremental")
    if backup == "incremental" and fmt == "raw":
        # Only qcow2 volumes carry dirty bitmaps (oVirt engine: a RAW disk
        # with incremental backup is refused).
        raise conflict(action, "Incremental backup is not supported for RAW disks.")
    return backup


def check_target(sd: dict) -> None:
    """409 unless new disks may go to ``sd``: an active data domain."""
    if sd["type"] != "data":
        raise conflict("add Virtual Disk",
                       f"Storage Domain {sd['name']} is an {sd['type']} domain: disks can only be "
                       "added to data domains.")
    check_active(sd, "add Virtual Disk")


def add(engine, sd: dict, *, size: int, sparse: bool, initial: int | None,
        disk_id: str | None, name: str, fmt: str, content_type: str, backup: str,
        description: str) -> dict:
    """A new disk with one empty volume on data domain ``sd`` (status ok),
    once the domain can hold it and its id is free (the REST plane checked
    the values and ``check_target``).

    A volume that cannot be created (no space, a size the file system
    refuses) is a 409 and leaves neither a directory nor an inventory row.
    """
    available, _ = engine.storage.space(sd["id"])
    needed = initial if sparse else size
    if needed and needed > available:
        raise conflict("add Virtual Disk",
                       f"Low disk space on Storage Domain {sd['name']}.")
    if disk_id and engine.store.get("disk", disk_id):
        raise conflict("add Virtual Disk", f"A disk with id {disk_id} already exists.")
    disk_id = disk_id or new_id()
    vol_id = new_id()
    start = time.time()
    try:
        engine.storage.create_volume(sd["id"], disk_id, vol_id, fmt, size,
                                     preallocate=not sparse)
    except BaseException as e:
        engine.storage.remove_disk(sd["id"], disk_id)
        if isinstance(e, (OSError, ValueError, MemoryError)):
            raise conflict("add Virtual Disk",
                           f"Cannot create the volume: {os_reason(e)}.") from None
        raise
    disk = {"id": disk_id, "name": name, "description": description, "format": fmt,
            "provisioned_size": size, "initial_size": initial,
            "sparse": sparse, "content_type": content_type, "backup": backup,
            "sd_id": sd["id"], "status": "ok", "image_id": vol_id, "created": start,
            # Holds no data yet: an upload into it that fails removes it.
            "empty": True}
    with engine.store.transaction():
        engine.store.put("volume", volume_row(vol_id, disk_id, sd["id"], fmt, start))
        engine.store.put("disk", disk)
    record_job(engine.store, f"Adding Disk {name}", ["Creating volume"], start=start)
    return disk


def update(engine, disk_id: str, *, name: str | None = None,
           description: str | None = None, size: int | None = None,
           backup: str | None = None) -> dict:
    """Rename, describe, grow (never shrink) a disk or change its backup
    mode; a value left None stays as it is."""
    with engine.store.transaction():
        disk = get(engine, "disk", disk_id, "disk")
        check_usable(disk, "update Virtual Disk")
        if name:
            disk["name"] = name
        if description is not None:
            disk["description"] = description
        if size is not None and size != disk["provisioned_size"]:
            if size < disk["provisioned_size"]:
                raise conflict("update Virtual Disk", "Disk size cannot be reduced.")
            try:
                engine.storage.resize_volume(disk, size, chain(engine.store, disk))
            except ValueError as e:
                raise conflict("extend Virtual Disk", f"{e}.") from None
            disk["provisioned_size"] = size
        if backup is not None:
            # Takes effect at the VM's next checkpoint: the first backup
            # after it is full for this disk, later ones incremental.
            disk["backup"] = check_backup(backup, disk["format"], "update Virtual Disk")
        engine.store.put("disk", disk)
    return disk


def attached_disks(engine, owner: dict) -> list[dict]:
    """The stored disks a VM or template has attachments to, in attachment
    order; an attachment whose disk is gone is passed over."""
    disks = [engine.store.get("disk", a["disk_id"]) for a in owner.get("attachments", [])]
    return [d for d in disks if d is not None]


def remove(engine, disk_id: str) -> None:
    """Remove a disk: refused while locked, backed up or attached to a VM."""
    with engine.store.transaction():
        disk = get(engine, "disk", disk_id, "disk")
        if disk["status"] == "locked":
            check_usable(disk, "remove Virtual Disk")
        check_not_backed_up(engine, "remove Virtual Disk", disk=disk)
        vms = [vm for vm in engine.store.list("vm")
               if any(a["disk_id"] == disk_id for a in vm.get("attachments", []))]
        if vms:
            raise conflict("remove Virtual Disk",
                           f"Disk {disk['name']} is attached to VM {vms[0]['name']}.")
        engine.storage.delete_disk(disk)
    record_job(engine.store, f"Removing Disk {disk['name']}", ["Removing volumes"])


def _data_domain(sd: dict, action: str) -> dict:
    if sd["type"] != "data":
        raise conflict(f"{action} Virtual Disk",
                       f"Storage Domain {sd['name']} is not a data domain.")
    return sd


@contextlib.contextmanager
def removed_on_error(engine) -> Iterator[list[tuple[str, str]]]:
    """The disks ``flatten`` copies inside the block, (domain id, disk id):
    their files go when anything in the block fails, the copy of a later
    disk, a store write or the commit, which leaves no rows to list them."""
    made: list[tuple[str, str]] = []
    try:
        yield made
    except BaseException:
        for sd_id, disk_id in made:
            engine.storage.remove_disk(sd_id, disk_id)
        raise


def flatten(engine, action: str, made: list, vols: list[dict], fmt: str, size: int, sd_id: str,
            disk_id: str, vol_id: str, preallocate: bool) -> None:
    """``Storage.flatten`` into a new disk, recorded in ``made`` (see
    ``removed_on_error``). A copy the domain cannot hold (no space, a size
    the file system refuses) is a 409 naming the file, as in ``add``; the
    storage has removed what it wrote."""
    try:
        engine.storage.flatten(vols, fmt, size, sd_id, disk_id, vol_id, preallocate=preallocate)
    except (OSError, ValueError, MemoryError) as e:
        raise conflict(action, f"Cannot copy the volume: {os_reason(e)}.") from None
    made.append((sd_id, disk_id))


def copy(engine, disk_id: str, sd: dict, new_name: str | None) -> tuple[dict, dict]:
    """A new disk (flattened) on data domain ``sd``: (the copy, its job)."""
    _data_domain(sd, "copy")
    disk = get(engine, "disk", disk_id, "disk")
    check_usable(disk, "copy Virtual Disk")
    new_name = new_name or f"{disk['name']}_copy"
    vols = chain(engine.store, disk)
    new_disk_id, new_vol = new_id(), new_id()
    with removed_on_error(engine) as made:
        flatten(engine, "copy Virtual Disk", made, vols, disk["format"], disk["provisioned_size"],
                sd["id"], new_disk_id, new_vol, preallocate=not disk.get("sparse", True))
        now = time.time()
        copy = dict(disk, id=new_disk_id, name=new_name, sd_id=sd["id"], image_id=new_vol,
                    status="ok", created=now)
        with engine.store.transaction():
            engine.store.put("volume", volume_row(new_vol, new_disk_id, sd["id"], disk["format"],
                                                  now))
            engine.store.put("disk", copy)
    job = record_job(engine.store, f"Copying Disk {disk['name']} to {sd['name']}",
                     ["Copying volumes"])
    return copy, job


def move(engine, disk_id: str, sd: dict) -> tuple[dict, dict]:
    """Rename the disk's directory into data domain ``sd``: (the disk, its job)."""
    _data_domain(sd, "move")
    with engine.store.transaction():
        disk = get(engine, "disk", disk_id, "disk")
        check_usable(disk, "move Virtual Disk")
        if disk["sd_id"] != sd["id"]:
            src = engine.storage.disk_dir(disk["sd_id"], disk_id)
            dst = engine.storage.disk_dir(sd["id"], disk_id)
            make_private_dirs(os.path.dirname(dst))
            os.rename(src, dst)
            for v in engine.store.list("volume", lambda v: v["disk_id"] == disk_id):
                engine.store.update("volume", v["id"], sd_id=sd["id"])
            disk["sd_id"] = sd["id"]
            engine.store.put("disk", disk)
    job = record_job(engine.store, f"Moving Disk {disk['name']} to {sd['name']}",
                     ["Moving volumes"])
    return disk, job


def sparsify(engine, disk_id: str) -> None:
    """Free the blocks of the active layer that hold zeros.

    What the guest reads does not change; only allocation does (raw: holes
    punched, qcow2: zero clusters dropped or flagged). The disk is locked
    while it runs, as the engine locks it.
    """
    store, st = engine.store, engine.storage
    with store.transaction():
        disk = get(engine, "disk", disk_id, "disk")
        check_usable(disk, "sparsify Virtual Disk")
        if not disk.get("sparse", True):
            raise conflict("sparsify Virtual Disk",
                           f"Disk {disk['name']} is preallocated: only sparse disks can be "
                           "sparsified.")
        store.update("disk", disk_id, status="locked")
    freed = 0
    try:
        top = store.get("volume", disk["image_id"])
        parent = store.get("volume", top["parent_id"]) if top.get("parent_id") else None
        path = st.volume_path(top["sd_id"], top["disk_id"], top["id"])
        reader = st.open_volume(top, shallow=True)
        parent_reader = st.open_volume(parent) if parent is not None else None
        freed = sparsify_layer(path, top["format"], disk["provisioned_size"], reader,
                               parent_id=parent["id"] if parent else None,
                               parent_fmt=("qcow2" if parent and parent["format"] == "cow"
                                           else "raw"),
                               parent=parent_reader)
    except (OSError, ValueError) as e:
        raise conflict("sparsify Virtual Disk",
                       f"Cannot sparsify: {os_reason(e)}.") from None
    finally:
        store.update("disk", disk_id, status="ok")
    record_job(engine.store, f"Sparsifying Disk {disk['name']}",
               [f"Sparsifying volume ({freed} bytes freed)"])


def merge_down(engine, disk: dict, lower_id: str) -> None:
    """Merge volume ``lower_id`` into the volume above it and drop it.

    The upper volume keeps its id (it may be the disk's active layer) and
    inherits the lower one's parent. Call under the store's transaction.
    """
    store, st = engine.store, engine.storage
    lower = store.get("volume", lower_id)
    upper = next(v for v in store.list("volume", lambda v: v["disk_id"] == disk["id"])
                 if v.get("parent_id") == lower_id)
    parent_id = lower.get("parent_id")
    parent_fmt = None
    if parent_id:
        parent_fmt = "qcow2" if store.get("volume", parent_id)["format"] == "cow" else "raw"

    def open_layers():
        # Guest data through the recorded chain, never the headers' backing names.
        reader = st.open_volume(upper)
        try:
            parent = st.open_volume(store.get("volume", parent_id)) if parent_id else None
        except BaseException:
            reader.close()
            raise
        return reader, parent

    reader, parent = open_layers()
    lower_path = st.volume_path(disk["sd_id"], disk["id"], lower_id)
    upper_path = st.volume_path(disk["sd_id"], disk["id"], upper["id"])
    # Copy only what the upper layer holds into the lower one (usually far
    # smaller); a lower volume that is raw, or a qcow2 that cannot be changed
    # in place, is merged the other way, copying its data into a new file.
    if lower.get("format") != "cow" or not commit_layer(lower_path, upper_path,
                                                         reader, parent):
        if lower.get("format") == "cow":     # commit_layer closed both
            reader, parent = open_layers()
        merge_layer(lower_path, upper_path, parent_id, parent_fmt,
                    disk["provisioned_size"], reader=reader, parent=parent)
    meta = st.read_meta(disk["sd_id"], disk["id"], upper["id"])
    st.write_meta(disk["sd_id"], disk["id"], upper["id"], dict(meta, parent=parent_id))
    store.update("volume", upper["id"], parent_id=parent_id)
    store.delete("volume", lower_id)
    st.remove_volume(disk["sd_id"], disk["id"], lower_id)


def remove_snapshot(engine, disk_id: str, vol_id: str) -> None:
    """Merge one layer of the disk's chain away (never the active one)."""
    store = engine.store
    with store.transaction():
        disk = get(engine, "disk", disk_id, "disk")
        vol = get_owned(engine, "volume", vol_id, "disk snapshot", "disk_id", disk_id)
        check_usable(disk, "remove Disk Snapshot")
        if vol_id == disk["image_id"]:
            raise conflict("remove Disk Snapshot", "The active layer of a disk cannot be removed.")
        merge_down(engine, disk, vol_id)
        snap = store.get("snapshot", vol.get("snapshot_id") or "")
        if snap is not None:
            snap["volumes"].pop(disk_id, None)
            if snap["volumes"]:
                store.put("snapshot", snap)
            else:
                store.delete("snapshot", snap["id"])
    record_job(engine.store, f"Removing Disk Snapshot of disk {disk['name']}", ["Merging layers"])


def volumes(engine, disk_id: str) -> tuple[dict, list[dict]]:
    """(the disk, its chain from base to active)."""
    disk = get(engine, "disk", disk_id, "disk")
    return disk, chain(engine.store, disk)
