"""Reading a backup repository: list, verify, restore, prune.

Everything here reads the qcow2 chains in pure Python (``imagetool.formats``):
no qemu-img, no temporary flattened copies.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from typing import Any, Callable

from imagetool import checksum as block_checksum
from imagetool.backup.repo import (OVF_FILE, Point, Repository,
                                   allocated_bytes, sha256_file, write_json)
from imagetool.errors import ChecksumMismatch, ImagetoolError
from imagetool.formats import allocated_ranges, open_image
from imagetool.formats.base import Extent, union_ranges
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.copier import CopyOptions, copy
from imagetool.backends import SharedBackend

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
    try:
        b = open_image(path, "r", format="qcow2", shallow=True)
    except (OSError, ImagetoolError):
        return 0
    try:
        return sum(e.length for e in b.extents() if not (e.hole or e.zero))
    finally:
        b.close()


# --- list --------------------------------------------------------------------------

def list_points(repository: str | os.PathLike, vm: str | None = None,
                progress: Progress | None = None) -> list[dict]:
    """The VMs of a repository with their points, oldest first.

    Per point: ``point``, ``time``, ``mode``, ``method``, ``parent``,
    ``size`` (bytes on disk), ``data`` (guest bytes its files hold
    themselves) and the disks.
    """
    repo = Repository(repository)
    out = []
    for vm_id in _vm_ids(repo, vm):
        pts = repo.points(vm_id)
        items = []
        for p in pts:
            size = sum(allocated_bytes(p.file(f)) for f in os.listdir(p.path))
            disks = [{"disk_id": d["disk_id"], "name": d.get("name"), "mode": d.get("mode"),
                      "virtual_size": d["virtual_size"], "path": p.file(d["file"]),
                      "data": _layer_data(p.file(d["file"])),
                      "checksum": d["checksum"]["value"]} for d in p.manifest["disks"]]
            items.append({"point": p.name, "time": p.manifest.get("time"),
                          "mode": p.manifest.get("mode"), "method": p.manifest.get("method"),
                          "parent": p.parent, "size": size,
                          "data": sum(d["data"] for d in disks), "disks": disks,
                          "engine": p.manifest.get("engine", {})})
            if progress:
                progress(1)
        out.append({"vm_id": vm_id,
                    "vm_name": pts[-1].manifest.get("vm_name") if pts else None,
                    "points": items})
    return out


# --- verify ------------------------------------------------------------------------

def _check_sha(path: str, expected: str) -> None:
    if not os.path.isfile(path):
        raise VerifyError(path, "missing")
    actual = sha256_file(path)
    if actual != expected:
        raise VerifyError(path, f"SHA-256 {actual} differs from the manifest's {expected}")


def verify(repository: str | os.PathLike, vm: str | None = None, point: str | None = None,
           progress: Progress | None = None) -> dict:
    """Check every file against its manifest, then each point's guest data.

    Files are checked by SHA-256; then each point's disks are read through
    their chains and their block checksum compared with the manifest's.
    Raises VerifyError naming the first bad file; returns counts.
    """
    repo = Repository(repository)
    if point and not vm:
        raise ImagetoolError("a point is named within a VM: give the VM too")
    files = points = 0
    for vm_id in _vm_ids(repo, vm):
        pts = repo.chain(repo.point(vm_id, point)) if point else repo.points(vm_id)
        for p in pts:
            m = p.manifest
            ovf = m.get("ovf")
            if ovf:
                _check_sha(p.file(ovf["file"]), ovf["sha256"])
                files += 1
            for d in m["disks"]:
                _check_sha(p.file(d["file"]), d["sha256"])
                _check_sha(p.file(d["digests"]), d["digests_sha256"])
                files += 2
            for d in m["disks"]:
                path = p.file(d["file"])
                c = d["checksum"]
                try:
                    b = open_image(path, "r", format="qcow2")
                except (OSError, ImagetoolError) as e:
                    raise VerifyError(path, f"cannot be read through its chain: {e}") from None
                try:
                    value = block_checksum.checksum(
                        b, algorithm=c["algorithm"], block_size=c["block_size"],
                        progress=progress)["checksum"]
                except (OSError, ImagetoolError) as e:
                    raise VerifyError(path, f"cannot be read through its chain: {e}") from None
                finally:
                    b.close()
                if value != c["value"]:
                    raise VerifyError(path, f"guest data checksum {value} differs from the "
                                            f"manifest's {c['value']}")
            points += 1
    return {"points": points, "files": files}


# --- restore -----------------------------------------------------------------------

def restore_vm(conn: Any, repository: str | os.PathLike, vm: str, *,
               storage_domain: str, point: str | None = None, name: str | None = None,
               cluster: str | None = None, workers: int = 4, inactivity_timeout: int = 60,
               progress: Progress | None = None) -> dict:
    """Create a new VM from a point: one new disk per backed-up disk.

    Each disk's guest data is uploaded straight from its chain (read as one
    image), the engine's checksum of the new disk is compared with the
    manifest's, and the VM is created from the point's OVF with the new
    disk ids. On failure the disks created so far are removed.
    """
    from imagetool.engine.wait import wait_for_disk
    from imagetool.transfer.session import TransferSession
    from imagetool.transfer.verify import announce_upload_checksum, remote_checksum

    start = time.monotonic()
    repo = Repository(repository)
    p = repo.point(repo.find_vm(vm), point)
    with open(p.file(OVF_FILE)) as f:
        ovf = f.read()
    created: list[str] = []
    disks_out = []
    moved = 0
    try:
        for entry in p.manifest["disks"]:
            with open_image(p.file(entry["file"]), "r", format="qcow2") as src:
                disk = conn.disks.add(
                    name=entry.get("name") or entry["disk_id"],
                    provisioned_size=entry["virtual_size"], storage_domain=storage_domain,
                    format=entry.get("format") or "cow", sparse=entry.get("sparse", True),
                    backup=entry.get("backup") if entry.get("format") == "cow" else None)
                created.append(disk.id)
                wait_for_disk(conn, disk.id, "ok")
                c = entry["checksum"]
                session = TransferSession(conn, disk_id=disk.id, direction="upload",
                                          format="raw", timeout_policy="cancel",
                                          inactivity_timeout=inactivity_timeout)
                with session:
                    dst = session.open_backend()
                    n = max(1, min(workers, dst.max_writers or workers))
                    announce_upload_checksum(dst, c["algorithm"], c["block_size"])
                    options = CopyOptions(n, dst_is_zero=entry.get("sparse", True))
                    stats = copy(SharedBackend(src), dst, options,
                                 progress=session.progress(progress),
                                 cancel_event=session.cancel_event)
                    remote = remote_checksum(dst, algorithm=c["algorithm"],
                                             block_size=c["block_size"])[0]["checksum"]
                    if remote != c["value"]:
                        raise ChecksumMismatch(c["value"], remote,
                                               f"restored disk {entry['disk_id']}")
                moved += stats.bytes_copied
            disks_out.append({"disk_id": disk.id, "source_disk_id": entry["disk_id"],
                              "name": entry.get("name"), "checksum": remote})
        new_ovf = ovf
        for d in disks_out:
            new_ovf = new_ovf.replace(d["source_disk_id"], d["disk_id"])
        new_ovf = new_ovf.replace(p.vm_id, str(uuid.uuid4()))
        vm_name = name or f"{p.manifest.get('vm_name') or p.vm_id}-restored-{p.name}"
        new_vm = conn.vms.add(name=vm_name, cluster=cluster or "Default", ovf=new_ovf)
        _attach_missing(conn, new_vm.id, p, disks_out)
    except BaseException:
        for disk_id in created:
            try:
                conn.disks.remove(disk_id)
            except Exception:
                pass
        raise
    return {"vm_id": new_vm.id, "vm_name": vm_name, "point": p.name, "bytes": moved,
            "seconds": round(time.monotonic() - start, 3), "disks": disks_out}


def _attach_missing(conn: Any, vm_id: str, p: Point, disks_out: list[dict]) -> None:
    """Attach disks the engine did not take from the OVF (an OVF it did not parse fully)."""
    attached = {a.disk_id for a in conn.vms.disk_attachments(vm_id)}
    for d in disks_out:
        if d["disk_id"] in attached:
            continue
        entry = p.disk(d["source_disk_id"]) or {}
        conn.vms.attach_disk(vm_id, d["disk_id"], interface=entry.get("interface")
                             or "virtio_scsi", bootable=bool(entry.get("bootable")))


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


def merge_layer_into(lower: str, upper: str, out: str, backing: str | None,
                     workers: int = 2) -> None:
    """Write ``out``: ``upper``'s guest data over ``backing`` (``lower``'s backing).

    A qcow2 commit of ``lower`` into ``upper``: every range allocated in
    either layer is written from ``upper``'s chain (ranges reading as zeros
    become zero clusters over a backing file, nothing without one); the
    rest stays unallocated and reads through ``backing``.
    """
    ranges = union_ranges(allocated_ranges(lower, "qcow2") + allocated_ranges(upper, "qcow2"))
    with open_image(upper, "r", format="qcow2") as reader:
        writer = Qcow2Writer.create(out, reader.size, backing_file=backing,
                                    backing_format="qcow2" if backing else None)
        with SharedBackend(writer) as dst:
            # Only the ranges either layer allocates; outside them nothing.
            extents = _clip(list(reader.extents()), ranges, zero_is_hole=backing is None)
            copy(reader, dst, CopyOptions(workers, dst_is_zero=True,
                                          over_backing=backing is not None),
                 extents=extents)
            dst.flush()


def prune(repository: str | os.PathLike, keep: int, vm: str | None = None,
          progress: Progress | None = None) -> list[dict]:
    """Keep the newest ``keep`` points of each VM.

    A dropped point that a later point builds on is first merged into that
    point (its files are rewritten to hold both layers, backed by what the
    dropped point was backed by), so every kept point still restores.
    Returns per VM the points removed and the points rewritten.
    """
    if keep < 1:
        raise ImagetoolError("--keep must be at least 1")
    repo = Repository(repository)
    out = []
    for vm_id in _vm_ids(repo, vm):
        removed, merged = [], []
        with repo.locked(vm_id):
            pts = repo.points(vm_id)
            for d in pts[:max(0, len(pts) - keep)]:
                for s in [p for p in repo.points(vm_id) if p.parent == d.name]:
                    _merge_point(d, s)
                    merged.append(s.name)
                shutil.rmtree(d.path)
                removed.append(d.name)
                if progress:
                    progress(1)
        out.append({"vm_id": vm_id, "removed": removed, "merged": sorted(set(merged)),
                    "kept": [p.name for p in repo.points(vm_id)]})
    return out


def _merge_point(lower: Point, upper: Point) -> None:
    manifest = dict(upper.manifest)
    disks = [dict(d) for d in manifest["disks"]]
    own = {f"../{lower.name}/{d['file']}": d for d in lower.manifest["disks"]}
    replaced = []
    for d in disks:
        low = own.get(d.get("backing") or "")
        if low is None:
            continue
        tmp = upper.file(d["file"] + ".merging")
        merge_layer_into(lower.file(low["file"]), upper.file(d["file"]), tmp,
                         low.get("backing"))
        d["backing"] = low.get("backing")
        d["sha256"] = sha256_file(tmp)
        if d["backing"] is None:
            d["mode"] = "full"
        replaced.append((tmp, upper.file(d["file"])))
    manifest["disks"] = disks
    manifest["parent"] = lower.parent
    if lower.parent is None:
        manifest["mode"] = "full"
    manifest["merged"] = sorted(set(manifest.get("merged", []) + [lower.name]))
    for tmp, final in replaced:
        os.replace(tmp, final)
    write_json(upper.file("manifest.json"), manifest)

