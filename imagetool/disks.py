"""Disk operations the engine runs itself: copy, move, sparsify.

Each one starts the engine's action (oVirt REST API guide: Disk ``copy``,
``move``, ``sparsify``) and waits, under a deadline, for the disk(s) to
be ``ok`` again, so a script can use the result at once.
"""

from __future__ import annotations

from typing import Any

from imagetool.engine.entities import Disk
from imagetool.engine.wait import wait_for_disk, wait_truthy
from imagetool.errors import Conflict, ImagetoolError

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
