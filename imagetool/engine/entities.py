"""Typed entities of the oVirt engine API, as the client sees them.

Each dataclass lists only the fields imagetool uses. Every field carries a
small *spec* in its metadata telling the codec where the value lives in the
wire document and what type it has, so one generic reader (``codec.py``)
handles XML and JSON for all entities, and unknown elements are ignored.

Spec kinds:
- ``("str", name)``, ``("int", name)``, ``("bool", name)``: a child element;
- ``("ref", name)``: the ``id`` of a child element (``<disk id="..."/>``);
- ``("refs", outer, inner)``: the ids of a nested collection
  (``<storage_domains><storage_domain id=.../>...``);
- ``("path", "a/b/c", kind)``: a value deeper down (``kind`` str|int|bool).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _spec(*spec: Any, default: Any = None) -> Any:
    return field(default=default, metadata={"spec": spec})


def _s(name: str) -> Any:
    return _spec("str", name)


def _i(name: str) -> Any:
    return _spec("int", name)


def _b(name: str) -> Any:
    return _spec("bool", name)


def _ref(name: str) -> Any:
    return _spec("ref", name)


def _refs(outer: str, inner: str) -> Any:
    return _spec("refs", outer, inner, default=())


@dataclass
class Entity:
    """Base of all entities: ``id`` and ``href`` are XML attributes."""

    id: str | None = _s("id")
    href: str | None = _s("href")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for ``--json`` output)."""
        d = asdict(self)
        d.pop("href", None)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


@dataclass
class Disk(Entity):
    """A disk image (``/disks/ID``)."""

    TAG = "disk"

    name: str | None = _s("name")
    alias: str | None = _s("alias")
    description: str | None = _s("description")
    status: str | None = _s("status")             # ok, locked, illegal
    format: str | None = _s("format")             # raw, cow
    provisioned_size: int | None = _i("provisioned_size")   # virtual size
    actual_size: int | None = _i("actual_size")
    total_size: int | None = _i("total_size")
    initial_size: int | None = _i("initial_size")
    sparse: bool | None = _b("sparse")
    content_type: str | None = _s("content_type")  # data, iso, ovf_store...
    storage_domain_ids: tuple[str, ...] = _refs("storage_domains", "storage_domain")
    image_id: str | None = _s("image_id")
    backup: str | None = _s("backup")             # none, incremental
    storage_type: str | None = _s("storage_type")
    # A disk of a running VM backup: how it is backed up (full, incremental).
    backup_mode: str | None = _s("backup_mode")


@dataclass
class ImageTransfer(Entity):
    """An image transfer session (``/imagetransfers/ID``)."""

    TAG = "image_transfer"

    phase: str | None = _s("phase")
    direction: str | None = _s("direction")       # upload, download
    format: str | None = _s("format")             # raw, cow (4.2+)
    transfer_url: str | None = _s("transfer_url")  # the host (4.2+)
    proxy_url: str | None = _s("proxy_url")
    signed_ticket: str | None = _s("signed_ticket")  # 4.1 proxies
    inactivity_timeout: int | None = _i("inactivity_timeout")
    timeout_policy: str | None = _s("timeout_policy")
    transferred: int | None = _i("transferred")
    active: bool | None = _b("active")
    shallow: bool | None = _b("shallow")
    disk_id: str | None = _ref("disk")
    image_id: str | None = _ref("image")
    snapshot_id: str | None = _ref("snapshot")
    host_id: str | None = _ref("host")
    backup_id: str | None = _ref("backup")


@dataclass
class StorageDomain(Entity):
    """A storage domain (``/storagedomains/ID``)."""

    TAG = "storage_domain"

    name: str | None = _s("name")
    type: str | None = _s("type")                 # data, iso, export
    status: str | None = _s("status")
    external_status: str | None = _s("external_status")
    storage_type: str | None = _spec("path", "storage/type", "str")  # nfs, fcp...
    available: int | None = _i("available")
    used: int | None = _i("used")
    committed: int | None = _i("committed")
    master: bool | None = _b("master")
    data_center_ids: tuple[str, ...] = _refs("data_centers", "data_center")


