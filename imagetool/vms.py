"""VMs: list them, read their OVF, export them to an export storage domain
and import them back.

The OVF is the one the engine gives with ``all_content=true`` under
``initialization.configuration.data`` (oVirt engine SDK example
``download_vm_ovf.py``): saved beside the downloaded disks it lets a VM
be created again (``POST /vms`` with that OVF). Export and import go
through an export storage domain (oVirt REST API guide: Vm ``export``,
StorageDomainVm ``import``); both wait for the engine to finish.
"""

from __future__ import annotations

from typing import Any

from imagetool.engine.entities import StorageDomain, Vm
from imagetool.engine.wait import wait_truthy
from imagetool.errors import EngineError, ImagetoolError, NotFound

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


def _wait_vm_down(conn: Any, vm_id: str, what: str, timeout: float) -> Vm:
    """Until the VM is no longer locked by an operation (``image_locked``)."""
    def check() -> Vm | None:
        v = conn.vms.get(vm_id)
        return v if (v.status or "down").lower() not in ("image_locked", "locked") else None

    return wait_truthy(check, what, timeout)  # type: ignore[return-value]


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
    _wait_vm_down(conn, found.id, f"the export of VM {found.name} to end", timeout)

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
    candidates = conn.storage_domains.vms(sd.id)
    matches = [v for v in candidates if name in (v.id, v.name)]
    if not matches:
        raise NotFound(f"export domain {sd.name} holds no VM with id or name {name!r}",
                       status=404)
    if len(matches) > 1:
        raise EngineError(f"{len(matches)} VMs on export domain {sd.name} are named "
                          f"{name!r}: use the id")
    src = matches[0]
    target_name = new_name or src.name
    conn.storage_domains.import_vm(sd.id, src.id, storage_domain=storage_domain,
                                   cluster=cluster, clone=clone, name=new_name,
                                   collapse_snapshots=collapse_snapshots or clone)

    def imported() -> Vm | None:
        for v in conn.vms.list():
            if v.name == target_name and (clone or v.id == src.id):
                return v if (v.status or "down").lower() not in (
                    "image_locked", "locked") else None
        return None

    return wait_truthy(imported, f"VM {target_name} to be imported", timeout)  # type: ignore[return-value]
