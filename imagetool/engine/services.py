"""Services of the engine API used by imagetool (a subset of the
oVirt REST API guide's).

Each service is reached through a Connection attribute (``conn.disks``,
``conn.storage_domains``, ``conn.transfers``, ``conn.vms``,
``conn.templates``, ``conn.snapshots``, ``conn.backups``,
``conn.checkpoints``, ``conn.hosts``, ``conn.clusters``, ``conn.jobs``) and
returns typed entities. Faults raise the exceptions of ``imagetool.errors``.
"""

from __future__ import annotations

import re
from typing import Any, Generic, Iterable, Protocol, TypeVar

from imagetool.engine import codec
from imagetool.engine.entities import (Checkpoint, Cluster, Disk,
                                       DiskAttachment, DiskSnapshot, Entity,
                                       Host, ImageTransfer, Job, Snapshot,
                                       StorageDomain, Template, Vm, VmBackup)
from imagetool.errors import EngineError, NotFound
from imagetool.ids import is_uuid, ref

E = TypeVar("E", bound=Entity)

# Disk format names people use -> the engine's enum.
_DISK_FORMATS = {"raw": "raw", "cow": "cow", "qcow2": "cow", "qcow": "cow"}


def _search_quote(value: str) -> str:
    # The engine's search language needs quotes around names with spaces.
    if re.fullmatch(r"[\w.\-]+", value):
        return value
    return '"' + value.replace('"', '\\"') + '"'


