"""Typed entities of the oVirt engine API, as the client sees them.

Each dataclass lists only the fields imagetool uses, so one generic reader
(``codec.py``) handles XML and JSON for all entities, and unknown elements
are ignored. A field typed ``str | None``, ``int | None`` or ``bool | None``
is the child element of its own name; any other carries a small *spec* in
its metadata telling the codec where the value lives and what type it has:
- ``_ref(name)``: the ``id`` of a child element (``<disk id="..."/>``);
- ``("refs", outer, inner)``: the ids of a nested collection
  (``<storage_domains><storage_domain id=.../>...``);
- ``("path", "a/b/c", kind)``: a value deeper down (``kind`` str|int|bool).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _spec(*spec: Any, default: Any = None) -> Any:
    return field(default=default, metadata={"spec": spec})


def _ref(name: str) -> Any:
    return _spec("path", name + "/id", "str")


def _refs(outer: str, inner: str) -> Any:
    return _spec("refs", outer, inner, default=())


@dataclass
class Entity:
    """Base of all entities: ``id`` and ``href`` are XML attributes."""

    id: str | None = None
    href: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for ``--json`` output)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in asdict(self).items() if k != "href"}


@dataclass
class Disk(Entity):
    """A disk image (``/disks/ID``)."""

    TAG = "disk"

    name: str | None = None
    alias: str | None = None
    description: str | None = None
    status: str | None = None             # ok, locked, illegal
    format: str | None = None             # raw, cow
    provisioned_size: int | None = None   # virtual size
    actual_size: int | None = None
    total_size: int | None = None
    initial_size: int | None = None
    sparse: bool | None = None
    content_type: str | None = None  # data, iso, ovf_store...
    storage_domain_ids: tuple[str, ...] = _refs("storage_domains", "storage_domain")
    image_id: str | None = None
    backup: str | None = None             # none, incremental
    storage_type: str | None = None
    # A disk of a running VM backup: how it is backed up (full, incremental).
    backup_mode: str | None = None


@dataclass
class ImageTransfer(Entity):
    """An image transfer session (``/imagetransfers/ID``)."""

    TAG = "image_transfer"

    phase: str | None = None
    direction: str | None = None       # upload, download
    format: str | None = None             # raw, cow (4.2+)
    transfer_url: str | None = None  # the host (4.2+)
    proxy_url: str | None = None
    signed_ticket: str | None = None  # 4.1 proxies
    inactivity_timeout: int | None = None
    timeout_policy: str | None = None
    transferred: int | None = None
    active: bool | None = None
    shallow: bool | None = None
    disk_id: str | None = _ref("disk")
    image_id: str | None = _ref("image")
    snapshot_id: str | None = _ref("snapshot")
    host_id: str | None = _ref("host")
    backup_id: str | None = _ref("backup")


@dataclass
class StorageDomain(Entity):
    """A storage domain (``/storagedomains/ID``)."""

    TAG = "storage_domain"

    name: str | None = None
    type: str | None = None                 # data, iso, export
    status: str | None = None
    external_status: str | None = None
    storage_type: str | None = _spec("path", "storage/type", "str")  # nfs, fcp...
    available: int | None = None
    used: int | None = None
    committed: int | None = None
    master: bool | None = None
    data_center_ids: tuple[str, ...] = _refs("data_centers", "data_center")


@dataclass
class Cluster(Entity):
    """A cluster (``/clusters/ID``): how hosts belong to a data center."""

    TAG = "cluster"

    name: str | None = None
    data_center_id: str | None = _ref("data_center")


@dataclass
class Host(Entity):
    """A hypervisor host (``/hosts/ID``)."""

    TAG = "host"

    name: str | None = None
    address: str | None = None
    status: str | None = None
    cluster_id: str | None = _ref("cluster")


@dataclass
class Vm(Entity):
    """A virtual machine (``/vms/ID``)."""

    TAG = "vm"

    name: str | None = None
    description: str | None = None
    status: str | None = None
    memory: int | None = None
    cluster_id: str | None = _ref("cluster")
    template_id: str | None = _ref("template")
    # With ``all_content=true``: the OVF document (already unescaped).
    ovf: str | None = _spec("path", "initialization/configuration/data", "str")


@dataclass
class Template(Entity):
    """A template (``/templates/ID``)."""

    TAG = "template"

    name: str | None = None
    description: str | None = None
    memory: int | None = None


@dataclass
class Snapshot(Entity):
    """A VM snapshot (``/vms/ID/snapshots/SID``)."""

    TAG = "snapshot"

    description: str | None = None
    snapshot_status: str | None = None  # ok, locked, in_preview
    snapshot_type: str | None = None      # regular, active
    date: str | None = None
    persist_memorystate: bool | None = None
    vm_id: str | None = _ref("vm")


@dataclass
class DiskSnapshot(Entity):
    """One layer of a disk (``/disks/ID/disksnapshots/SID``)."""

    TAG = "disk_snapshot"

    disk_id: str | None = _ref("disk")
    parent_id: str | None = _ref("parent")
    snapshot_id: str | None = _ref("snapshot")   # the VM snapshot it belongs to
    name: str | None = None
    description: str | None = None
    status: str | None = None
    format: str | None = None
    actual_size: int | None = None
    provisioned_size: int | None = None
    image_id: str | None = None
    storage_domain_ids: tuple[str, ...] = _refs("storage_domains", "storage_domain")


@dataclass
class VmBackup(Entity):
    """A VM backup (``/vms/ID/backups/BID``, engine API model 4.4+); its
    phases are ``phases.BackupPhase``."""

    TAG = "backup"

    phase: str | None = None
    description: str | None = None
    from_checkpoint_id: str | None = None
    to_checkpoint_id: str | None = None
    vm_id: str | None = _ref("vm")


@dataclass
class Checkpoint(Entity):
    """A VM checkpoint (``/vms/ID/checkpoints/CID``): where the next
    incremental backup starts."""

    TAG = "checkpoint"

    state: str | None = None               # created, invalid
    parent_id: str | None = None
    vm_id: str | None = _ref("vm")


@dataclass
class Job(Entity):
    """An engine job (``/jobs/ID``)."""

    TAG = "job"

    description: str | None = None
    status: str | None = None             # started, finished, failed, aborted
    start_time: str | None = None
    end_time: str | None = None
    auto_cleared: bool | None = None
    external: bool | None = None


@dataclass
class DiskAttachment(Entity):
    """A disk attached to a VM (``/vms/ID/diskattachments/DID``)."""

    TAG = "disk_attachment"

    disk_id: str | None = _ref("disk")
    vm_id: str | None = _ref("vm")
    interface: str | None = None       # virtio, virtio_scsi, ide, sata
    bootable: bool | None = None
    active: bool | None = None
    read_only: bool | None = None
    logical_name: str | None = None


@dataclass
class ApiInfo:
    """What the API root (``GET /ovirt-engine/api``) says about the engine."""

    product_name: str | None = None
    vendor: str | None = None
    full_version: str | None = None
    major: int = 4
    minor: int = 0
    # ProductInfo ``instance_id``: the engine installation's UUID (oVirt
    # 4.4+; the local engine's is kept in its data directory).
    instance_id: str | None = None

    @property
    def version(self) -> tuple[int, int]:
        """(major, minor), e.g. ``(4, 5)``."""
        return (self.major, self.minor)
