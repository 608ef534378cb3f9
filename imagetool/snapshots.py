"""VM snapshots and the layers of a disk, for backup and migration scripts.

The snapshot-based backup of the oVirt engine SDK's examples
(``vm_backup.py``, ``download_disk_snapshot.py``): take a snapshot, save
the VM's OVF, download each disk's layers, remove the snapshot. Every
call that changes something waits for the engine to finish it (the
snapshot's status, the disks leaving ``locked``) under a deadline, and a
call that created something and then failed removes it again.

    from imagetool import snapshots, vms
    snap = snapshots.create_snapshot(conn, "web", description="nightly")
    ovf = vms.vm_ovf(conn, "web")
    for disk in snapshots.snapshot_disks(conn, "web", snap):
        snapshots.download_chain(conn, disk.id, f"backup/{disk.id}", snapshot=snap)
    snapshots.remove_snapshot(conn, "web", snap)
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from imagetool.engine import lifecycle as life
from imagetool.engine.entities import Disk, DiskSnapshot, Snapshot, Vm
from imagetool.engine.services import pick
from imagetool.engine.wait import wait_for_disks, wait_for_snapshot_gone, wait_truthy
from imagetool.errors import Conflict, EngineError, ImagetoolError, NotFound
from imagetool.ids import is_uuid

DEFAULT_TIMEOUT = life.DEFAULT_TIMEOUT
ACTIVE = "active"


# --- lookups -------------------------------------------------------------------

def _vm_label(vm: Vm) -> str:
    return vm.name or vm.id or "?"


def list_snapshots(conn: Any, vm: Any) -> list[Snapshot]:
    """The VM's snapshots, the ``active`` one included."""
    return conn.snapshots.list(conn.vms.find(vm).id)


def find_snapshot(conn: Any, vm: Any, snapshot: Any) -> Snapshot:
    """A snapshot of the VM by id, or by its exact description.

    NotFound names the VM and what was asked; a description that several
    snapshots share is an error asking for the id.
    """
    vm = conn.vms.find(vm)
    if isinstance(snapshot, Snapshot):
        snapshot = snapshot.id
    if not isinstance(snapshot, str) or not snapshot:
        raise TypeError("snapshot must be a Snapshot, an id or a description")
    return pick(conn.snapshots.list(vm.id), snapshot, lambda s: s.description,
                missing=f"VM {_vm_label(vm)} has no snapshot with id or description "
                        f"{snapshot!r}",
                several=lambda them: f"{len(them)} snapshots of VM {_vm_label(vm)} are "
                                     f"described {snapshot!r} "
                                     f"({', '.join(s.id or '?' for s in them)}): use the id")


def snapshot_disks(conn: Any, vm: Any, snapshot: Any) -> list[Disk]:
    """The disks as the snapshot holds them (``image_id``: its layer)."""
    vm = conn.vms.find(vm)
    return conn.snapshots.disks(vm.id, find_snapshot(conn, vm, snapshot).id)


def _check_disks_usable(conn: Any, vm: Vm, disk_ids: Iterable[str], action: str) -> None:
    """Refuse early, with the disk named, when a disk is locked or illegal."""
    for disk_id in disk_ids:
        d = conn.disks.get(disk_id)
        if d.status in ("locked", "illegal"):
            raise Conflict(f"cannot {action} of VM {_vm_label(vm)}: its disk "
                           f"{d.name or d.alias or d.id} is {d.status}", status=409)


# --- snapshots -----------------------------------------------------------------

