"""Disk operations the engine runs itself: copy, move, sparsify, update.

Each one starts the engine's action (oVirt REST API guide: Disk ``copy``,
``move``, ``sparsify``; DiskAttachment ``update`` for a disk attached to
a VM) and waits, under a deadline, for the disk(s) to be ``ok`` again, so
a script can use the result at once.
"""

from __future__ import annotations

from typing import Any

from imagetool.engine.entities import Disk
from imagetool.engine.wait import wait_for_disk, wait_truthy
from imagetool.errors import Conflict, ImagetoolError, UsageError

DEFAULT_TIMEOUT = 3600.0


def _usable(d: Disk, verb: str) -> None:
    if d.status in ("locked", "illegal"):
        raise Conflict(f"cannot {verb} disk {d.name or d.id}: it is {d.status}", status=409)


def copy_disk(conn: Any, disk: Any, storage_domain: str, *, name: str | None = None,
              timeout: float = DEFAULT_TIMEOUT) -> Disk:
    """Copy a disk onto a storage domain (name or id); returns the new disk, ``ok``.

    ``name``: the copy's name (the engine's default otherwise).
    """
    d = conn.disks.find(disk)
    _usable(d, "copy")
    before = {x.id for x in conn.disks.list()}
    new = conn.disks.copy(d.id, storage_domain, name=name)
    if new is None or not new.id:
        # Engines that do not name the copy: it is the one new disk.
        sd = conn.storage_domains.find(storage_domain)

        def appeared() -> Disk | None:
            fresh = [x for x in conn.storage_domains.disks(sd.id) if x.id not in before]
            return fresh[0] if len(fresh) == 1 else None

        new = wait_truthy(appeared, f"the copy of disk {d.name or d.id}", timeout)  # type: ignore[assignment]
    wait_for_disk(conn, d.id, "ok", timeout)
    return wait_for_disk(conn, new.id, "ok", timeout)  # type: ignore[union-attr]


def move_disk(conn: Any, disk: Any, storage_domain: str, *,
              timeout: float = DEFAULT_TIMEOUT) -> Disk:
    """Move a disk onto another storage domain; returns it, ``ok`` there."""
    d = conn.disks.find(disk)
    _usable(d, "move")
    sd = conn.storage_domains.find(storage_domain)
    if sd.id in d.storage_domain_ids:
        raise ImagetoolError(f"disk {d.name or d.id} is already on storage domain {sd.name}")
    conn.disks.move(d.id, sd.id)

    def moved() -> Disk | None:
        x = conn.disks.get(d.id)
        return x if x.status == "ok" and sd.id in x.storage_domain_ids else None

    return wait_truthy(moved, f"disk {d.name or d.id} to be moved to {sd.name}",
                      timeout)  # type: ignore[return-value]


def sparsify_disk(conn: Any, disk: Any, *, timeout: float = DEFAULT_TIMEOUT) -> Disk:
    """Free the space the guest does not use; returns the disk, ``ok``."""
    d = conn.disks.find(disk)
    _usable(d, "sparsify")
    conn.disks.sparsify(d.id)
    return wait_for_disk(conn, d.id, "ok", timeout)


BACKUP_MODES = ("incremental", "none")


def update_disk(conn: Any, disk: Any, *, name: str | None = None, size: int | None = None,
                backup: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Disk:
    """Rename, grow, or turn incremental backup on or off; returns the disk, ``ok``.

    ``size`` is the new virtual size (engines only grow disks). ``backup``
    ``incremental`` (qcow2 disks only, as the engine says) makes the VM
    backup API track the disk's changes from the next checkpoint on, so
    its backups after the next one are incremental; ``none`` makes each
    backup of it full. A disk attached to a VM is changed through its
    attachment (the oVirt REST API guide's DiskAttachment ``update``),
    which every 4.x engine has; a floating one with ``PUT /disks/ID``.
    """
    if backup is not None and backup not in BACKUP_MODES:
        raise UsageError(f"backup mode {backup!r}: expected incremental or none")
    d = conn.disks.find(disk)
    _usable(d, "update")
    changes: dict[str, Any] = {}
    if name is not None and name != (d.name or d.alias):
        changes.update(name=name, alias=name)
    if size is not None and size != d.provisioned_size:
        if d.provisioned_size is not None and size < d.provisioned_size:
            raise ImagetoolError(f"disk {d.name or d.id} is {d.provisioned_size} bytes: "
                                 f"disks only grow, {size} is smaller")
        changes["provisioned_size"] = size
    if backup is not None and backup != (d.backup or "none"):
        if backup == "incremental" and (d.format or "").lower() == "raw":
            raise ImagetoolError(f"disk {d.name or d.id} is raw: incremental backup needs "
                                 f"a qcow2 disk (copy it into one with upload "
                                 f"--disk-format qcow2)")
        changes["backup"] = backup
    if not changes:
        return d
    from imagetool.snapshots import _vm_of_disk

    vm = _vm_of_disk(conn, d.id)
    if vm is not None:
        conn.vms.update_attachment_disk(vm.id, d.id, changes)
    else:
        conn.disks.update(d.id, changes)
    if "provisioned_size" not in changes:
        return wait_for_disk(conn, d.id, "ok", timeout)

    def grown() -> Disk | None:
        x = conn.disks.get(d.id)
        return x if x.status == "ok" and x.provisioned_size == size else None

    return wait_truthy(grown, f"disk {d.name or d.id} to grow to {size} bytes",
                      timeout)  # type: ignore[return-value]
