"""Upload a local image file as a new disk: inspect, create, transfer, finalize.

The file is inspected once (:func:`check_source`) and its guest data
opened once; the plan, the copy and the checksum computed beside the copy
all use that one inspection and that one open image (the hash reads a
clone with its own descriptor).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

from imagetool.engine.hosts import transfer_host
from imagetool.errors import CorruptImage, ImagetoolError, UnsupportedFeature
from imagetool.formats import FORMATS, ImageInfo, inspect, open_image
from imagetool.iocore.backend import Backend
from imagetool.formats.chain import backing_chain
from imagetool.formats.measure import measure
from imagetool.formats.convert import convert_backend
from imagetool.formats.raw import RawBackend
from imagetool.transfer import resume as resume_mod
from imagetool.transfer.disk import DiskOptions, add_disk, send
from imagetool.transfer.options import UploadOptions, keywords_of, resolve
from imagetool.transfer.urls import TransferResult

__all__ = ["UploadOptions", "UploadPlan", "check_source", "plan_upload",
           "upload_disk", "upload_disk_result"]

Progress = Callable[[int], None]



def _disk_format(name: str) -> str | None:
    """The engine's disk format (raw, cow) a disk format named by a file
    format (raw, qcow2) or by the engine's own name means; None: unknown."""
    names = {n: f.disk_format for n, f in FORMATS.items() if f.disk_format}
    return names.get(name) or (name if name in names.values() else None)


@dataclass
class UploadPlan:
    """What will be created and moved for one file (decided before any engine call)."""

    path: str
    file_format: str          # raw | qcow2 | vmdk
    virtual_size: int
    content_type: str         # data | iso
    disk_format: str          # raw | cow (engine names)
    transfer_format: str      # raw (guest data) | cow (volume bytes)
    initial_size: int | None
    # For cow transfers of a raw file: convert to a temporary qcow2 first.
    convert: bool = False

    @property
    def volume_bytes(self) -> bool:
        """The transfer sends a qcow2 file's own bytes (cow to a cow disk)."""
        return self.transfer_format == "cow" and self.disk_format == "cow"


def check_source(path: str | os.PathLike, allow_outside_backing: bool = False) -> ImageInfo:
    """Inspect ``path`` and refuse what cannot be uploaded; the one inspection."""
    path = os.fspath(path)
    info = inspect(path)
    if info.format not in FORMATS:
        raise UnsupportedFeature(f"cannot upload {info.format} images", path)
    if info.encrypted:
        raise UnsupportedFeature("encrypted qcow2 images cannot be uploaded; "
                                 "decrypt it first (qemu-img convert)", path)
    if info.backing_file:
        # The guest view of the whole chain is uploaded: every layer must open.
        backing_chain(path, allow_outside=allow_outside_backing)
    if info.corrupt:
        raise CorruptImage("the image is marked corrupt; repair it with "
                           "qemu-img check -r all first", path)
    if info.data_file:
        raise UnsupportedFeature("qcow2 images with an external data file "
                                 "cannot be uploaded", path)
    return info