class Api(Protocol):
    """What the services need of their connection (``connection.Connection``
    is one); typed here so this module does not import the connection."""

    @property
    def legacy(self) -> bool: ...
    @property
    def disks(self) -> "DisksService": ...
    @property
    def storage_domains(self) -> "StorageDomainsService": ...
    def request(self, method: str, path: str, *, body: bytes | None = None,
                params: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None,
                accept: str | None = None) -> Any: ...
    def get_tree(self, path: str, params: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> codec.Tree: ...
    def post_tree(self, path: str, body: bytes,
                  params: dict[str, Any] | None = None) -> codec.Tree: ...


class _Service:
    """Shared plumbing: GET/list/add/remove/action on one collection."""

    def __init__(self, conn: Api) -> None:
        self._conn = conn

    def _get(self, cls: type[E], path: str, **params: Any) -> E:
        return codec.entity_from_tree(cls, self._conn.get_tree(path, params=params))

    def _list(self, cls: type[E], path: str, **params: Any) -> list[E]:
        return codec.entities_from_tree(cls, self._conn.get_tree(path, params=params))

    def _add(self, cls: type[E], path: str, body: dict[str, Any], **params: Any) -> E:
        tree = self._conn.post_tree(path, codec.to_xml(cls.TAG, body), params=params)  # type: ignore[attr-defined]
        return codec.entity_from_tree(cls, tree)

    def _remove(self, path: str, **params: Any) -> None:
        self._conn.request("DELETE", path, params=params)

    def _action(self, path: str, name: str, body: dict[str, Any] | None = None,
                params: dict[str, str] | None = None) -> codec.Tree:
        """POST ``path/name`` with an ``<action>``; raise if it did not complete."""
        tree = self._conn.post_tree(f"{path}/{name}", codec.to_xml("action", body),
                                    params=params)
        if isinstance(tree, dict) and codec.to_str(tree.get("status")) == "failed":
            reason, detail = codec.parse_fault(tree)
            raise EngineError(f"{name} failed: {detail or reason or 'no detail'}",
                              reason=reason, detail=detail)
        return tree

    def _find(self, cls: type[E], what: str, path: str, name_or_id: str | E) -> E:
        """An entity by id (tried first when it looks like one), else by name;
        one already found (a ``cls``) as it is, so callers take either."""
        if isinstance(name_or_id, cls):
            return name_or_id
        if not isinstance(name_or_id, str):
            raise TypeError(f"a {what} is a {cls.__name__}, an id or a name, "
                            f"not {type(name_or_id).__name__}")
        if is_uuid(name_or_id):
            try:
                return self._get(cls, f"{path}/{name_or_id}")
            except NotFound:
                pass
        found = self._list(cls, path, search=f"name={_search_quote(name_or_id)}")
        # The search language matches patterns and an engine may ignore it:
        # keep exact names only.
        exact = [e for e in found if name_or_id in (getattr(e, "name", None),
                                                    getattr(e, "alias", None))]
        if not exact:
            raise NotFound(f"no {what} with id or name {name_or_id!r}", status=404)
        if len(exact) > 1:
            ids = ", ".join(e.id or "?" for e in exact)
            raise EngineError(f"{len(exact)} {what}s are named {name_or_id!r} "
                              f"({ids}): use the id")
        return exact[0]


class DisksService(_Service):
    """``/disks``: floating disks and their layers."""

    def add(self, *, name: str, provisioned_size: int, storage_domain: str,
            format: str = "raw", sparse: bool = True,
            initial_size: int | None = None, content_type: str | None = None,
            backup: str | None = None, disk_id: str | None = None,
            description: str | None = None, alias: str | None = None) -> Disk:
        """Create a disk; returns it (usually still ``locked``).

        ``storage_domain`` is a name or id; ``format`` raw|cow (qcow2 is
        accepted for cow); ``provisioned_size`` is the virtual size;
        ``initial_size`` the space a sparse cow volume needs at first.
        """
        fmt = _DISK_FORMATS.get(format.lower())
        if fmt is None:
            raise ValueError(f"unknown disk format {format!r} (raw or qcow2/cow)")
        sd = self._conn.storage_domains.find(storage_domain)
        body: dict[str, Any] = {
            "id": disk_id,
            "name": name,
            "alias": alias,
            "description": description,
            "format": fmt,
            "provisioned_size": int(provisioned_size),
            "initial_size": int(initial_size) if initial_size is not None else None,
            "sparse": bool(sparse),
            "content_type": content_type,
            "backup": backup,
            "storage_domains": {"storage_domain": [{"id": sd.id}]},
        }
        return self._add(Disk, "disks", body)

    def get(self, disk_id: str) -> Disk:
        """One disk by id (NotFound when missing)."""
        return self._get(Disk, f"disks/{disk_id}")

    def list(self, search: str | None = None, max: int | None = None) -> list[Disk]:
        """All disks, or those matching an engine search expression."""
        return self._list(Disk, "disks", search=search, max=max)

    def find(self, name_or_id: str | Disk) -> Disk:
        """A disk by id, else by exact name; error when the name is ambiguous."""
        return self._find(Disk, "disk", "disks", name_or_id)

    def remove(self, disk_id: str) -> None:
        """Delete a disk (Conflict while it is locked)."""
        self._remove(f"disks/{disk_id}")

    def rename(self, disk_id: str, name: str) -> None:
        """Give a disk a new name (``PUT /disks/ID``)."""
        self._conn.request("PUT", f"disks/{disk_id}", body=codec.to_xml("disk", {"name": name}))

    def _disk_action(self, disk_id: str, name: str,
                     body: dict[str, Any] | None = None) -> Disk | None:
        tree = self._action(f"disks/{disk_id}", name, body)
        found = tree.get("disk") if isinstance(tree, dict) else None
        if isinstance(found, dict) and found.get("id"):
            return codec.entity_from_tree(Disk, found)
        return None

    def copy(self, disk_id: str, storage_domain: str, *,
             name: str | None = None) -> Disk | None:
        """Copy a disk to a storage domain (name or id): a new disk.

        Returns the new disk when the engine names it in its reply (the
        oVirt REST API guide's ``copy`` action), else None.
        """
        sd = self._conn.storage_domains.find(storage_domain)
        body: dict[str, Any] = {"storage_domain": {"id": sd.id}}
        if name:
            body["disk"] = {"name": name, "alias": name}
        return self._disk_action(disk_id, "copy", body)

    def move(self, disk_id: str, storage_domain: str) -> None:
        """Move a disk to another storage domain (name or id)."""
        sd = self._conn.storage_domains.find(storage_domain)
        self._disk_action(disk_id, "move", {"storage_domain": {"id": sd.id}})

    def sparsify(self, disk_id: str) -> None:
        """Free the space the guest file systems do not use (disks without
        snapshots only, as the oVirt REST API guide says)."""
        self._disk_action(disk_id, "sparsify")

    def snapshots(self, disk_id: str) -> list[DiskSnapshot]:
        """The disk's layers (disk snapshots), from the disk or its domains.

        ``include_active`` asks engines that leave it out by default for
        the active layer too (oVirt REST API guide, DiskSnapshots list).
        """
        try:
            return self._list(DiskSnapshot, f"disks/{disk_id}/disksnapshots",
                              include_active="true")
        except NotFound:
            pass
        # Older engines only list layers per storage domain.
        disk = self.get(disk_id)
        layers: list[DiskSnapshot] = []
        for sd_id in disk.storage_domain_ids:
            layers.extend(s for s in self._conn.storage_domains.disk_snapshots(sd_id)
                          if s.disk_id == disk_id)
        return layers


class StorageDomainsService(_Service):
    """``/storagedomains``."""

    def list(self, search: str | None = None) -> list[StorageDomain]:
        """All storage domains."""
        return self._list(StorageDomain, "storagedomains", search=search)

    def get(self, sd_id: str) -> StorageDomain:
        """One storage domain by id."""
        return self._get(StorageDomain, f"storagedomains/{sd_id}")

    def find(self, name_or_id: str) -> StorageDomain:
        """A storage domain by id or exact name."""
        return self._find(StorageDomain, "storage domain", "storagedomains", name_or_id)

    def disks(self, sd_id: str) -> list[Disk]:
        """Disks on one storage domain."""
        return self._list(Disk, f"storagedomains/{sd_id}/disks")

    def disk_snapshots(self, sd_id: str) -> list[DiskSnapshot]:
        """Every disk layer on one storage domain."""
        return self._list(DiskSnapshot, f"storagedomains/{sd_id}/disksnapshots")

    def vms(self, sd_id: str) -> list[Vm]:
        """The VMs stored on an export domain."""
        return self._list(Vm, f"storagedomains/{sd_id}/vms")

    def import_vm(self, sd_id: str, vm_id: str, *, storage_domain: str,
                  cluster: str | None = None, clone: bool = False,
                  name: str | None = None, collapse_snapshots: bool = False) -> None:
        """Import a VM from an export domain onto a data domain.

        ``collapse_snapshots`` goes in the query string, where the engine
        reads it (the body value is not honoured by every engine).
        """
        body: dict[str, Any] = {"storage_domain": ref(storage_domain),
                                "clone": clone if clone else None}
        if cluster:
            body["cluster"] = ref(cluster)
        if name:
            body["vm"] = {"name": name}
        params = {"collapse_snapshots": "true"} if collapse_snapshots else None
        self._action(f"storagedomains/{sd_id}/vms/{vm_id}", "import", body, params)


class ImageTransfersService(_Service):
    """``/imagetransfers``: create and drive image transfers."""

    def add(self, *, disk_id: str | None = None, snapshot_id: str | None = None,
            image_id: str | None = None, direction: str = "upload",
            format: str | None = None, inactivity_timeout: int | None = None,
            timeout_policy: str | None = None, shallow: bool | None = None,
            host_id: str | None = None, backup_id: str | None = None) -> ImageTransfer:
        """Start a transfer of a disk, a disk snapshot or an image.

        On 4.1 engines the transfer names the image (looked up from the
        disk when not given) and ``format``/``timeout_policy``/``shallow``
        are not sent, because those engines do not know them.
        """
        if direction not in ("upload", "download"):
            raise ValueError(f"direction must be upload or download, not {direction!r}")
        if not (disk_id or snapshot_id or image_id):
            raise ValueError("give disk_id, snapshot_id or image_id")
        body: dict[str, Any] = {"direction": direction}
        if self._conn.legacy:
            if image_id is None and disk_id is not None:
                image_id = self._conn.disks.get(disk_id).image_id
            if image_id is None:
                raise EngineError("this engine (4.1) needs the image id of the disk")
            body["image"] = {"id": image_id}
            body["inactivity_timeout"] = inactivity_timeout
            body["host"] = {"id": host_id} if host_id else None
        else:
            if snapshot_id:
                body["snapshot"] = {"id": snapshot_id}
            elif disk_id:
                body["disk"] = {"id": disk_id}
            else:
                body["image"] = {"id": image_id}
            body.update({
                "format": format,
                "inactivity_timeout": inactivity_timeout,
                "timeout_policy": timeout_policy,
                "shallow": shallow,
                "host": {"id": host_id} if host_id else None,
                "backup": {"id": backup_id} if backup_id else None,
            })
        return self._add(ImageTransfer, "imagetransfers", body)

    def get(self, transfer_id: str) -> ImageTransfer:
        """One transfer by id (NotFound once an old engine dropped it)."""
        return self._get(ImageTransfer, f"imagetransfers/{transfer_id}")

    def list(self) -> list[ImageTransfer]:
        """The transfers the engine still knows."""
        return self._list(ImageTransfer, "imagetransfers")

    def extend(self, transfer_id: str) -> None:
        """Refresh the session (keep-alive); changes no phase."""
        self._action(f"imagetransfers/{transfer_id}", "extend")

    def pause(self, transfer_id: str) -> None:
        """Pause an upload (paused_user)."""
        self._action(f"imagetransfers/{transfer_id}", "pause")

    def resume(self, transfer_id: str) -> None:
        """Resume a paused transfer (resuming -> transferring)."""
        self._action(f"imagetransfers/{transfer_id}", "resume")

    def finalize(self, transfer_id: str) -> None:
        """Data is complete: verify and commit (finalizing_success)."""
        self._action(f"imagetransfers/{transfer_id}", "finalize")

    def cancel(self, transfer_id: str) -> None:
        """Abort; an uploaded disk is removed by the engine."""
        self._action(f"imagetransfers/{transfer_id}", "cancel")


class VmsService(_Service):
    """``/vms`` and the disks attached to a VM."""

    def list(self, search: str | None = None, max: int | None = None) -> list[Vm]:
        """All VMs, or those matching a search."""
        return self._list(Vm, "vms", search=search, max=max)

    def get(self, vm_id: str, all_content: bool = False) -> Vm:
        """One VM; ``all_content`` includes its OVF (``Vm.ovf``)."""
        return self._get(Vm, f"vms/{vm_id}", all_content=True if all_content else None)

    def find(self, name_or_id: str | Vm) -> Vm:
        """A VM by id or exact name."""
        return self._find(Vm, "vm", "vms", name_or_id)

    def add(self, *, name: str, cluster: str = "Default", template: str = "Blank",
            memory: int | None = None, description: str | None = None,
            ovf: str | None = None) -> Vm:
        """Create a VM (from a template, or from an OVF document)."""
        body: dict[str, Any] = {
            "name": name,
            "description": description,
            "memory": memory,
            "cluster": ref(cluster), "template": ref(template),
        }
        if ovf is not None:
            body["initialization"] = {"configuration": {"type": "ovf", "data": ovf}}
        return self._add(Vm, "vms", body)

    def remove(self, vm_id: str, detach_only: bool = False) -> None:
        """Delete a VM (and its disks, unless ``detach_only``)."""
        self._remove(f"vms/{vm_id}", detach_only=True if detach_only else None)

    def disk_attachments(self, vm_id: str) -> list[DiskAttachment]:
        """The VM's disk attachments."""
        return self._list(DiskAttachment, f"vms/{vm_id}/diskattachments")

    def attach_disk(self, vm_id: str, disk_id: str, *, interface: str = "virtio_scsi",
                    bootable: bool = False, active: bool = True) -> DiskAttachment:
        """Attach an existing disk to a VM."""
        body = {"disk": {"id": disk_id}, "interface": interface,
                "bootable": bootable, "active": active}
        return self._add(DiskAttachment, f"vms/{vm_id}/diskattachments", body)

    def detach_disk(self, vm_id: str, disk_id: str) -> None:
        """Detach a disk from a VM (the disk stays)."""
        self._remove(f"vms/{vm_id}/diskattachments/{disk_id}", detach_only=True)

    def export(self, vm_id: str, storage_domain: str, *, exclusive: bool = False,
               discard_snapshots: bool = False) -> None:
        """Export a VM to an export storage domain (name or id)."""
        sd = ({"id": storage_domain} if is_uuid(storage_domain)
              else {"name": storage_domain})
        self._action(f"vms/{vm_id}", "export", {
            "storage_domain": sd, "exclusive": exclusive,
            "discard_snapshots": discard_snapshots})

    def preview_snapshot(self, vm_id: str, snapshot_id: str) -> None:
        """Show a snapshot's state as the VM's, until commit or undo."""
        self._action(f"vms/{vm_id}", "previewsnapshot",
                     {"snapshot": {"id": snapshot_id}, "restore_memory": False})

    def commit_snapshot(self, vm_id: str) -> None:
        """Keep the previewed snapshot's state for good."""
        self._action(f"vms/{vm_id}", "commitsnapshot")

    def undo_snapshot(self, vm_id: str) -> None:
        """Go back to the state before the preview."""
        self._action(f"vms/{vm_id}", "undosnapshot")


class TemplatesService(_Service):
    """``/templates``."""

    def list(self) -> list[Template]:
        """All templates (``Blank`` included)."""
        return self._list(Template, "templates")

    def find(self, name_or_id: str | Template) -> Template:
        """A template by id or exact name."""
        return self._find(Template, "template", "templates", name_or_id)

    def remove(self, template_id: str) -> None:
        """Delete a template and its disks."""
        self._remove(f"templates/{template_id}")

    def disk_attachments(self, template_id: str) -> list[DiskAttachment]:
        """The template's disk attachments."""
        return self._list(DiskAttachment, f"templates/{template_id}/diskattachments")


class _VmCollection(_Service, Generic[E]):
    """A collection under a VM, ``/vms/ID/<SEGMENT>``, of ``ENTITY``."""

    ENTITY: type[E]
    SEGMENT: str

    def _path(self, vm_id: str, item_id: str | None = None) -> str:
        base = f"vms/{vm_id}/{self.SEGMENT}"
        return f"{base}/{item_id}" if item_id else base

    def list(self, vm_id: str) -> list[E]:
        """The VM's items, oldest first."""
        return self._list(self.ENTITY, self._path(vm_id))

    def get(self, vm_id: str, item_id: str) -> E:
        """One item (NotFound when the VM has none by that id)."""
        return self._get(self.ENTITY, self._path(vm_id, item_id))


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
        return self._add(Snapshot, self._path(vm_id), body)

    def remove(self, vm_id: str, snapshot_id: str) -> None:
        """Delete (merge) a snapshot."""
        self._remove(self._path(vm_id, snapshot_id))

    def restore(self, vm_id: str, snapshot_id: str) -> None:
        """Restore the VM to a snapshot."""
        self._action(self._path(vm_id, snapshot_id), "restore")

    def disks(self, vm_id: str, snapshot_id: str) -> list[Disk]:
        """The disks as they were in a snapshot."""
        return self._list(Disk, f"{self._path(vm_id, snapshot_id)}/disks")


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
        return self._add(VmBackup, self._path(vm_id), body)

    def disks(self, vm_id: str, backup_id: str) -> list[Disk]:
        """The backup's disks; while it runs each says its ``backup_mode``."""
        return self._list(Disk, f"{self._path(vm_id, backup_id)}/disks")

    def finalize(self, vm_id: str, backup_id: str) -> None:
        """End the backup (Conflict while its transfers are still ending)."""
        self._action(self._path(vm_id, backup_id), "finalize")


class CheckpointsService(_VmCollection[Checkpoint]):
    """``/vms/ID/checkpoints`` (engine API model 4.4+)."""

    ENTITY, SEGMENT = Checkpoint, "checkpoints"

    def remove(self, vm_id: str, checkpoint_id: str) -> None:
        """Delete a checkpoint (engines refuse all but the oldest)."""
        self._remove(self._path(vm_id, checkpoint_id))


class HostsService(_Service):
    """``/hosts``."""

    def list(self, search: str | None = None) -> list[Host]:
        """All hosts."""
        return self._list(Host, "hosts", search=search)

    def get(self, host_id: str) -> Host:
        """One host."""
        return self._get(Host, f"hosts/{host_id}")


class ClustersService(_Service):
    """``/clusters``."""

    def list(self) -> list[Cluster]:
        """All clusters."""
        return self._list(Cluster, "clusters")


class JobsService(_Service):
    """``/jobs``."""

    def list(self, search: str | None = None) -> list[Job]:
        """Recent jobs."""
        return self._list(Job, "jobs", search=search)

    def get(self, job_id: str) -> Job:
        """One job."""
        return self._get(Job, f"jobs/{job_id}")
