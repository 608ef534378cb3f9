"""Upload a local image file as a new disk: inspect, create, transfer, finalize."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

from imagetool.engine.hosts import transfer_host
from imagetool.errors import (CorruptImage, ImagetoolError, TransferError,
                              UnsupportedFeature)
from imagetool.formats import inspect, open_image
from imagetool.formats.chain import backing_chain
from imagetool.formats.measure import measure
from imagetool.formats.convert import convert_backend
from imagetool.formats.raw import RawBackend
from imagetool.transfer import resume as resume_mod, verify as verifying
from imagetool.transfer.copier import DEFAULT_REQUEST_SIZE, CopyCancelled, copy
from imagetool.transfer.output import SharedBackend
from imagetool.transfer.session import TransferSession
from imagetool.transfer.urls import TransferResult

Progress = Callable[[int], None]

_DISK_FORMATS = {"raw": "raw", "qcow2": "cow", "cow": "cow"}


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


def _check_file(path: str, allow_outside_backing: bool = False) -> Any:
    info = inspect(path)
    if info.format not in ("raw", "qcow2", "vmdk"):
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


def _measure(path: str) -> int | None:
    """Space a sparse qcow2 volume needs for this image (qemu-img measure "required")."""
    return int(measure(path, out_format="qcow2")["required"])


def plan_upload(path: str | os.PathLike, *, disk_format: str | None = None,
                sparse: bool = True, transfer_format: str | None = None,
                legacy: bool = False, allow_outside_backing: bool = False) -> UploadPlan:
    """Decide the disk and transfer formats for one file.

    ISOs go as raw disks with content_type iso. The transfer moves guest
    data (``raw``) unless the engine is 4.1 (``legacy``) or ``cow`` is
    asked; a cow transfer to a cow disk sends a qcow2 file's own bytes
    (a raw or vmdk file is converted to a temporary qcow2 first). A vmdk,
    sparse like qcow2, becomes a cow disk unless raw is asked; its guest
    data is read from the vmdk itself.
    """
    path = os.fspath(path)
    info = _check_file(path, allow_outside_backing)
    content_type = "iso" if info.content_type == "iso" else "data"
    if content_type == "iso":
        if disk_format not in (None, "raw"):
            raise ImagetoolError(f"{path}: an ISO image is uploaded as a raw disk")
        disk_format = "raw"
    default = "qcow2" if info.format == "vmdk" else info.format
    fmt = _DISK_FORMATS.get((disk_format or default).lower())
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
        initial = _measure(path)
        if tformat == "cow":
            # A chain is flattened first: the volume gets one image's bytes.
            convert = info.format != "qcow2" or bool(info.backing_file)
            if not convert:
                # The volume receives the file's own bytes, all of them.
                initial = max(initial or 0, os.path.getsize(path))
        if not sparse and initial is not None:
            initial = None  # preallocated: the engine sizes it
    return UploadPlan(path=path, file_format=info.format,
                      virtual_size=info.virtual_size, content_type=content_type,
                      disk_format=fmt, transfer_format=tformat,
                      initial_size=initial if sparse else None, convert=convert)


def _convert_to_qcow2(path: str, tmpdir: str, workers: int) -> str:
    """A temporary qcow2 holding ``path``'s guest data (for cow transfers)."""

    out = os.path.join(tmpdir, os.path.basename(path) + ".qcow2")
    src = open_image(path, "r")
    try:
        convert_backend(src, out, "qcow2", workers=workers)
    finally:
        src.close()
    return out


