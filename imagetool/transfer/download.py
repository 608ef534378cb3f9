"""Download a disk (or one disk snapshot) to a local raw or qcow2 file.

Raw guest data goes the journaled way (:func:`_download_journaled`: a
stable partial file and a journal beside it, so a killed download can be
continued); qcow2 output, a backing file and 4.1 engines write a
temporary file renamed when complete (:func:`_download_whole`). Whether
to journal, and what a failure keeps, are decided by
``imagetool.transfer.resume``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

from imagetool.engine.hosts import transfer_host
from imagetool.errors import ImagetoolError
from imagetool.formats import WRITABLE, open_image
from imagetool.formats.raw import RawBackend
from imagetool.fsutil import fsync_dir
from imagetool.transfer import resume as resume_mod
from imagetool.transfer.disk import DiskOptions, receive
from imagetool.transfer.options import DownloadOptions, keywords_of, resolve
from imagetool.transfer.output import atomic_output, check_destination
from imagetool.transfer.urls import TransferResult, new_file

__all__ = ["DownloadOptions", "download_disk"]

Progress = Callable[[int], None]


@keywords_of(DownloadOptions)
def download_disk(conn: Any, disk: Any, path: str | os.PathLike,
                  options: DownloadOptions | None = None, *,
                  progress: Progress | None = None, snapshot: Any = None,
                  **keywords: Any) -> TransferResult:
    """Download ``disk`` (a Disk, or a disk id or name) to ``path``.

    ``options`` (a :class:`DownloadOptions`) or its fields as keywords:
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
    opts = resolve(DownloadOptions, options, keywords)
    snapshot_id = _snapshot_id(snapshot, opts.snapshot_id)
    if snapshot_id != opts.snapshot_id:
        opts = dataclasses.replace(opts, snapshot_id=snapshot_id)
    if opts.format not in WRITABLE:
        raise ImagetoolError(f"unsupported download format {opts.format!r} (raw or qcow2)")
    if opts.backing_file and opts.format != "qcow2":
        raise ImagetoolError("a backing file needs the qcow2 format")
    start = time.monotonic()
    check_destination(path, opts.force)          # before the engine locks anything
    disk = conn.disks.find(disk) if isinstance(disk, str) else disk
    legacy = bool(getattr(conn, "legacy", False))
    # Raw guest data always journals, so a killed download can be resumed.
    if resume_mod.resumable_download(path, opts.resume, opts.format, legacy,
                                     opts.backing_file):
        got = _download_journaled(conn, disk, os.fspath(path), opts, progress)
    else:
        got = _download_whole(conn, disk, path, opts, progress, legacy)
    return TransferResult(bytes=got.stats.bytes_total, seconds=time.monotonic() - start,
                          format=opts.format, disk_id=disk.id, name=disk.name,
                          path=os.fspath(path), stats=got.stats, disk=disk,
                          checksum=got.verification.value, verification=got.verification)


def _options(conn: Any, disk: Any, opts: DownloadOptions, what: str, **more: Any) -> DiskOptions:
    """The disk transfer of ``disk`` (or of the asked snapshot), through
    the asked host or the one ``imagetool.engine.hosts`` picks (``host_index``
    spreads a bulk run over the Up hosts)."""
    host_id = transfer_host(conn, disk.storage_domain_ids, opts.host, opts.host_index)
    return DiskOptions(snapshot_id=opts.snapshot_id, shallow=opts.shallow,
                       inactivity_timeout=opts.inactivity_timeout,
                       use_proxy=opts.use_proxy, host_id=host_id, workers=opts.workers,
                       buffer_size=opts.buffer_size, verify=opts.verify, what=what,
                       **more)


def _download_journaled(conn: Any, disk: Any, path: str, opts: DownloadOptions,
                        progress: Progress | None) -> Any:
    """A raw download that can continue after a kill: journal + stable partial file.

    What it leaves behind (the partial file and journal, on a kill, a
    handled failure or a checksum mismatch) is the contract written in
    :func:`download_disk` and decided by ``resume.download_failed``.
    ``shallow`` (with a snapshot) downloads that layer only; the journal
    records it and a resume with another setting is refused. Returns
    the Received.
    """
    journal = resume_mod.open_download(conn, disk, path, resume=opts.resume,
                                       snapshot_id=opts.snapshot_id, shallow=opts.shallow,
                                       buffer_size=opts.buffer_size)
    _, part = resume_mod.download_paths(path)
    try:
        # O_DIRECT writes and write-back advice, as a plain download has.
        got = receive(conn, disk, lambda size: RawBackend(
                          part, "r+" if os.path.exists(part) else "w", size=size,
                          direct=True),
                      _options(conn, disk, opts, path, journal=journal),
                      progress=progress, local=lambda: open_image(part, "r", format="raw"))
    except BaseException as e:
        resume_mod.download_failed(journal, part, e, resume=opts.resume)
        raise
    os.replace(part, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    journal.remove()
    return got


def _download_whole(conn: Any, disk: Any, path: str | os.PathLike, opts: DownloadOptions,
                    progress: Progress | None, legacy: bool) -> Any:
    """qcow2 output, a backing file or a 4.1 engine: a temporary file that
    appears under ``path`` only when complete (removed on any failure)."""
    # 4.1 engines only move volume bytes: a cow volume arrives as qcow2.
    volume_is_qcow2 = legacy and disk.format == "cow"
    with atomic_output(path, opts.force) as tmp:
        # Leaving the transfer finalizes (or cancels) before the file is
        # renamed, so a failed transfer never leaves a file behind.
        out, fmt = (tmp + ".volume", "raw") if volume_is_qcow2 else (tmp, opts.format)
        backing = None if volume_is_qcow2 else opts.backing_file
        got = receive(conn, disk, new_file(out, fmt, backing),
                      _options(conn, disk, opts, os.fspath(path),
                               format="cow" if legacy else "raw", flush=False,
                               over_backing=backing is not None),
                      progress=progress,
                      local=lambda: open_image(out, "r", format=fmt, shallow=bool(backing)))
        if volume_is_qcow2:
            _from_volume(tmp + ".volume", tmp, opts.format, opts.workers)
    return got


def _from_volume(volume: str, out: str, format: str, workers: int) -> None:
    """Turn a downloaded qcow2 volume into the asked format, then drop it."""
    try:
        if format == "qcow2":
            os.replace(volume, out)
            return
        from imagetool.formats.convert import convert_backend

        with open_image(volume, "r", format="qcow2") as src:
            convert_backend(src, out, "raw", workers=workers)
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
