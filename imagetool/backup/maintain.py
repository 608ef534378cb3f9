"""Reading a backup repository: list, verify, restore, prune.

Everything here reads the qcow2 chains in pure Python (``imagetool.formats``):
no qemu-img, no temporary flattened copies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from dataclasses import replace
from typing import Any, Callable

from imagetool import checksum as block_checksum
from imagetool.checksum import GuestChecksum
from imagetool.backup.manifest import Manifest
from imagetool.backup.results import Restored, RestoredDisk, VerifyResult
from imagetool.backup.repo import (LOCK, MANIFEST, PENDING, Point, Repository, RepositoryError,
                                   read_file, sha256_file, write_json)
from imagetool.errors import ImagetoolError
from imagetool.fsutil import fsync_dir, opened
from imagetool.threads import shielded
from imagetool.formats import allocated_ranges, open_image
from imagetool.iocore.backend import Extent, union_ranges
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.iocore.copier import CopyOptions, copy
from imagetool.iocore.backends import SharedBackend

Progress = Callable[[int], None]


class VerifyError(ImagetoolError):
    """A file of the repository does not match its manifest."""

    def __init__(self, path: str, what: str):
        self.path = path
        super().__init__(f"{path}: {what}")


def _vm_ids(repo: Repository, vm: str | None) -> list[str]:
    return [repo.find_vm(vm)] if vm else repo.vm_ids()


def _layer_data(path: str) -> int:
    """Guest bytes this qcow2 file holds itself (data clusters, not zeros)."""
    if not os.path.isfile(path) or os.path.islink(path):
        return 0
    try:
        b = open_image(path, "r", format="qcow2", shallow=True)
    except (OSError, ImagetoolError):
        return 0
    try:
        return sum(e.length for e in b.extents() if not (e.hole or e.zero))
    finally:
        b.close()


def _allocated(path: str) -> int:
    try:
        return os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


# --- list --------------------------------------------------------------------------

def list_points(repository: str | os.PathLike, vm: str | None = None,
                progress: Progress | None = None) -> list[dict]:
    """The VMs of a repository with their points, oldest first.

    Per point: ``point``, ``time``, ``mode``, ``method``, ``parent``,
    ``size`` (bytes on disk), ``data`` (guest bytes its files hold
    themselves) and the disks. A VM directory without points (what a
    failed first backup leaves) is not listed.
    """
    repo = Repository(repository)
    out = []
    for vm_id in _vm_ids(repo, vm):
        pts = repo.points(vm_id)
        if not pts:
            continue
        items = []
        for p in pts:
            size = sum(_allocated(p.file(f)) for f in os.listdir(p.path))
            disks = [{"disk_id": d.disk_id, "name": d.name, "mode": d.mode,
                      "reason": d.reason, "virtual_size": d.virtual_size,
                      "path": p.file(d.files.file), "data": _layer_data(p.file(d.files.file)),
                      "checksum": d.checksum.value} for d in p.manifest.disks]
            m = p.manifest
            items.append({"point": p.name, "time": m.time, "mode": m.mode, "method": m.method,
                          "parent": p.parent, "size": size,
                          "data": sum(d["data"] for d in disks), "disks": disks,
                          "engine": m.engine})
            if progress:
                progress(1)
        out.append({"vm_id": vm_id, "vm_name": pts[-1].manifest.vm_name,
                    "points": items})
    return out


# --- verify ------------------------------------------------------------------------

def _check_sha(path: str, expected: str) -> None:
    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        raise VerifyError(path, "missing") from None
    except RepositoryError as e:
        raise VerifyError(path, str(e).removeprefix(f"{path}: ")) from None
    if actual != expected:
        raise VerifyError(path, f"SHA-256 {actual} differs from the manifest's {expected}")


def checked_ovf(p: Point) -> str:
    """A point's OVF text, its SHA-256 checked against the manifest."""
    ovf_path = p.file(p.manifest.ovf.file)
    _check_sha(ovf_path, p.manifest.ovf.sha256)
    return read_file(ovf_path).decode("utf-8", "replace")


def _split(repo: Repository, message: str) -> tuple[str, str]:
    """(path, what) of an error message ``path: what`` about a repository file."""
    if message.startswith(repo.root):
        i = message.find(": ", len(repo.root))
        if i > 0:
            return message[:i], message[i + 2:]
    return repo.root, message