def create_snapshot(conn: Any, vm: Any, description: str | None = None, *,
                    disks: Iterable[Any] | None = None, persist_memory: bool = False,
                    wait: bool = True, timeout: float = DEFAULT_TIMEOUT) -> Snapshot:
    """Take a snapshot of the VM (of ``disks`` only, names or ids, when given).

    ``persist_memory`` is off by default: the engine's own default saves
    the memory, which pauses a running VM longer (oVirt REST API guide).
    With ``wait`` returns once the snapshot is ``ok`` and its disks are
    unlocked; if that fails the snapshot is removed again, so a failed
    call leaves none behind.
    """
    vm = conn.vms.find(vm)
    attached = life.attached_disk_ids(conn, vm.id)
    disk_ids: list[str] | None = None
    if disks is not None:
        disk_ids = []
        for ref in disks:
            d = conn.disks.find(ref)
            if d.id not in attached:
                raise ImagetoolError(f"disk {d.name or d.id} is not attached to VM "
                                     f"{_vm_label(vm)}")
            disk_ids.append(d.id)
    if description is None:
        description = "imagetool " + _dt.datetime.now(_dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    _check_disks_usable(conn, vm, disk_ids if disk_ids is not None else attached,
                        "take a snapshot")
    return life.take_snapshot(conn, vm.id, description, disk_ids=disk_ids,
                              persist_memory=persist_memory, wait=wait, timeout=timeout,
                              what=f"snapshot {description!r} of VM {_vm_label(vm)}")


def _past_snapshot(conn: Any, vm: Any, snapshot: Any, verb: str) -> tuple[Vm, Snapshot]:
    """The VM and one of its snapshots, which must not be the active one."""
    vm = conn.vms.find(vm)
    snap = find_snapshot(conn, vm, snapshot)
    if snap.snapshot_type == ACTIVE:
        raise ImagetoolError(f"cannot {verb} the active snapshot of VM {_vm_label(vm)} "
                             f"(it is the VM's current state)")
    return vm, snap


def _usable_disk_ids(conn: Any, vm: Vm, action: str) -> list[str]:
    """The VM's disk ids, refused when one of them is locked or illegal."""
    disk_ids = life.attached_disk_ids(conn, vm.id)
    _check_disks_usable(conn, vm, disk_ids, action)
    return disk_ids


def _act_on_past_snapshot(conn: Any, vm: Any, snapshot: Any, verb: str,
                          action: Callable[[str, str], Any]) -> tuple[Vm, Snapshot, list[str]]:
    """Call the engine's ``action(vm_id, snapshot_id)`` on a past snapshot of a
    VM whose disks are all usable; the VM, the snapshot and its disk ids."""
    vm, snap = _past_snapshot(conn, vm, snapshot, verb)
    disk_ids = _usable_disk_ids(conn, vm, f"{verb} snapshot {snap.description!r}")
    action(vm.id, snap.id)
    return vm, snap, disk_ids


def remove_snapshot(conn: Any, vm: Any, snapshot: Any, *, wait: bool = True,
                    timeout: float = DEFAULT_TIMEOUT) -> None:
    """Remove a snapshot (the engine merges its layers); waits until it is gone."""
    vm, snap, disk_ids = _act_on_past_snapshot(conn, vm, snapshot, "remove",
                                               conn.snapshots.remove)
    if wait:
        wait_for_snapshot_gone(conn, vm.id, snap.id or "", disk_ids, timeout,
                               f"snapshot {snap.id} of VM {_vm_label(vm)} to be removed")


def restore_snapshot(conn: Any, vm: Any, snapshot: Any, *, wait: bool = True,
                     timeout: float = DEFAULT_TIMEOUT) -> None:
    """Bring the VM back to a snapshot for good (the layers above it go)."""
    vm, snap, disk_ids = _act_on_past_snapshot(conn, vm, snapshot, "restore",
                                               conn.snapshots.restore)
    if wait:
        life.wait_snapshot_ready(conn, vm.id, snap.id or "", disk_ids, timeout=timeout,
                                 what=f"restoring snapshot {snap.description!r} of VM "
                                      f"{_vm_label(vm)}")


def _in_preview(conn: Any, vm: Vm) -> Snapshot | None:
    return next((s for s in conn.snapshots.list(vm.id) if s.snapshot_status == "in_preview"),
                None)


def preview_snapshot(conn: Any, vm: Any, snapshot: Any, *, wait: bool = True,
                     timeout: float = DEFAULT_TIMEOUT) -> Snapshot:
    """Show the VM as it was in a snapshot, until commit or undo."""
    vm, snap = _past_snapshot(conn, vm, snapshot, "preview")
    already = _in_preview(conn, vm)
    if already is not None:
        raise Conflict(f"VM {_vm_label(vm)} already previews snapshot "
                       f"{already.description!r}: commit or undo it first", status=409)
    disk_ids = _usable_disk_ids(conn, vm, f"preview snapshot {snap.description!r}")
    conn.vms.preview_snapshot(vm.id, snap.id)
    if not wait:
        return snap
    return life.wait_snapshot_ready(conn, vm.id, snap.id or "", disk_ids,
                                    f"snapshot {snap.description!r}", "in_preview", timeout)


def _end_preview(conn: Any, vm: Any, snapshot: Any, commit: bool, wait: bool,
                 timeout: float) -> None:
    vm = conn.vms.find(vm)
    current = _in_preview(conn, vm)
    verb = "commit" if commit else "undo"
    if current is None:
        raise Conflict(f"VM {_vm_label(vm)} previews no snapshot: nothing to {verb}",
                       status=409)
    if snapshot is not None:
        asked = find_snapshot(conn, vm, snapshot)
        if asked.id != current.id:
            raise Conflict(f"VM {_vm_label(vm)} previews snapshot "
                           f"{current.description!r}, not {asked.description!r}",
                           status=409)
    disk_ids = life.attached_disk_ids(conn, vm.id)
    (conn.vms.commit_snapshot if commit else conn.vms.undo_snapshot)(vm.id)
    if wait:
        wait_truthy(lambda: _in_preview(conn, vm) is None,
                   f"the preview of VM {_vm_label(vm)} to end", timeout)
        wait_for_disks(conn, disk_ids, f"{verb} of the preview", timeout)


def commit_snapshot(conn: Any, vm: Any, snapshot: Any = None, *, wait: bool = True,
                    timeout: float = DEFAULT_TIMEOUT) -> None:
    """Keep the previewed snapshot's state (``snapshot``, when given, must be
    the one in preview)."""
    _end_preview(conn, vm, snapshot, True, wait, timeout)


def undo_snapshot(conn: Any, vm: Any, snapshot: Any = None, *, wait: bool = True,
                  timeout: float = DEFAULT_TIMEOUT) -> None:
    """Go back to the state before the preview."""
    _end_preview(conn, vm, snapshot, False, wait, timeout)


# --- layers of a disk ----------------------------------------------------------

def disk_layers(conn: Any, disk: Any) -> list[DiskSnapshot]:
    """The disk's layers (disk snapshots) from the base to the active one.

    The order comes from each layer's ``parent`` (engines 4.4.3+ report
    it, as the oVirt engine SDK's ``list_disk_snapshots.py`` uses).
    """
    d = conn.disks.find(disk)
    layers = conn.disks.snapshots(d.id)
    if not layers:
        raise EngineError(f"the engine lists no layers for disk {d.name or d.id}")
    by_parent: dict[str | None, DiskSnapshot] = {}
    ids = {s.id for s in layers}
    for s in layers:
        parent = s.parent_id if s.parent_id in ids else None
        if parent in by_parent:
            raise EngineError(f"disk {d.name or d.id}: layers {by_parent[parent].id} and "
                              f"{s.id} have the same parent: not one chain")
        by_parent[parent] = s
    out: list[DiskSnapshot] = []
    cur = by_parent.get(None)
    while cur is not None and len(out) <= len(layers):
        out.append(cur)
        cur = by_parent.get(cur.id)
    if len(out) != len(layers):
        raise EngineError(f"disk {d.name or d.id}: the engine's layers do not form one "
                          f"chain (does it report their parents?)")
    return out


def _vm_of_disk(conn: Any, disk_id: str) -> Vm | None:
    return next((vm for vm in conn.vms.list()
                 if disk_id in life.attached_disk_ids(conn, vm.id)), None)


def _layers_up_to(conn: Any, disk: Disk, layers: list[DiskSnapshot],
                  snapshot: Any) -> list[DiskSnapshot]:
    """The layers from the base up to the one ``snapshot`` names: a layer
    (disk snapshot) id, a VM snapshot (id, description or Snapshot)."""
    if snapshot is None:
        return layers
    if isinstance(snapshot, (Snapshot, DiskSnapshot)):
        snapshot = snapshot.id
    key = snapshot.lower() if is_uuid(snapshot) else snapshot
    for i, s in enumerate(layers):
        if key in (s.id, s.snapshot_id):
            return layers[:i + 1]
    vm = _vm_of_disk(conn, disk.id)
    if vm is not None:
        snap = find_snapshot(conn, vm, snapshot)   # NotFound names the VM
        for i, s in enumerate(layers):
            if s.snapshot_id == snap.id:
                return layers[:i + 1]
        if snap.snapshot_type == ACTIVE:
            return layers
        raise NotFound(f"snapshot {snap.description!r} of VM {_vm_label(vm)} holds no "
                       f"layer of disk {disk.name or disk.id}", status=404)
    raise NotFound(f"disk {disk.name or disk.id} has no layer or snapshot {snapshot!r}",
                   status=404)


@dataclass
class ChainLayer:
    """One downloaded layer: its id, file and the file it is backed by."""

    id: str
    path: str
    backing: str | None


@dataclass
class ChainResult:
    """What ``download_chain`` wrote: the layers base first, and the top file."""

    disk_id: str
    layers: list[ChainLayer] = field(default_factory=list)

    @property
    def top(self) -> str | None:
        return self.layers[-1].path if self.layers else None

    @property
    def paths(self) -> list[Path]:
        return [Path(layer.path) for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "top": self.top}


def download_chain_result(conn: Any, disk: Any, directory: str | os.PathLike, *,
                          snapshot: Any = None, workers: int = 4, verify: bool = True,
                          host: str | None = None, inactivity_timeout: int = 60,
                          progress: Callable[[int, int], None] | None = None,
                          start: Callable[[list[DiskSnapshot]], None] | None = None
                          ) -> ChainResult:
    """Like :func:`download_chain`, returning the layers' ids and backing names.

    ``progress(index, bytes)`` reports each layer's progress; ``start``
    is called with the layers before the first download.
    """
    from imagetool.transfer.download import download_disk

    d = conn.disks.find(disk)
    directory = os.fspath(directory)
    layers = _layers_up_to(conn, d, disk_layers(conn, d), snapshot)
    created_dir = False
    if os.path.lexists(directory):
        if not os.path.isdir(directory):
            raise ImagetoolError(f"{directory}: not a directory")
        if os.listdir(directory):
            raise ImagetoolError(f"{directory}: already holds files; a chain is "
                                 f"downloaded into an empty or new directory")
    else:
        os.makedirs(directory)
        created_dir = True
    if start is not None:
        start(layers)
    result = ChainResult(disk_id=d.id or "")
    extra: dict[str, Any] = {"host": host} if host else {}
    try:
        backing: str | None = None
        for i, layer in enumerate(layers):
            name = f"{layer.id}.qcow2"
            path = os.path.join(directory, name)
            cb = (lambda n, i=i: progress(i, n)) if progress else None
            download_disk(conn, d, path, format="qcow2", snapshot=layer.id,
                          shallow=True, backing_file=backing, workers=workers,
                          verify=verify, inactivity_timeout=inactivity_timeout,
                          progress=cb, **extra)
            result.layers.append(ChainLayer(id=layer.id or "", path=path, backing=backing))
            backing = name
    except BaseException:
        # Nothing half-done: the files of this call go, and the directory
        # when this call made it.
        for x in result.layers:
            with suppress(OSError):
                os.unlink(x.path)
        if created_dir:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return result


def download_chain(conn: Any, disk: Any, directory: str | os.PathLike, *,
                   snapshot: Any = None, workers: int = 4, verify: bool = True,
                   host: str | None = None, inactivity_timeout: int = 60) -> list[Path]:
    """Download a disk's layers as qcow2 files, base first, each backing the next.

    One file per layer, ``directory/<layer id>.qcow2``, each one's backing
    file being the previous one's name (relative, so the directory can be
    moved): ``qemu-img info --backing-chain`` and every qemu tool read
    the chain. ``snapshot`` (a VM snapshot id or description, or a layer
    id) stops at that point; default: the active layer. Each layer is a
    shallow download (ovirt-imageio docs: a layer's unallocated areas stay
    unallocated; the areas it zeroes become zero clusters). The directory
    must be empty or new; on failure the files written are removed (and
    the directory when it was made here).
    """
    return download_chain_result(conn, disk, directory, snapshot=snapshot,
                                 workers=workers, verify=verify, host=host,
                                 inactivity_timeout=inactivity_timeout).paths
