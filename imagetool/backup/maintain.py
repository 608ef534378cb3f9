"""Reading a backup repository: list, verify, prune (restore: ``restore.py``).

Everything here reads the qcow2 chains in pure Python (``imagetool.formats``):
no qemu-img, no temporary flattened copies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import replace
from typing import Any, Callable

from imagetool import checksum as block_checksum
from imagetool.backup.results import VerifyResult
from imagetool.backup.repo import (LOCK, MANIFEST, PENDING, Point, Repository, RepositoryError,
                                   read_file, sha256_file, write_json)
from imagetool.errors import ImagetoolError
from imagetool.fsutil import fsync_dir, opened
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