def _is_repository(repo: Repository) -> bool:
    """Whether a VM directory holds a point or the lock every run takes."""
    for vm_id in repo.vm_ids():
        vdir = os.path.join(repo.root, vm_id)
        if os.path.lexists(os.path.join(vdir, LOCK)) or \
                any(os.path.lexists(os.path.join(vdir, n, MANIFEST))
                    for n in os.listdir(vdir)):
            return True
    return False


def verify(repository: str | os.PathLike, vm: str | None = None, point: str | None = None,
           progress: Progress | None = None, strict: bool = True) -> VerifyResult:
    """Check every file against its manifest, then each point's guest data.

    Files are checked by SHA-256; then each point's disks are read through
    their chains (checked by ``Repository.disk_files``) and their block
    checksum compared with the manifest's. Every bad file is reported, not
    only the first (``VerifyResult.errors``). ``strict``: raise VerifyError naming
    the first bad file instead of returning a failed report. A directory
    that is not a repository is a RepositoryError.
    """
    repo = Repository(repository)
    if point and not vm:
        raise ImagetoolError("a point is named within a VM: give the VM too")
    report = VerifyResult()
    bad = report.add
    vm_ids = _vm_ids(repo, vm)
    if not vm and not _is_repository(repo):
        raise RepositoryError(f"{repo.root}: not a backup repository (no VM directory "
                              "with restore points)")
    for vm_id in vm_ids:
        every = repo.scan_points(vm_id)
        pts = every
        if point:
            pts = [p for p in every if p.name == point]
            if not pts:
                raise RepositoryError(f"{repo.root}: VM {vm_id} has no point {point!r}")
            try:
                pts = repo.chain(pts[0], every)     # with the points it builds on
            except RepositoryError as e:
                bad(*_split(repo, str(e)))
        bad_files: set[str] = set()
        for p in pts:
            m = p.manifest
            checks = [(m.ovf.file, m.ovf.sha256)]
            for d in m.disks:
                checks += [(d.files.file, d.files.sha256), (d.digests, d.files.digests_sha256)]
            for name, sha in checks:
                report.files += 1
                try:
                    _check_sha(p.file(name), sha)
                except VerifyError as e:
                    bad(e.path, str(e).removeprefix(f"{e.path}: "))
                    bad_files.add(p.file(name))
            for d in m.disks:
                top = p.file(d.files.file)
                try:
                    chain_files = repo.disk_files(p, d.disk_id, every)
                except RepositoryError as e:
                    bad(*_split(repo, str(e)))
                    continue
                broken = [f for f in chain_files if f in bad_files]
                if broken:
                    if broken[0] != top:
                        bad(top, f"cannot be read: its chain holds the bad file {broken[0]}")
                    continue
                c = d.checksum
                try:
                    with repo.open_disk(p, d.disk_id, every) as b:
                        value = block_checksum.checksum(
                            b, algorithm=c.algorithm, block_size=c.block_size,
                            progress=progress)["checksum"]
                except (OSError, ValueError, ImagetoolError) as e:
                    bad(top, f"cannot be read through its chain: {e}")
                    continue
                if value != c.value:
                    bad(top, f"guest data checksum {value} differs from the manifest's "
                             f"{c.value}")
            report.points += 1
    for path, what in repo.problems:
        bad(path, what)
    if report.errors and strict:
        raise VerifyError(report.errors[0].path, report.errors[0].error)
    return report


# --- restore -----------------------------------------------------------------------

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
                  open_disk: Callable[[str], Any], *, storage_domain: str,
                  name: str | None = None, cluster: str | None = None, workers: int = 4,
                  inactivity_timeout: int = 60, progress: Progress | None = None,
                  start: float | None = None,
                  committed: Callable[[], None] | None = None) -> Restored:
    """Create a new VM from a checked point of either repository format:
    its ``manifest``, its ``ovf`` text, and
    ``open_disk(disk_id)``, a context manager giving a disk's guest data as
    a Backend (a qcow2 chain, or a chunk repository's ``PointBackend``
    whose clones fetch chunks in parallel). See :func:`restore_vm`."""
    from imagetool.transfer.disk import DiskOptions, add_disk, send
    from imagetool.vms import remove_made

    start = time.monotonic() if start is None else start
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


