"""Restoring a backup: a new VM from a point of either repository format.

The disks are streamed from the point (a qcow2 chain read in pure Python,
or a chunk repository's chunks) straight into new disks: no temporary
flattened copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from typing import Any, Callable

from imagetool.backup.maintain import Progress, VerifyError, checked_ovf
from imagetool.backup.manifest import Manifest
from imagetool.backup.repo import Repository
from imagetool.backup.results import Restored, RestoredDisk
from imagetool.checksum import GuestChecksum
from imagetool.threads import shielded


def restored_disk_name(vm_name: str, old_vm_name: str | None, disk_name: str | None,
                       index: int) -> str:
    """A restored disk's name, after its new VM: ``web1-os`` of VM ``web1``
    restored as ``web1-copy`` is ``web1-copy-os``; a name without the old
    VM's prefix gets the new VM's in front; no name, ``<vm>-disk<n>``."""
    if not disk_name:
        return f"{vm_name}-disk{index}"
    if old_vm_name and disk_name.startswith(old_vm_name):
        return vm_name + disk_name[len(old_vm_name):]
    return f"{vm_name}-{disk_name}"


def restore_vm(conn: Any, repository: str | os.PathLike, vm: str, *,
               storage_domain: str, point: str | None = None, name: str | None = None,
               cluster: str | None = None, workers: int = 4, inactivity_timeout: int = 60,
               progress: Progress | None = None,
               committed: Callable[[], None] | None = None) -> Restored:
    """Create a new VM from a point: one new disk per backed-up disk.

    Each disk's guest data is uploaded straight from its chain (read as one
    image, through the chain ``Repository.disk_files`` checks: a backing
    file other than the parent point's is refused before anything is
    created), the engine's checksum of the new disk is compared with the
    manifest's, and the VM is created from the point's OVF (its SHA-256
    checked) with the new disk ids. The new disks are named after the new
    VM. On failure the disks created so far are removed. ``committed()``
    is called once the VM is complete, before this returns: a Ctrl-C
    before it removes everything, after it nothing (the CLI then ignores
    Ctrl-C until it has reported the VM).
    """
    start = time.monotonic()
    repo = Repository(repository)
    vm_id = repo.find_vm(vm)
    every = repo.points(vm_id)
    p = repo.point(vm_id, point)
    ovf = checked_ovf(p)
    for entry in p.manifest.disks:      # every chain checked before anything is made
        repo.disk_files(p, entry.disk_id, every)
    return restore_point(conn, vm_id, p.name, p.manifest, ovf,
                         lambda disk_id: repo.open_disk(p, disk_id, every),
                         storage_domain=storage_domain, name=name, cluster=cluster,
                         workers=workers, inactivity_timeout=inactivity_timeout,
                         progress=progress, start=start, committed=committed)


def restore_point(conn: Any, vm_id: str, point: str, manifest: Manifest, ovf: str,
                  open_disk: Callable[[str], Any], *, storage_domain: str, start: float,
                  name: str | None = None, cluster: str | None = None, workers: int = 4,
                  inactivity_timeout: int = 60, progress: Progress | None = None,
                  committed: Callable[[], None] | None = None) -> Restored:
    """Create a new VM from a checked point of either repository format:
    its ``manifest``, its ``ovf`` text, and ``open_disk(disk_id)``, a
    context manager giving a disk's guest data as a Backend (a qcow2 chain,
    or a chunk repository's ``PointBackend`` whose clones fetch chunks in
    parallel). ``start``: when the caller began (the lookup and checks
    count in the time reported). See :func:`restore_vm`."""
    from imagetool.transfer.disk import DiskOptions, add_disk, send
    from imagetool.vms import remove_made

    old_name = manifest.vm_name
    vm_name = name or f"{old_name or vm_id}-restored-{point}"
    created: list[str] = []
    made = None                 # the new VM's id, once the engine has it
    adding = None               # its name, once its add is sent
    disks_out: list[RestoredDisk] = []
    moved = 0
    try:
        for i, entry in enumerate(manifest.disks):
            sparse = True if entry.sparse is None else entry.sparse
            with open_disk(entry.disk_id) as src:
                disk = add_disk(
                    conn, created, name=restored_disk_name(vm_name, old_name, entry.name, i),
                    provisioned_size=entry.virtual_size, storage_domain=storage_domain,
                    format=entry.format or "cow", sparse=sparse,
                    backup=entry.backup if entry.format == "cow" else None)
                c = entry.checksum
                sent = send(conn, src, disk, DiskOptions(
                    workers=workers, timeout_policy="cancel",
                    inactivity_timeout=inactivity_timeout, dst_is_zero=sparse,
                    algorithm=c.algorithm, block_size=c.block_size, expected=c.value,
                    what=f"restored disk {entry.disk_id}"), progress=progress)
                moved += sent.stats.bytes_copied
            disks_out.append(RestoredDisk(
                disk_id=disk.id, source_disk_id=entry.disk_id, name=disk.name,
                source_name=entry.name, checksum=GuestChecksum(
                    sent.verification.value, c.algorithm, c.block_size)))
        new_ovf = ovf
        for d in disks_out:
            new_ovf = new_ovf.replace(d.source_disk_id, d.disk_id)
        new_ovf = new_ovf.replace(vm_id, str(uuid.uuid4()))
        adding = vm_name
        new_vm = conn.vms.add(name=vm_name, cluster=cluster or "Default", ovf=new_ovf)
        made = new_vm.id
        _attach_missing(conn, new_vm.id, manifest, disks_out)
        _rename_disks(conn, disks_out)
        out = Restored(vm_id=new_vm.id, vm_name=vm_name, point=point, bytes=moved,
                       seconds=time.monotonic() - start, disks=disks_out)
        if committed is not None:
            committed()
    except BaseException:
        shielded(lambda: remove_made(conn, "vm", made, created, adding))
        raise
    return out


def restore_chunk_vm(conn: Any, store: Any, vm: str, *, storage_domain: str,
                     point: str | None = None, **kw: Any) -> Restored:
    """:func:`restore_vm` from a chunk repository (``imagetool.backup.store``,
    a directory or S3): the point's index and what ``backup create``
    recorded in it are checked first, then each disk is streamed from its
    chunks (fetched, checked against their ids, decrypted, by the
    transfer's workers in parallel) to a new disk, its engine checksum
    compared with the point's."""
    from imagetool.backup.store import open_disk
    from imagetool.backup.store.points import find_point
    start = time.monotonic()
    ix = find_point(store, vm, point)
    where = f"{store.url}/{ix.object_name}"
    manifest = Manifest.from_index(ix, where)
    ovf = ix.ovf or ""
    if hashlib.sha256(ovf.encode()).hexdigest() != manifest.ovf.sha256:
        raise VerifyError(where, "the OVF's SHA-256 differs from the manifest's")
    return restore_point(conn, ix.vm_id, ix.name, manifest, ovf,
                         lambda disk_id: contextlib.closing(open_disk(store, ix, disk_id)),
                         storage_domain=storage_domain, start=start, **kw)


def _rename_disks(conn: Any, disks_out: list[RestoredDisk]) -> None:
    """Put the new names back where the OVF gave the disks their old aliases."""
    for d in disks_out:
        if conn.disks.get(d.disk_id).name != d.name:
            conn.disks.rename(d.disk_id, d.name)


def _attach_missing(conn: Any, vm_id: str, manifest: Manifest,
                    disks_out: list[RestoredDisk]) -> None:
    """Attach disks the engine did not take from the OVF (an OVF it did not parse fully)."""
    attached = {a.disk_id for a in conn.vms.disk_attachments(vm_id)}
    for d in disks_out:
        if d.disk_id in attached:
            continue
        entry = manifest.disk(d.source_disk_id)
        conn.vms.attach_disk(vm_id, d.disk_id, interface=entry and entry.interface
                             or "virtio_scsi", bootable=bool(entry and entry.bootable))
