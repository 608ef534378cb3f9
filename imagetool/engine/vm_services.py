"""Services of the engine API for VMs and templates and what hangs under a
VM: snapshots, VM backups and checkpoints (oVirt REST API guide; VM
backups and checkpoints: the engine API model of oVirt 4.4 and later).
Reached as ``conn.vms``, ``conn.templates``, ``conn.snapshots``,
``conn.backups`` and ``conn.checkpoints``.
"""

from __future__ import annotations

from typing import Any, Generic, Iterable

from imagetool.engine import codec
from imagetool.engine.entities import (Checkpoint, Disk, DiskAttachment,
                                       Snapshot, Template, Vm, VmBackup)
from imagetool.engine.services import E, _act, _Collection, _delete, _Service, _sub
from imagetool.ids import ref


class _VmLike(_Collection[E]):
    """VMs and templates: made from an OVA, with disks attached."""

    def add_from_ova(self, *, name: str, cluster: str, ovf: str) -> E:
        """Create the VM or template an OVA's OVF describes (its disks already
        uploaded under the ids the OVF names): the API model's Initialization
        ``configuration`` of type ``ova``, which the engine reads for
        everything but the name and the cluster."""
        return self._add(self.ENTITY, self.PATH, {
            "name": name, "cluster": ref(cluster),
            "initialization": {"configuration": {"type": "ova", "data": ovf}}})

    disk_attachments = _sub(DiskAttachment, "diskattachments", "The disks attached.")


class VmsService(_VmLike[Vm]):
    """``/vms`` and the disks attached to a VM."""

    ENTITY, PATH, WHAT = Vm, "vms", "vm"

    def get(self, vm_id: str, all_content: bool = False) -> Vm:
        """One VM; ``all_content`` includes its OVF (``Vm.ovf``)."""
        return self._get(Vm, f"vms/{vm_id}", all_content=True if all_content else None)

    def add(self, *, name: str, cluster: str = "Default", template: str = "Blank",
            memory: int | None = None, description: str | None = None,
            ovf: str | None = None, cpus: int | None = None) -> Vm:
        """Create a VM (from a template, or from an OVF document); ``cpus``
        virtual CPUs as sockets of one core (the API model's CpuTopology)."""
        body: dict[str, Any] = {
            "name": name,
            "description": description,
            "memory": memory,
            "cluster": ref(cluster), "template": ref(template),
        }
        if cpus is not None:
            body["cpu"] = {"topology": {"sockets": cpus, "cores": 1, "threads": 1}}
        if ovf is not None:
            body["initialization"] = {"configuration": {"type": "ovf", "data": ovf}}
        return self._add(Vm, "vms", body)

    def remove(self, vm_id: str, *, detach_only: bool = False) -> None:
        """Delete a VM and its disks (``detach_only``: keep the disks)."""
        self._remove(f"vms/{vm_id}", detach_only=True if detach_only else None)

    def attach_disk(self, vm_id: str, disk_id: str, *, interface: str = "virtio_scsi",
                    bootable: bool = False, active: bool = True) -> DiskAttachment:
        body = {"disk": {"id": disk_id}, "interface": interface,
                "bootable": bootable, "active": active}
        return self._add(DiskAttachment, f"vms/{vm_id}/diskattachments", body)

    def update_attachment_disk(self, vm_id: str, disk_id: str,
                               changes: dict[str, Any]) -> None:
        """Change an attached disk (name, provisioned_size, backup...) with
        the DiskAttachment ``update`` (``PUT`` with ``<disk>`` inside)."""
        self._conn.request("PUT", f"vms/{vm_id}/diskattachments/{disk_id}",
                           body=codec.to_xml(DiskAttachment.TAG, {"disk": changes}))

    def detach_disk(self, vm_id: str, disk_id: str) -> None:
        """Detach a disk from a VM (the disk stays)."""
        self._remove(f"vms/{vm_id}/diskattachments/{disk_id}", detach_only=True)

    def export(self, vm_id: str, storage_domain: str, *, exclusive: bool = False,
               discard_snapshots: bool = False) -> None:
        """Export a VM to an export storage domain (name or id)."""
        self._action(f"vms/{vm_id}", "export", {
            "storage_domain": ref(storage_domain), "exclusive": exclusive,
            "discard_snapshots": discard_snapshots})

    def preview_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        """Show a snapshot's state as the VM's, until commit or undo."""
        self._action(f"vms/{vm_id}", "previewsnapshot",
                     {"snapshot": {"id": snapshot_id}, "restore_memory": False})

    commit_snapshot = _act("commitsnapshot", "Keep the previewed snapshot's state for good.")
    undo_snapshot = _act("undosnapshot", "Go back to the state before the preview.")