def find_chunk_vm(store: Any, vm: str) -> str:
    """A VM id of a chunk repository from an id or a name (its newest point's)."""
    from imagetool.backup.repo import find_vm_id
    from imagetool.backup.store import latest, list_points

    def has_name(vm_id: str, name: str) -> bool:
        ix = latest(store, vm_id)
        return ix is not None and ix.manifest.get("vm_name") == name

    return find_vm_id(store.url, vm, sorted({v for v, _ in list_points(store)}), has_name)


def restore_chunk_vm(conn: Any, store: Any, vm: str, *, storage_domain: str,
                     point: str | None = None, **kw: Any) -> Restored:
    """:func:`restore_vm` from a chunk repository (``imagetool.backup.store``,
    a directory or S3): the point's index and what ``backup create``
    recorded in it are checked first, then each disk is streamed from its
    chunks (fetched, checked against their ids, decrypted, by the
    transfer's workers in parallel) to a new disk, its engine checksum
    compared with the point's."""
    import hashlib

    from imagetool.backup.store import ObjectMissing, latest, load_index, open_disk
    start = time.monotonic()
    vm_id = find_chunk_vm(store, vm)
    try:
        ix = load_index(store, vm_id, point) if point else latest(store, vm_id)
    except ObjectMissing:
        ix = None
    if ix is None:
        raise RepositoryError(f"{store.url}: VM {vm_id} has no point {point!r}")
    where = f"{store.url}/{ix.object_name}"
    manifest = Manifest.from_index(ix, where)
    ovf = ix.ovf or ""
    if hashlib.sha256(ovf.encode()).hexdigest() != manifest.ovf.sha256:
        raise VerifyError(where, "the OVF's SHA-256 differs from the manifest's")
    return restore_point(conn, vm_id, ix.name, manifest, ovf,
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


# --- prune -------------------------------------------------------------------------

def _clip(extents: list[Extent], ranges: list[tuple[int, int]],
          zero_is_hole: bool) -> list[Extent]:
    out = []
    i = 0
    for start, end in ranges:
        pos = start
        while i < len(extents) and extents[i].start + extents[i].length <= pos:
            i += 1
        j = i
        while pos < end and j < len(extents):
            e = extents[j]
            a, b = max(pos, e.start), min(end, e.start + e.length)
            if b > a:
                zero = e.zero or e.hole
                out.append(Extent(a, b - a, zero=zero, hole=zero and zero_is_hole))
                pos = b
            if e.start + e.length <= pos:
                j += 1
            else:
                break
    # Fill the gaps with holes so the extents tile the image.
    tiled, pos = [], 0
    size = extents[-1].start + extents[-1].length if extents else 0
    for e in out:
        if e.start > pos:
            tiled.append(Extent(pos, e.start - pos, zero=True, hole=True))
        tiled.append(e)
        pos = e.start + e.length
    if pos < size:
        tiled.append(Extent(pos, size - pos, zero=True, hole=True))
    return tiled


def merge_layer_into(lowers: list[str], upper: str, reader: Any, out: str,
                     backing: str | None, workers: int = 2) -> None:
    """Write ``out``: ``upper``'s guest data over ``backing``.

    A qcow2 commit of the layers ``lowers`` (the files below ``upper`` that
    go away) into ``upper``: every range allocated in any of them is
    written from ``reader`` (``upper``'s chain, opened by the caller;
    ranges reading as zeros become zero clusters over a backing file,
    nothing without one); the rest stays unallocated and reads through
    ``backing``. ``out`` is removed again if anything fails.
    """
    ranges = union_ranges([r for f in lowers + [upper] for r in allocated_ranges(f, "qcow2")])
    try:
        writer = Qcow2Writer.create(out, reader.size, backing_file=backing,
                                    backing_format="qcow2" if backing else None)
        os.chmod(out, 0o600)
        with SharedBackend(writer) as dst:
            # Only the ranges a merged layer allocates; outside them nothing.
            extents = _clip(list(reader.extents()), ranges, zero_is_hole=backing is None)
            copy(reader, dst, CopyOptions(workers, dst_is_zero=True,
                                          over_backing=backing is not None),
                 extents=extents)
            dst.flush()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)
        raise


