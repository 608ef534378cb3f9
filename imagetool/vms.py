"""VMs: create and remove them, list them, read their OVF, export them to
an export storage domain and import them back.

``create_vm`` is the oVirt REST API guide's Vms ``add`` (from the Blank
template) followed by one DiskAttachments ``add`` per disk, each disk
either created empty or uploaded from a file; whatever it made is removed
again when a step fails.

The OVF is the one the engine gives with ``all_content=true`` under
``initialization.configuration.data`` (oVirt engine SDK example
``download_vm_ovf.py``): saved beside the downloaded disks it lets a VM
be created again (``POST /vms`` with that OVF). Export and import go
through an export storage domain (oVirt REST API guide: Vm ``export``,
StorageDomainVm ``import``); both wait for the engine to finish.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any, Callable, Sequence

from imagetool.engine.entities import Disk, StorageDomain, Vm
from imagetool.engine.services import pick
from imagetool.engine.wait import wait_for_disk, wait_gone, wait_truthy
from imagetool.errors import EngineError, ImagetoolError
from imagetool.threads import interrupts_held, shielded

DEFAULT_TIMEOUT = 3600.0


def list_vms(conn: Any, search: str | None = None) -> list[Vm]:
    """All VMs (or those an engine search expression matches)."""
    return conn.vms.list(search=search)


def get_vm(conn: Any, vm: Any) -> Vm:
    """One VM by id or exact name (NotFound names it)."""
    return conn.vms.find(vm)


def vm_ovf(conn: Any, vm: Any) -> str:
    """The VM's OVF document, as the engine writes it."""
    found = get_vm(conn, vm)
    full = conn.vms.get(found.id, all_content=True)
    if not full.ovf:
        raise EngineError(f"the engine gave no OVF for VM {found.name or found.id}")
    return full.ovf


def _export_domain(conn: Any, name_or_id: str) -> StorageDomain:
    """The export domain, refused clearly when it cannot take a VM."""
    sd = conn.storage_domains.find(name_or_id)
    if (sd.type or "").lower() != "export":
        raise ImagetoolError(f"storage domain {sd.name or sd.id} is a {sd.type or 'unknown'} "
                             f"domain, not an export domain")
    status = (sd.status or sd.external_status or "").lower()
    if status in ("unattached", "detached", "maintenance", "inactive") or (
            not sd.data_center_ids and status != "active"):
        raise ImagetoolError(f"export domain {sd.name or sd.id} is not attached to a data "
                             f"center (status {status or 'unknown'}); attach and activate it")
    return sd


def _unlocked(vm: Vm) -> Vm | None:
    """The VM once no operation locks it any more (``image_locked``)."""
    return vm if (vm.status or "down").lower() not in ("image_locked", "locked") else None