def plan_upload(path: str | os.PathLike, *, disk_format: str | None = None,
                sparse: bool = True, transfer_format: str | None = None,
                legacy: bool = False, allow_outside_backing: bool = False,
                info: ImageInfo | None = None, guest: Backend | None = None) -> UploadPlan:
    """Decide the disk and transfer formats for one file.

    ISOs go as raw disks with content_type iso. The transfer moves guest
    data (``raw``) unless the engine is 4.1 (``legacy``) or ``cow`` is
    asked; a cow transfer to a cow disk sends a qcow2 file's own bytes
    (a raw or vmdk file is converted to a temporary qcow2 first). A vmdk,
    sparse like qcow2, becomes a cow disk unless raw is asked; its guest
    data is read from the vmdk itself. ``info`` (from :func:`check_source`)
    and ``guest`` (the file's guest data, open) save inspecting and opening
    the file again.
    """
    path = os.fspath(path)
    info = info or check_source(path, allow_outside_backing)
    content_type = "iso" if info.content_type == "iso" else "data"
    if content_type == "iso":
        if disk_format not in (None, "raw"):
            raise ImagetoolError(f"{path}: an ISO image is uploaded as a raw disk")
        disk_format = "raw"
    # A format the engine cannot store as it is (vmdk) becomes qcow2.
    default = info.format if FORMATS[info.format].disk_format else "qcow2"
    fmt = _disk_format((disk_format or default).lower())
    if fmt is None:
        raise ImagetoolError(f"unknown disk format {disk_format!r} (raw or qcow2)")
    tformat = transfer_format or ("cow" if legacy else "raw")
    if tformat not in ("raw", "cow"):
        raise ImagetoolError(f"unknown transfer format {tformat!r} (raw or cow)")
    if legacy and tformat == "raw":
        raise ImagetoolError("this engine (4.1) only moves volume bytes: "
                             "use transfer format cow")
    initial = None
    convert = False
    if fmt == "cow":
        initial = _measure(path, info, guest)
        if tformat == "cow":
            # A chain is flattened first: the volume gets one image's bytes.
            convert = FORMATS[info.format].disk_format != "cow" or bool(info.backing_file)
            if not convert:
                # The volume receives the file's own bytes, all of them.
                initial = max(initial or 0, os.path.getsize(path))
    return UploadPlan(path=path, file_format=info.format,
                      virtual_size=info.virtual_size, content_type=content_type,
                      disk_format=fmt, transfer_format=tformat,
                      initial_size=initial if sparse else None, convert=convert)


def _measure(path: str, info: ImageInfo, guest: Backend | None) -> int:
    """Space a sparse qcow2 volume needs for this image (qemu-img measure "required")."""
    if guest is None:
        with open_image(path, "r", format=info.format) as guest:
            return int(measure(guest, out_format="qcow2")["required"])
    return int(measure(guest, out_format="qcow2")["required"])


@keywords_of(UploadOptions)
def upload_disk_result(conn: Any, path: str | os.PathLike, storage_domain: str,
                       options: UploadOptions | None = None, *,
                       progress: Progress | None = None, **keywords: Any) -> TransferResult:
    """Like :func:`upload_disk` but returns what was moved (``.disk`` the Disk)."""
    opts = resolve(UploadOptions, options, keywords)
    start = time.monotonic()
    path = os.fspath(path)
    info = check_source(path, opts.allow_outside_backing)
    with ExitStack() as stack:
        guest = stack.enter_context(open_image(path, "r", format=info.format))
        plan = plan_upload(path, disk_format=opts.disk_format,
                           sparse=opts.sparse, transfer_format=opts.transfer_format,
                           legacy=bool(getattr(conn, "legacy", False)),
                           info=info, guest=guest)
        source_path = plan.path
        if plan.convert:
            tmpdir = tempfile.mkdtemp(prefix="imagetool-upload-")
            stack.callback(shutil.rmtree, tmpdir, True)
            # A temporary qcow2 of the guest data: a cow volume gets one image's bytes.
            source_path = os.path.join(tmpdir, os.path.basename(plan.path) + ".qcow2")
            with open_image(plan.path, "r") as whole:
                convert_backend(whole, source_path, "qcow2", workers=opts.workers)
            if opts.sparse:
                plan.initial_size = max(plan.initial_size or 0,
                                        os.path.getsize(source_path))
        # What the transfer sends: the guest data, or a qcow2 file's own bytes.
        src = guest
        if plan.volume_bytes:
            src = stack.enter_context(RawBackend(source_path, "r"))
        name = opts.name or os.path.basename(plan.path)
        sent, disk = _transfer(conn, plan, src, storage_domain, name, opts, progress)
    return TransferResult(bytes=sent.stats.bytes_total, seconds=time.monotonic() - start,
                          format=plan.disk_format, checksum=sent.verification.value,
                          verification=sent.verification, disk_id=disk.id, name=name,
                          path=plan.path, stats=sent.stats, disk=disk)