def prune(repository: str | os.PathLike, keep: int, vm: str | None = None,
          progress: Progress | None = None) -> list[dict]:
    """Keep the newest ``keep`` points of each VM.

    Each kept point whose parent is dropped gets the dropped layers its
    disks build on merged into its own files (rewritten to hold them all,
    backed by the first kept point below, or by nothing: then it is full),
    and only then are the dropped points deleted, so every kept point
    still restores. The chains to rewrite are checked as restore checks
    them (``Repository.disk_files``) before anything changes; symlinked VM
    and point directories are never followed. A merge a crash interrupted
    is finished (or undone) by the next prune (``finish_merges``). Returns per VM the points removed, the
    points rewritten and the points kept.
    """
    if keep < 1:
        raise ImagetoolError("--keep must be at least 1")
    repo = Repository(repository)
    out = []
    for vm_id in _vm_ids(repo, vm):
        with repo.locked(vm_id):
            vdir = repo.vm_dir(vm_id)
            for name in os.listdir(vdir):
                path = os.path.join(vdir, name)
                if not name.startswith(".") and not os.path.islink(path) \
                        and os.path.isdir(path):
                    finish_merges(path)
            pts = repo.points(vm_id)
            if not pts:
                continue
            dropped = {p.name for p in pts[:max(0, len(pts) - keep)]}
            todo = [k for k in pts[len(dropped):] if k.parent in dropped]
            for k in todo:      # every chain to rewrite is checked before any change
                for d in k.manifest.disks:
                    repo.disk_files(k, d.disk_id, pts)
            for k in todo:
                _merge_into(repo, k, dropped, pts)
            merged = [k.name for k in todo]
            for d in pts[:len(dropped)]:
                shutil.rmtree(d.path)
                if progress:
                    progress(1)
            fsync_dir(repo.vm_dir(vm_id))
            kept = repo.points(vm_id)
        out.append({"vm_id": vm_id, "vm_name": kept[-1].manifest.vm_name,
                    "removed": [p.name for p in pts[:len(dropped)]], "merged": merged,
                    "kept": [p.name for p in kept]})
    return out


def _merge_into(repo: Repository, k: Point, dropped: set[str], pts: list[Point]) -> None:
    """Rewrite kept point ``k`` so that it needs no point of ``dropped``."""
    by_name = {p.name: p for p in pts}
    parent = k.parent
    gone = []
    while parent in dropped:
        gone.append(parent)
        parent = by_name[parent].parent
    staged: list[tuple[str, str]] = []
    disks = []
    try:
        for d in k.manifest.disks:
            disks.append(d)
            files = repo.disk_files(k, d.disk_id, pts)
            lowers, backing = [], None
            for f in files[1:]:
                owner = os.path.basename(os.path.dirname(f))
                if owner not in dropped:
                    backing = f"../{owner}/{os.path.basename(f)}"
                    break
                lowers.append(f)
            if not lowers:
                continue
            tmp = k.file(d.files.file + ".merging")
            staged.append((tmp, k.file(d.files.file)))
            with repo.open_disk(k, d.disk_id, pts) as reader:
                merge_layer_into(lowers, files[0], reader, tmp, backing)
            disks[-1] = replace(d, files=replace(d.files, backing=backing,
                                                 sha256=sha256_file(tmp)),
                                **({"mode": "full", "reason": "merged with the points it "
                                    "built on by prune"} if backing is None else {}))
        manifest = replace(k.manifest, parent=parent, disks=tuple(disks),
                           mode="full" if parent is None else k.manifest.mode,
                           merged=sorted(set((k.manifest.merged or []) + gone)))
        for tmp, _ in staged:
            with opened(tmp) as fd:
                os.fsync(fd)
        # From here on the merge is rolled forward (finish_merges), never lost.
        write_json(k.file(PENDING), manifest.to_json())
        staged = []
        finish_merges(k.path)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def finish_merges(point_dir: str) -> None:
    """Complete or undo a merge a crash interrupted in this point.

    A merge writes each new file as ``<file>.merging``, then the new
    manifest as ``manifest.merging``, then renames the files and last the
    manifest. With the new manifest written, every file is complete: the
    renames are finished. Without it, the ``.merging`` files are dropped
    and the point is as it was.
    """
    names = os.listdir(point_dir)
    pending = PENDING in names
    for name in names:
        if name.endswith(".merging") and name != PENDING:
            path = os.path.join(point_dir, name)
            if pending:
                os.replace(path, path[:-len(".merging")])
            else:
                os.unlink(path)
    if pending:
        os.replace(os.path.join(point_dir, PENDING), os.path.join(point_dir, MANIFEST))
        fsync_dir(point_dir)