def export_vm(conn: Any, vm: Any, export_domain: str, *, discard_snapshots: bool = False,
              exclusive: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Vm:
    """Export a VM (its OVF and disks) to an attached export storage domain.

    ``discard_snapshots`` collapses each disk's chain into one volume;
    ``exclusive`` overwrites a VM of the same id already there. Returns
    the VM as the export domain lists it once the engine is done.
    """
    found = get_vm(conn, vm)
    sd = _export_domain(conn, export_domain)
    conn.vms.export(found.id, sd.id, exclusive=exclusive,
                    discard_snapshots=discard_snapshots)
    wait_truthy(lambda: _unlocked(conn.vms.get(found.id)),
                f"the export of VM {found.name} to end", timeout)

    def on_domain() -> Vm | None:
        return next((v for v in conn.storage_domains.vms(sd.id) if v.id == found.id), None)

    return wait_truthy(on_domain, f"VM {found.name} to appear on export domain {sd.name}",
                      timeout)  # type: ignore[return-value]


def import_vm(conn: Any, name: str, export_domain: str, storage_domain: str, *,
              cluster: str | None = None, clone: bool = False, new_name: str | None = None,
              collapse_snapshots: bool = False,
              timeout: float = DEFAULT_TIMEOUT) -> Vm:
    """Import a VM (by name or id) from an export domain onto a data domain.

    ``clone`` makes new ids (give ``new_name`` when the name is in use);
    the engine refuses cloning a VM with snapshots unless they are
    collapsed, so ``clone`` collapses them. Returns the imported VM once
    its disks are unlocked.
    """
    sd = _export_domain(conn, export_domain)
    src = pick(conn.storage_domains.vms(sd.id), name, lambda v: v.name,
               missing=f"export domain {sd.name} holds no VM with id or name {name!r}",
               several=lambda them: f"{len(them)} VMs on export domain {sd.name} are "
                                    f"named {name!r}: use the id")
    target_name = new_name or src.name
    conn.storage_domains.import_vm(sd.id, src.id, storage_domain=storage_domain,
                                   cluster=cluster, clone=clone, name=new_name,
                                   collapse_snapshots=collapse_snapshots or clone)

    def imported() -> Vm | None:
        for v in conn.vms.list():
            if v.name == target_name and (clone or v.id == src.id):
                return _unlocked(v)
        return None

    return wait_truthy(imported, f"VM {target_name} to be imported", timeout)  # type: ignore[return-value]


def _check_disk_specs(disks: Sequence[Any]) -> None:
    """Refuse a missing file or a non-positive size before anything is made."""
    for spec in disks:
        if isinstance(spec, int):
            if spec <= 0:
                raise ImagetoolError(f"disk size {spec}: expected a positive size")
        elif not os.path.isfile(spec):
            raise ImagetoolError(f"{os.fspath(spec)}: no such file to upload as a disk "
                                 f"(give a file, or a size such as 10G for an empty disk)")


def _new_disk(conn: Any, spec: Any, name: str, storage_domain: str, backup: str,
              workers: int, progress: Callable[[int], None] | None,
              created: list[str], timeout: float) -> Disk:
    """One disk of a new VM: empty (``spec`` a size) or uploaded (a path).

    Its id is chosen here and put in ``created`` before the engine is
    asked: a Ctrl-C while the disk is added, or after the upload ended but
    before its answer came back, leaves a disk that the clean-up finds by
    that id (one that never got made is skipped there)."""
    disk_id = str(uuid.uuid4())
    created.append(disk_id)
    incremental = backup == "incremental"
    if isinstance(spec, int):
        # qcow2 so that incremental backup can track it (raw disks cannot).
        d = conn.disks.add(name=name, provisioned_size=spec, storage_domain=storage_domain,
                           format="qcow2" if incremental else "raw", sparse=True,
                           backup="incremental" if incremental else None, disk_id=disk_id)
        return wait_for_disk(conn, d.id, "ok", timeout)
    from imagetool.disks import update_disk
    from imagetool.transfer.upload import upload_disk

    d = upload_disk(conn, spec, storage_domain, name=name, workers=workers,
                    disk_format="qcow2" if incremental else None, progress=progress,
                    disk_id=disk_id)
    # Uploads turn incremental backup on for qcow2 disks: say what was asked.
    return update_disk(conn, d, backup=backup, timeout=timeout)


def remove_made(conn: Any, kind: str, entity_id: str | None, disk_ids: Sequence[str],
                adding: str | None = None) -> None:
    """Remove what a failed run made: its VM or template (``kind``), a VM with
    its disks detached (only the disks the run made go, by id, whatever the
    VM ended up attached to), then each disk; each step on its own, errors
    ignored (the failure that stopped the run is the one to report).
    ``adding``: the name of one whose add was sent but never answered (a
    Ctrl-C): the engine may have made it all the same."""
    from imagetool.transfer.disk import remove_disk_when_unlocked

    if not entity_id and adding:
        with contextlib.suppress(Exception):
            entity_id = made_by_request(conn.vms if kind == "vm" else conn.templates,
                                        adding, disk_ids)
    if entity_id:
        with contextlib.suppress(Exception):
            if kind == "vm":
                conn.vms.remove(entity_id, detach_only=True)
            else:
                conn.templates.remove(entity_id)
    for disk_id in disk_ids:
        remove_disk_when_unlocked(conn, disk_id)


def made_by_request(service: Any, name: str, disk_ids: Sequence[str]) -> str | None:
    """The id of the VM (or template: ``service`` is ``conn.vms`` or
    ``conn.templates``) that an add interrupted before its answer made:
    named ``name`` with one of ``disk_ids`` (disks the same run made)
    attached, so that a VM of that name made by anyone else is never
    taken for it; None when there is none."""
    for entity in service.list():
        if entity.name == name and any(a.disk_id in disk_ids
                                       for a in service.disk_attachments(entity.id)):
            return entity.id
    return None


def create_vm(conn: Any, name: str, storage_domain: str, *, disks: Sequence[Any] = (),
              cluster: str | None = None, memory: int | None = None,
              cpus: int | None = None, backup: str = "incremental", workers: int = 4,
              progress: Callable[[int], None] | None = None,
              timeout: float = DEFAULT_TIMEOUT,
              committed: Callable[[], None] | None = None) -> Vm:
    """Create a VM with disks on ``storage_domain``; returns the VM.

    Each of ``disks`` is a size in bytes (a new empty disk) or a path (an
    image uploaded as the disk, checksum verified), named ``NAME-disk1``,
    ``NAME-disk2``... in order, the first bootable. ``backup``
    ``incremental`` (the default) makes them qcow2 disks with incremental
    backup on, so that ``imagetool backup`` copies only what changed after
    the first point; ``none`` keeps each file's format. ``memory`` is in
    bytes, ``cpus`` the number of virtual CPUs. On any failure (Ctrl-C
    included) the VM and every disk made so far are removed again;
    ``committed()`` is called once the VM is complete, before this returns
    (a Ctrl-C after it removes nothing).
    """
    _check_disk_specs(disks)
    vm_id: str | None = None
    created: list[str] = []
    try:
        # A Ctrl-C while the VM is added comes once its id is kept.
        with interrupts_held():
            vm = conn.vms.add(name=name, cluster=cluster or "Default", memory=memory,
                              cpus=cpus)
            vm_id = vm.id
        for i, spec in enumerate(disks, 1):
            d = _new_disk(conn, spec, f"{name}-disk{i}", storage_domain, backup, workers,
                          progress, created, timeout)
            conn.vms.attach_disk(vm.id, d.id, bootable=i == 1)
        made = conn.vms.get(vm.id)
        if committed is not None:
            committed()
    except BaseException:
        shielded(lambda: remove_made(conn, "vm", vm_id, created))
        raise
    return made


def remove_vm(conn: Any, vm: Any, *, keep_disks: bool = False,
              timeout: float = DEFAULT_TIMEOUT) -> tuple[Vm, list[str]]:
    """Remove a VM and, unless ``keep_disks``, its disks (Vm ``remove``,
    ``detach_only``). Waits until the engine no longer lists it; returns the
    VM as it was and the ids of its disks (removed, or kept)."""
    found = get_vm(conn, vm)
    disk_ids = [a.disk_id for a in conn.vms.disk_attachments(found.id)]
    conn.vms.remove(found.id, detach_only=keep_disks)
    wait_gone(lambda: conn.vms.get(found.id), f"VM {found.name} to be removed", timeout)
    return found, disk_ids