class TemplatesService(_VmLike[Template]):
    """``/templates`` (``Blank`` included)."""

    ENTITY, PATH, WHAT = Template, "templates", "template"

    remove = _delete("Delete a template and its disks.")


class _VmCollection(_Service, Generic[E]):
    """A collection under a VM, ``/vms/ID/<SEGMENT>``, of ``ENTITY``."""

    ENTITY: type[E]
    SEGMENT: str

    def _items(self, vm_id: str) -> str:
        return f"vms/{vm_id}/{self.SEGMENT}"

    def _path(self, vm_id: str, item_id: str) -> str:
        """One item: both ids, so a method built by ``_act``, ``_delete`` or
        ``_sub`` that is given one id fails here, not on the collection."""
        return f"{self._items(vm_id)}/{item_id}"

    def list(self, vm_id: str) -> list[E]:
        """The VM's items, oldest first."""
        return self._list(self.ENTITY, self._items(vm_id))

    def get(self, vm_id: str, item_id: str) -> E:
        """One item (NotFound when the VM has none by that id)."""
        return self._get(self.ENTITY, self._path(vm_id, item_id))

    disks = _sub(Disk, "disks", "The item's disks (vm id, item id): a snapshot's as they "
                 "were in it; a running backup's, each saying its ``backup_mode``.")


class SnapshotsService(_VmCollection[Snapshot]):
    """``/vms/ID/snapshots`` (the ``active`` one included)."""

    ENTITY, SEGMENT = Snapshot, "snapshots"

    def add(self, vm_id: str, *, description: str,
            disk_ids: Iterable[str] | None = None,
            persist_memorystate: bool = False) -> Snapshot:
        """Take a snapshot (of some disks only when ``disk_ids`` is given)."""
        body: dict[str, Any] = {"description": description,
                                "persist_memorystate": persist_memorystate}
        if disk_ids is not None:
            body["disk_attachments"] = {"disk_attachment": [
                {"disk": {"id": d}} for d in disk_ids]}
        return self._add(Snapshot, self._items(vm_id), body)

    remove = _delete("Delete (merge) a snapshot.")
    restore = _act("restore", "Bring the VM back to the snapshot (its layers above go).")


class BackupsService(_VmCollection[VmBackup]):
    """``/vms/ID/backups``: VM backups (engine API model 4.4+, VmBackups and
    VmBackup services)."""

    ENTITY, SEGMENT = VmBackup, "backups"

    def add(self, vm_id: str, *, disk_ids: Iterable[str],
            from_checkpoint_id: str | None = None,
            description: str | None = None) -> VmBackup:
        """Start a backup of some disks; incremental from ``from_checkpoint_id``."""
        body = {"description": description, "from_checkpoint_id": from_checkpoint_id,
                "disks": {"disk": [{"id": d} for d in disk_ids]}}
        return self._add(VmBackup, self._items(vm_id), body)

    finalize = _act("finalize", "End the backup (Conflict while its transfers are still "
                    "ending).")


class CheckpointsService(_VmCollection[Checkpoint]):
    """``/vms/ID/checkpoints`` (engine API model 4.4+)."""

    ENTITY, SEGMENT = Checkpoint, "checkpoints"

    remove = _delete("Delete a checkpoint (engines refuse all but the oldest).")