def upload_disk_result(conn: Any, path: str | os.PathLike, storage_domain: str, *,
                       name: str | None = None, disk_format: str | None = None,
                       sparse: bool = True, disk_id: str | None = None,
                       transfer_format: str | None = None, workers: int = 4,
                       buffer_size: int = DEFAULT_REQUEST_SIZE,
                       timeout_policy: str | None = None,
                       inactivity_timeout: int = 60, use_proxy: bool = False,
                       progress: Progress | None = None,
                       description: str | None = None,
                       verify: bool = True, resume: bool = False,
                       host: str | None = None, host_index: int = 0,
                       allow_outside_backing: bool = False) -> TransferResult:
    """Like :func:`upload_disk` but returns what was moved (``.disk`` the Disk)."""

    start = time.monotonic()
    legacy = bool(getattr(conn, "legacy", False))
    plan = plan_upload(path, disk_format=disk_format, sparse=sparse,
                       transfer_format=transfer_format, legacy=legacy,
                       allow_outside_backing=allow_outside_backing)
    name = name or os.path.basename(plan.path)
    with ExitStack() as stack:
        source_path = plan.path
        if plan.convert:
            tmpdir = tempfile.mkdtemp(prefix="imagetool-upload-")
            stack.callback(shutil.rmtree, tmpdir, True)
            source_path = _convert_to_qcow2(plan.path, tmpdir, workers)
            if sparse:
                plan.initial_size = max(plan.initial_size or 0,
                                        os.path.getsize(source_path))
        # Before the disk exists: an unusable --host creates nothing.
        host_id = transfer_host(conn, host=host, index=host_index,
                                storage_domain=storage_domain)
        state = resume_mod.open_upload(conn, plan, storage_domain, name, disk_id,
                                       resume=resume, request_size=buffer_size)
        old_disk = state.disk_id if state else None
        disk = state.existing_disk(conn) if old_disk else conn.disks.add(
            name=name, provisioned_size=plan.virtual_size,
            storage_domain=storage_domain, format=plan.disk_format,
            sparse=sparse, initial_size=plan.initial_size,
            content_type=plan.content_type, disk_id=disk_id,
            description=description)
        try:
            from imagetool.engine.wait import wait_for_disk
            if not old_disk:
                wait_for_disk(conn, disk.id, "ok")
        except BaseException:
            if not old_disk:
                _remove_quietly(conn, disk.id)
            raise
        if plan.transfer_format == "cow" and plan.disk_format == "cow":
            src = RawBackend(source_path, "r")     # the qcow2 file's own bytes
            dst_is_zero = False                    # a volume's bytes: zero them
        else:
            src = open_image(source_path, "r")     # guest data
            dst_is_zero = sparse
        stack.callback(src.close)
        volume_bytes = plan.transfer_format == "cow" and plan.disk_format == "cow"
        verification = verifying.skipped("not asked (--no-verify)")
        local_hash = None
        session = TransferSession(conn, disk_id=disk.id, direction="upload",
                                  format=plan.transfer_format,
                                  inactivity_timeout=inactivity_timeout,
                                  timeout_policy=resume_mod.upload_timeout_policy(
                                      timeout_policy, resume),
                                  use_proxy=use_proxy, host_id=host_id)
        if state:
            state.prepare_session(conn, session, disk.id)
        try:
            with session:
                dst = session.open_backend()
                workers = max(1, min(workers, dst.max_writers or workers))
                cdst = (state.start(session, dst, SharedBackend(src)) if state else
                        resume_mod.retrying(dst, session, SharedBackend(src)))
                algorithm = None
                if verify:
                    algorithm = verifying.pick_algorithm(dst)
                    verifying.announce_upload_checksum(dst, algorithm)
                    local_hash = verifying.start_upload_hash(source_path, volume_bytes,
                                                             algorithm=algorithm)
                try:
                    stats = copy(SharedBackend(src), cdst, workers=workers,
                                 request_size=buffer_size, dst_is_zero=dst_is_zero,
                                 # a volume's file grows as its bytes arrive
                                 check_size=plan.transfer_format == "raw",
                                 progress=session.progress(progress),
                                 cancel_event=session.cancel_event,
                                 skip_ranges=state.journal.done if state else None)
                except CopyCancelled:
                    raise TransferError(f"upload of {plan.path} stopped: "
                                        f"{session.stop_reason or 'cancelled'}") from None
                if verify:
                    verification = verifying.verify_upload(
                        dst, source_path, volume_bytes=volume_bytes,
                        local=local_hash, what=plan.path, algorithm=algorithm)
        except BaseException as e:
            if local_hash is not None:
                local_hash.cancel()
            if session.transfer_id is None and not (state and state.resume):
                # No transfer was created: the engine will not clean up.
                _remove_quietly(conn, disk.id)
            if state:
                state.failed(e)     # with resume: re-raised with how to continue
            raise
        if state:
            state.journal.remove()
        final = conn.disks.get(disk.id)
    result = TransferResult(bytes=stats.bytes_total,
                            seconds=time.monotonic() - start,
                            format=plan.disk_format, checksum=verification.value,
                            verification=verification,
                            disk_id=disk.id, name=name, path=plan.path,
                            stats=stats, disk=final)
    return result


def _remove_quietly(conn: Any, disk_id: str) -> None:
    try:
        conn.disks.remove(disk_id)
    except Exception:
        pass


def upload_disk(conn: Any, path: str | os.PathLike, storage_domain: str, *,
                name: str | None = None, disk_format: str | None = None,
                sparse: bool = True, disk_id: str | None = None,
                transfer_format: str | None = None, workers: int = 4,
                buffer_size: int = DEFAULT_REQUEST_SIZE,
                timeout_policy: str | None = None, inactivity_timeout: int = 60,
                use_proxy: bool = False, progress: Progress | None = None,
                verify: bool = True, resume: bool = False,
                host: str | None = None) -> Any:
    """Upload a raw/qcow2/ISO file as a new disk on ``storage_domain``; return the Disk.

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
    result = upload_disk_result(
        conn, path, storage_domain, name=name, disk_format=disk_format,
        sparse=sparse, disk_id=disk_id, transfer_format=transfer_format,
        workers=workers, buffer_size=buffer_size, timeout_policy=timeout_policy,
        inactivity_timeout=inactivity_timeout, use_proxy=use_proxy,
        progress=progress, verify=verify, resume=resume, host=host)
    return result.disk