def _transfer(conn: Any, plan: UploadPlan, src: Backend, storage_domain: str,
              name: str, opts: UploadOptions, progress: Progress | None) -> tuple[Any, Any]:
    """Create (or find again) the disk and send ``src`` into it: (Sent, Disk)."""
    # Before the disk exists: an unusable host creates nothing.
    host_id = transfer_host(conn, host=opts.host, index=opts.host_index,
                            storage_domain=storage_domain)
    state = resume_mod.open_upload(conn, plan, storage_domain, name, opts.disk_id,
                                   resume=opts.resume, request_size=opts.buffer_size)
    try:
        # Built before the disk exists: between the disk's creation and
        # send's own clean-up there is no work for a Ctrl-C to land in.
        options = DiskOptions(
            format=plan.transfer_format, workers=opts.workers, buffer_size=opts.buffer_size,
            inactivity_timeout=opts.inactivity_timeout, use_proxy=opts.use_proxy,
            host_id=host_id,
            timeout_policy=resume_mod.upload_timeout_policy(opts.timeout_policy, opts.resume),
            dst_is_zero=opts.sparse and not plan.volume_bytes, journal=state,
            verify=opts.verify, volume_bytes=plan.volume_bytes, what=plan.path)
        disk = _target_disk(conn, plan, state, storage_domain, name, opts)
    except BaseException:
        # No disk, nothing to resume into: a plain upload's journal goes
        # (send drops it on the later failures).
        if state is not None and not state.resume:
            state.journal.remove()
        raise
    sent = send(conn, src, disk, options, progress=progress)
    return sent, conn.disks.get(disk.id)


def _target_disk(conn: Any, plan: UploadPlan, state: Any, storage_domain: str,
                 name: str, opts: UploadOptions) -> Any:
    """The disk to upload into: the interrupted upload's, or a new one (ok)."""
    if state and state.disk_id:
        return state.existing_disk(conn)
    return add_disk(
        conn, name=name, provisioned_size=plan.virtual_size, storage_domain=storage_domain,
        format=plan.disk_format, sparse=opts.sparse, initial_size=plan.initial_size,
        content_type=plan.content_type, disk_id=opts.disk_id,
        description=opts.description,
        # As the oVirt SDK upload examples do: a qcow2 disk takes part in
        # checkpoints (VM backup API, 4.4+), so it can be backed up
        # incrementally; raw disks cannot (the engine refuses them).
        backup="incremental" if plan.disk_format == "cow" else None)


@keywords_of(UploadOptions)
def upload_disk(conn: Any, path: str | os.PathLike, storage_domain: str,
                options: UploadOptions | None = None, *,
                progress: Progress | None = None, **keywords: Any) -> Any:
    """Upload a raw/qcow2/ISO file as a new disk on ``storage_domain``; return the Disk.

    ``options`` (an :class:`UploadOptions`) or its fields as keywords:
    ``disk_format`` raw|qcow2 (default: the file's format; ISOs are raw with
    content_type iso). ``transfer_format`` raw (guest data, the default on
    4.2+ engines) or cow (volume bytes; 4.1 engines). ``workers`` parallel
    connections (capped by the server's max_writers), ``buffer_size`` bytes
    per request. ``progress(nbytes)`` is called as data moves. On any
    failure (Ctrl-C included) the transfer is cancelled, so no disk stays
    locked, and the error is raised. ``verify`` (default) compares the
    server's block checksum with the source's before finalizing
    (imagetool.transfer.verify); a mismatch cancels and raises
    ChecksumMismatch. ``resume`` continues an interrupted upload of the same
    file (see imagetool.transfer.resume) and keeps the transfer on failure.
    ``host`` (name or id) serves the transfer (default: see
    imagetool.engine.hosts).
    """
    return upload_disk_result(conn, path, storage_domain, options,
                              progress=progress, **keywords).disk