@dataclass
class Cluster(Entity):
    """A cluster (``/clusters/ID``): how hosts belong to a data center."""

    TAG = "cluster"

    name: str | None = _s("name")
    data_center_id: str | None = _ref("data_center")


@dataclass
class Host(Entity):
    """A hypervisor host (``/hosts/ID``)."""

    TAG = "host"

    name: str | None = _s("name")
    address: str | None = _s("address")
    status: str | None = _s("status")
    cluster_id: str | None = _ref("cluster")


@dataclass
class Vm(Entity):
    """A virtual machine (``/vms/ID``)."""

    TAG = "vm"

    name: str | None = _s("name")
    description: str | None = _s("description")
    status: str | None = _s("status")
    memory: int | None = _i("memory")
    cluster_id: str | None = _ref("cluster")
    template_id: str | None = _ref("template")
    # With ``all_content=true``: the OVF document (already unescaped).
    ovf: str | None = _spec("path", "initialization/configuration/data", "str")


@dataclass
class Template(Entity):
    """A template (``/templates/ID``)."""

    TAG = "template"

    name: str | None = _s("name")
    description: str | None = _s("description")
    memory: int | None = _i("memory")


@dataclass
class Snapshot(Entity):
    """A VM snapshot (``/vms/ID/snapshots/SID``)."""

    TAG = "snapshot"

    description: str | None = _s("description")
    snapshot_status: str | None = _s("snapshot_status")  # ok, locked, in_preview
    snapshot_type: str | None = _s("snapshot_type")      # regular, active
    date: str | None = _s("date")
    persist_memorystate: bool | None = _b("persist_memorystate")
    vm_id: str | None = _ref("vm")


@dataclass
class DiskSnapshot(Entity):
    """One layer of a disk (``/disks/ID/disksnapshots/SID``)."""

    TAG = "disk_snapshot"

    disk_id: str | None = _ref("disk")
    parent_id: str | None = _ref("parent")
    snapshot_id: str | None = _ref("snapshot")   # the VM snapshot it belongs to
    name: str | None = _s("name")
    description: str | None = _s("description")
    status: str | None = _s("status")
    format: str | None = _s("format")
    actual_size: int | None = _i("actual_size")
    provisioned_size: int | None = _i("provisioned_size")
    image_id: str | None = _s("image_id")
    storage_domain_ids: tuple[str, ...] = _refs("storage_domains", "storage_domain")


@dataclass
class VmBackup(Entity):
    """A VM backup (``/vms/ID/backups/BID``, engine API model 4.4+); its
    phases are ``phases.BackupPhase``."""

    TAG = "backup"

    phase: str | None = _s("phase")
    description: str | None = _s("description")
    from_checkpoint_id: str | None = _s("from_checkpoint_id")
    to_checkpoint_id: str | None = _s("to_checkpoint_id")
    vm_id: str | None = _ref("vm")


@dataclass
class Checkpoint(Entity):
    """A VM checkpoint (``/vms/ID/checkpoints/CID``): where the next
    incremental backup starts."""

    TAG = "checkpoint"

    state: str | None = _s("state")               # created, invalid
    parent_id: str | None = _s("parent_id")
    vm_id: str | None = _ref("vm")


@dataclass
class Job(Entity):
    """An engine job (``/jobs/ID``)."""

    TAG = "job"

    description: str | None = _s("description")
    status: str | None = _s("status")             # started, finished, failed, aborted
    start_time: str | None = _s("start_time")
    end_time: str | None = _s("end_time")
    auto_cleared: bool | None = _b("auto_cleared")
    external: bool | None = _b("external")


@dataclass
class DiskAttachment(Entity):
    """A disk attached to a VM (``/vms/ID/diskattachments/DID``)."""

    TAG = "disk_attachment"

    disk_id: str | None = _ref("disk")
    vm_id: str | None = _ref("vm")
    interface: str | None = _s("interface")       # virtio, virtio_scsi, ide, sata
    bootable: bool | None = _b("bootable")
    active: bool | None = _b("active")
    read_only: bool | None = _b("read_only")
    logical_name: str | None = _s("logical_name")


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
