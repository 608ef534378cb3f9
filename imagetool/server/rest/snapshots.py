"""A VM's snapshots (oVirt REST API guide: Snapshots, Snapshot and its
sub-services; Vm: previewsnapshot, commitsnapshot, undosnapshot); the
operations are ``server/domain/snapshots.py``'s."""

from __future__ import annotations

from imagetool.server.domain import inventory, snapshots
from imagetool.server.rest import disks as disks_mod
from imagetool.server.rest.codec import get_id, get_list, get_str
from imagetool.server.rest.common import acting, deleting, done, ref
from imagetool.server.rest.router import Reply, Request, missing, not_found
from imagetool.server.rest.vms import snapshot_repr
from imagetool.server.validate import MAX_DESCRIPTION, check_text


def list_snapshots(req: Request, vm_id: str) -> Reply:
    vm = inventory.get(req.engine, "vm", vm_id, "VM")
    return Reply(tag="snapshots", body=[snapshot_repr(req, vm, s)
                                        for s in snapshots.of_vm(req.engine, vm)])


def get_snapshot(req: Request, vm_id: str, snap_id: str) -> Reply:
    return Reply(tag="snapshot", body=snapshot_repr(req, *snapshots.find(req.engine, vm_id,
                                                                         snap_id)))


def add_snapshot(req: Request, vm_id: str) -> Reply:
    data = req.data()
    description = check_text(get_str(data, "description"), "description", MAX_DESCRIPTION)
    if description is None:
        raise missing("Snapshot", "add", "description")
    wanted = [get_id(a, "disk", "id", what="disk") or get_id(a, "id", what="disk")
              for a in get_list(data, "disk_attachments")]
    vm, snap = snapshots.add(req.engine, vm_id, description, wanted)
    return Reply(status=201, tag="snapshot", body=snapshot_repr(req, vm, snap))


remove_snapshot = deleting(snapshots.remove)


def restore_snapshot(req: Request, vm_id: str, snap_id: str) -> Reply:
    snapshots.restore(req.engine, vm_id, snap_id)
    return done()


def preview_snapshot(req: Request, vm_id: str) -> Reply:
    snap_id = get_id(req.data(), "snapshot", "id", what="snapshot")
    if snap_id is None:
        raise missing("Action", "previewsnapshot", "snapshot.id")
    snapshots.preview(req.engine, vm_id, snap_id)
    return done()


# POST /vms/{id}/commitsnapshot keeps the previewed state for good;
# undosnapshot drops the preview, back to the set-aside layers.
commit_snapshot = acting(snapshots.end_preview, "commit", commit=True)
undo_snapshot = acting(snapshots.end_preview, "undo", commit=False)


def _disk_repr(req: Request, vm: dict, snap: dict, disk_id: str,
               vol_id: str | None) -> dict | None:
    d = inventory.find(req.engine, "disk", disk_id)
    if d is None:
        return None
    body = disks_mod.disk_repr(req, d)
    if vol_id:
        body["image_id"] = vol_id
        body["href"] = req.href("vms", vm["id"], "snapshots", snap["id"], "disks", disk_id)
        body["snapshot"] = ref(req, f"vms/{vm['id']}/snapshots", snap["id"])
    return body


def _snapshot_disks(req: Request, vm_id: str, snap_id: str, only: str | None = None) -> list:
    """The disks of a snapshot (or its disk ``only``), each as it was
    (image_id = the snapshot's layer)."""
    vm, snap = snapshots.find(req.engine, vm_id, snap_id)
    bodies = [_disk_repr(req, vm, snap, disk_id, vol_id)
              for disk_id, vol_id in snapshots.disk_items(vm, snap) if only in (None, disk_id)]
    return [b for b in bodies if b is not None]


def get_snapshot_disk(req: Request, vm_id: str, snap_id: str, disk_id: str) -> Reply:
    bodies = _snapshot_disks(req, vm_id, snap_id, disk_id)
    if not bodies:
        raise not_found(f"disk '{disk_id}' of snapshot '{snap_id}'")
    return Reply(tag="disk", body=bodies[0])


def list_snapshot_disks(req: Request, vm_id: str, snap_id: str) -> Reply:
    return Reply(tag="disks", body=_snapshot_disks(req, vm_id, snap_id))
