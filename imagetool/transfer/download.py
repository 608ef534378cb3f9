"""Download a disk (or one disk snapshot) to a local raw or qcow2 file."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from imagetool.engine.hosts import transfer_host
from imagetool.errors import ImagetoolError, TransferError
from imagetool.transfer import resume as resume_mod, verify as verifying
from imagetool.transfer.copier import DEFAULT_REQUEST_SIZE, CopyCancelled
from imagetool.transfer.output import atomic_output, check_destination
from imagetool.transfer.session import TransferSession
from imagetool.transfer.urls import TransferResult, write_file

Progress = Callable[[int], None]


def _resolve_disk(conn: Any, disk: Any) -> Any:
    if isinstance(disk, str):
        return conn.disks.find(disk)
    return disk


def download_disk_result(conn: Any, disk: Any, path: str | os.PathLike, *,
                         format: str = "raw", snapshot_id: str | None = None,
                         shallow: bool = False, backing_file: str | None = None,
                         force: bool = False, workers: int = 4,
                         buffer_size: int = DEFAULT_REQUEST_SIZE,
                         inactivity_timeout: int = 60, use_proxy: bool = False,
                         progress: Progress | None = None,
                         verify: bool = True, resume: bool = False,
                         snapshot: Any = None, host: str | None = None,
                         host_index: int = 0) -> TransferResult:
    """Like :func:`download_disk` (``snapshot`` or its alias ``snapshot_id``).

    ``host_index``: this download's number in a bulk run, so that the
    automatic host choice spreads them over the Up hosts."""
    snapshot_id = _snapshot_id(snapshot, snapshot_id)
    if format not in ("raw", "qcow2"):
        raise ImagetoolError(f"unsupported download format {format!r} (raw or qcow2)")
    if backing_file and format != "qcow2":
        raise ImagetoolError("a backing file needs the qcow2 format")
    start = time.monotonic()
    check_destination(path, force)          # before the engine locks anything
    disk = _resolve_disk(conn, disk)
    legacy = bool(getattr(conn, "legacy", False))
    # 4.1 engines only move volume bytes: a cow volume arrives as qcow2.
    volume_is_qcow2 = legacy and disk.format == "cow"
    host_id = transfer_host(conn, disk.storage_domain_ids, host, host_index)
    # Raw guest data always journals, so a killed download can be resumed.
    if resume_mod.resumable_download(path, resume, format, legacy, backing_file):
        stats, checked = resume_mod.download_resumable(
            conn, disk, path, resume=resume, workers=workers, buffer_size=buffer_size,
            inactivity_timeout=inactivity_timeout, use_proxy=use_proxy,
            progress=progress, snapshot_id=snapshot_id, verify=verify, shallow=shallow,
            host_id=host_id)
        if checked is None:
            checked = verifying.skipped("not asked (--no-verify)")
        return TransferResult(bytes=stats.bytes_total, seconds=time.monotonic() - start,
                              format=format, disk_id=disk.id, name=disk.name,
                              path=os.fspath(path), stats=stats, disk=disk,
                              checksum=checked.value, verification=checked)
    verification = verifying.skipped("not asked (--no-verify)")
    with atomic_output(path, force) as tmp:
        session = TransferSession(
            conn, disk_id=disk.id, snapshot_id=snapshot_id, direction="download",
            format="cow" if legacy else "raw", shallow=shallow or None,
            inactivity_timeout=inactivity_timeout, use_proxy=use_proxy, host_id=host_id)
        # Leaving the session finalizes (or cancels) before the file is
        # renamed, so a failed transfer never leaves a file behind.
        with session:
            # Transient data-plane errors are retried per request (reads are idempotent).
            src = resume_mod.retrying(session.open_backend(), session)
            try:
                if volume_is_qcow2:
                    raw_tmp = tmp + ".volume"
                    stats = write_file(src, raw_tmp, format="raw", workers=workers,
                                       request_size=buffer_size,
                                       progress=session.progress(progress),
                                       cancel_event=session.cancel_event)
                else:
                    stats = write_file(src, tmp, format=format, workers=workers,
                                       request_size=buffer_size,
                                       progress=session.progress(progress),
                                       cancel_event=session.cancel_event,
                                       backing_file=backing_file,
                                       backing_format="qcow2" if backing_file else None)
            except CopyCancelled:
                raise TransferError(f"download of {disk.name or disk.id} stopped: "
                                    f"{session.stop_reason or 'cancelled'}") from None
            if verify:      # before finalize; a mismatch cancels and drops tmp
                verification = verifying.verify_download(
                    src, tmp + ".volume" if volume_is_qcow2 else tmp,
                    format="raw" if volume_is_qcow2 else format,
                    shallow=bool(backing_file), what=os.fspath(path))
        if volume_is_qcow2:
            _from_volume(tmp + ".volume", tmp, format, workers)
    return TransferResult(bytes=stats.bytes_total, seconds=time.monotonic() - start,
                          format=format, disk_id=disk.id, name=disk.name,
                          path=os.fspath(path), stats=stats, disk=disk,
                          checksum=verification.value, verification=verification)


def _from_volume(volume: str, out: str, format: str, workers: int) -> None:
    """Turn a downloaded qcow2 volume into the asked format, then drop it."""
    try:
        if format == "qcow2":
            os.replace(volume, out)
            return
        from imagetool.formats import open_image
        from imagetool.formats.convert import convert_backend

        src = open_image(volume, "r", format="qcow2")
        try:
            convert_backend(src, out, "raw", workers=workers)
        finally:
            src.close()
    finally:
        if os.path.exists(volume):
            os.unlink(volume)


def _snapshot_id(snapshot: Any, snapshot_id: str | None) -> str | None:
    """One snapshot id from the documented ``snapshot`` and its alias
    ``snapshot_id``; ``snapshot`` may be an id or an object with ``.id``."""
    if snapshot is not None and not isinstance(snapshot, str):
        snapshot = getattr(snapshot, "id", None) or snapshot
        if not isinstance(snapshot, str):
            raise TypeError(f"snapshot must be a snapshot id or have an .id, "
                            f"not {type(snapshot).__name__}")
    if snapshot is not None and snapshot_id is not None and snapshot != snapshot_id:
        raise TypeError("give snapshot or snapshot_id (an alias), not two different ones")
    return snapshot if snapshot is not None else snapshot_id


def download_disk(conn: Any, disk: Any, path: str | os.PathLike, *,
                  format: str = "raw", snapshot: Any = None,
                  shallow: bool = False, backing_file: str | None = None,
                  force: bool = False, workers: int = 4,
                  buffer_size: int = DEFAULT_REQUEST_SIZE,
                  inactivity_timeout: int = 60, use_proxy: bool = False,
                  progress: Progress | None = None,
                  verify: bool = True, resume: bool = False,
                  snapshot_id: str | None = None, host: str | None = None) -> TransferResult:
    """Download ``disk`` (a Disk, or a disk id or name) to ``path``.

    ``format`` raw (sparse: holes stay holes) or qcow2. ``snapshot`` (a
    disk snapshot id, or an object with ``.id``; ``snapshot_id`` is an
    alias kept for older callers) downloads that disk snapshot; with
    ``shallow`` only that layer (its unallocated areas stay unallocated;
    give ``backing_file`` to point the qcow2 at the previous layer; the
    ranges the layer zeroes then become zero clusters, which hide the
    backing file's data as the layer hid its parent's).
    Refuses an existing ``path`` unless ``force``; the file appears under
    ``path`` only when complete. On any failure the transfer is cancelled
    and the error raised. Returns a TransferResult (bytes, seconds,
    disk_id, name, format). ``verify`` (default) compares the file's block
    checksum with the server's before finalizing; a mismatch raises
    an error and leaves no file.

    A raw download (not on a 4.1 engine) writes ``path.imagetool-part``
    and keeps a journal ``path.imagetool-journal`` beside it, so one that
    was killed can be continued with ``resume=True``; without ``resume`` an
    existing journal raises JournalError (nothing is reused or deleted),
    and a failure removes both files. With ``resume`` a failure keeps them
    for the next ``resume`` (except a checksum mismatch). qcow2 output and
    ``backing_file`` use a temporary file removed on failure and refuse
    ``resume``.

    ``host`` (name or id) serves the transfer; by default this machine
    when it is an Up oVirt host of the disk's data center, else an Up
    host there (imagetool.engine.hosts).
    """
    return download_disk_result(
        conn, disk, path, format=format, snapshot=snapshot, snapshot_id=snapshot_id,
        shallow=shallow, backing_file=backing_file, force=force,
        workers=workers, buffer_size=buffer_size,
        inactivity_timeout=inactivity_timeout, use_proxy=use_proxy,
        progress=progress, verify=verify, resume=resume, host=host)
