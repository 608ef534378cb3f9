"""One disk through one ImageTransfer: :func:`send` and :func:`receive`.

Every workflow that moves a disk (upload, download, OVA import and
export, backup fetch and restore) comes here, so each takes the same
steps: build the session (:func:`open_session`, the one place a
TransferSession is made), open the data plane, wrap it with retries and
flushing or a resume journal, copy, compare checksums before finalizing,
and finalize, or cancel on any failure. What differs between workflows
is said by a :class:`DiskOptions`, never by a copy of these steps.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Callable

from imagetool.iocore.backends import FlushingBackend, SharedBackend, Wrapper
from imagetool.engine.wait import wait_for_disk, wait_for_disk_unlocked
from imagetool.iocore.copier import CopyCancelled, CopyOptions, CopyStats, copy
from imagetool.errors import ChecksumMismatch
from imagetool.iocore.backend import Backend, Extent
from imagetool.transfer import resume as resume_mod, verify as verifying
from imagetool.transfer.journal import flush_bytes_for
from imagetool.transfer.options import DiskOptions
from imagetool.threads import interrupts_held, shielded
from imagetool.transfer.session import TransferSession

__all__ = ["DiskOptions", "Received", "Sent", "add_disk", "open_session", "receive",
           "receive_with", "send"]

Progress = Callable[[int], None]


@dataclass
class Sent:
    """What :func:`send` moved: the disk, its transfer, the copy, the check."""

    disk_id: str
    transfer_id: str | None
    stats: CopyStats
    verification: verifying.Verification

    def to_json(self) -> dict:
        return {"disk_id": self.disk_id, "transfer_id": self.transfer_id,
                "bytes": self.stats.bytes_total, **self.verification.to_dict()}


@dataclass
class Received(Sent):
    """What :func:`receive` moved; ``after`` what the caller's ``after`` returned."""

    after: Any = None


def open_session(conn: Any, disk_id: str, direction: str, o: DiskOptions,
                 **resume: Any) -> TransferSession:
    """The ImageTransfer of one disk as ``o`` says (``resume``: the
    session's reuse_transfer_id and keep_on_error)."""
    return TransferSession(conn, disk_id=disk_id, direction=direction, options=o, **resume)


def add_disk(conn: Any, created: list[str] | None = None, **fields: Any) -> Any:
    """``conn.disks.add(**fields)`` once the engine says ok: the disk a
    :func:`send` goes to. Its id is added to ``created`` at once (the
    caller removes those on failure); without ``created`` it is removed
    here when it never gets ok."""
    made: list[str] = created if created is not None else []
    try:
        # A Ctrl-C while the request is in flight comes once its id is kept.
        with interrupts_held():
            disk = conn.disks.add(**fields)
            made.append(disk.id)
        wait_for_disk(conn, disk.id, "ok")
    except BaseException:
        if created is None and made:
            shielded(lambda: remove_disk_when_unlocked(conn, made[0]))
        raise
    return disk


def remove_disk_when_unlocked(conn: Any, disk_id: str, timeout: float = 120) -> None:
    """Remove a disk a failed run made, once the engine has it unlocked (a
    disk still being created cannot be removed); best effort, errors
    ignored: the failure that got here is the one to report."""
    with suppress(Exception):
        if wait_for_disk_unlocked(conn, disk_id, timeout=timeout) is not None:
            conn.disks.remove(disk_id)


def send(conn: Any, source: Backend, disk: Any, options: DiskOptions, *,
         progress: Progress | None = None) -> Sent:
    """Copy ``source`` (owned by the caller) into ``disk`` (created, ok).

    On any failure the transfer is cancelled (or paused, when the journal
    keeps it for a resume) and the error raised; a disk for which no
    transfer could be made is removed, as nothing else would remove it.
    """
    o = options
    state = o.journal
    session = None
    local = None
    verification = verifying.skipped("not asked (--no-verify)")
    try:
        session = open_session(conn, disk.id, "upload", o,
                               **(state.session_options(conn, disk.id) if state else {}))
        with session:
            dst = session.open_backend()
            workers = max(1, min(o.workers, dst.max_writers or o.workers))
            shared = SharedBackend(source, owner=False)
            if state:
                out = state.start(session, dst, shared)
            else:
                out = resume_mod.retrying(dst, session, shared) if o.retries else dst
                if o.flush:
                    out = FlushingBackend(out, flush_bytes=flush_bytes_for(
                        source.size, o.buffer_size))
            if o.verify:
                algorithm = o.algorithm or verifying.pick_algorithm(dst)
                verifying.announce_upload_checksum(dst, algorithm, o.block_size)
                if o.expected is None and verifying.PARALLEL_UPLOAD_HASH:
                    local = verifying.LocalHash(source.clone, algorithm=algorithm)
            try:
                stats = copy(shared, out, CopyOptions(
                                 workers, o.buffer_size, dst_is_zero=o.dst_is_zero,
                                 # a volume's file grows as its bytes arrive
                                 check_size=o.format == "raw"),
                             progress=session.progress(progress),
                             cancel_event=session.cancel_event,
                             skip_ranges=state.journal.done if state else None)
            except CopyCancelled:
                raise session.stopped(f"upload of {o.what}") from None
            if o.verify:
                verification = _verify_sent(dst, source, o, algorithm, local)
    except BaseException as e:
        if local is not None:
            local.cancel()
        if (session is None or session.transfer_id is None) and not (state and state.resume):
            shielded(lambda: remove_disk_when_unlocked(conn, disk.id))
        if state:
            state.failed(e)     # with resume: re-raised with how to continue
        raise
    if state:
        state.journal.remove()
    return Sent(disk.id, session.transfer_id, stats, verification)


def _verify_sent(dst: Any, source: Backend, o: DiskOptions, algorithm: str,
                 local: Any) -> verifying.Verification:
    """The server's checksum against the source's, or against ``o.expected``."""
    if o.expected is None:
        return verifying.verify_upload(dst, volume_bytes=o.volume_bytes, local=local,
                                       what=o.what, algorithm=algorithm,
                                       block_size=o.block_size, opener=source.clone)
    remote, method = verifying.remote_checksum(dst, algorithm=algorithm,
                                               block_size=o.block_size)
    if remote["checksum"] != o.expected:
        raise ChecksumMismatch(o.expected, remote["checksum"], o.what)
    return verifying.Verification(True, algorithm, o.block_size, o.expected, method)


class ListedExtents(Wrapper):
    """A data-plane backend whose extents are a list given once.

    For a dirty context the data plane reports unchanged ranges as not
    dirty; they are given here as holes (nothing to copy), and dirty ranges
    keep their ``zero`` flag.
    """

    def __init__(self, backend: Any, extents: list[Extent]):
        super().__init__(backend)
        self._extents = extents

    def extents(self, context: str = "zero"):
        return iter(self._extents)

    def clone(self) -> "ListedExtents":
        return ListedExtents(self.inner.clone(), self._extents)


def receive(conn: Any, disk: Any, dest: Callable[[int], Backend], options: DiskOptions, *,
            progress: Progress | None = None,
            local: Callable[[], Backend] | None = None,
            after: Callable[[Any], Any] | None = None) -> Received:
    """Copy ``disk`` (a Disk or its id; or ``options.snapshot_id``) into
    ``dest(size)``, a new local backend this function flushes and closes.

    Then, before finalizing: ``after(src)`` (the data-plane backend, its
    extents listed once when ``dirty``; the value is returned as
    ``.after``) and, with ``verify``, the server's
    checksum against ``local()`` (a fresh reader of what was written). On
    any failure the transfer is cancelled and the error raised; the
    caller removes what ``dest`` created.
    """
    o = options
    journal = o.journal

    def write(view: Backend, workers: int, progress: Progress,
              cancel_event: Any) -> CopyStats:
        target = dest(view.size)
        shared = out = SharedBackend(target)
        if journal or o.flush:
            out = FlushingBackend(shared, sync=target.flush, journal=journal,
                                  flush_bytes=flush_bytes_for(view.size, o.buffer_size))
        try:
            # With few connections, writing the local file while the next
            # request is read is faster (benchmarks/transfer_results.md);
            # with more, workers overlap each other anyway.
            stats = copy(view, out, CopyOptions(
                             workers, o.buffer_size, dst_is_zero=True,
                             detect_zeroes=o.detect_zeroes, overlap=workers <= 2,
                             over_backing=o.over_backing),
                         progress=progress, cancel_event=cancel_event,
                         skip_ranges=journal.done if journal else None)
            out.flush()
        finally:
            shared.close()
        return stats

    return receive_with(conn, disk, write, o, progress=progress, local=local, after=after)


def receive_with(conn: Any, disk: Any, consume: Callable[..., CopyStats],
                 options: DiskOptions, *, progress: Progress | None = None,
                 local: Callable[[], Backend] | None = None,
                 after: Callable[[Any], Any] | None = None) -> Received:
    """:func:`receive` with the writing left to ``consume(src, workers,
    progress, cancel_event)``, which reads the data-plane backend ``src``
    (its extents listed once when ``dirty``) with up to ``workers``
    connections and returns a CopyStats: a backup into a chunk
    repository stores chunks rather than writing an image. ``cancel_event``
    set (the transfer was stopped): stop with ``copier.CopyCancelled``."""
    o = options
    journal = o.journal
    disk_id = getattr(disk, "id", disk)
    session = open_session(conn, disk_id, "download", o, **(
        resume_mod.download_session_options(conn, journal, disk_id) if journal else {}))
    verification = verifying.skipped("not asked (--no-verify)")
    with session:
        if journal:
            journal.update(transfer_id=session.transfer_id)
        src = session.open_backend()
        if o.retries:
            src = resume_mod.retrying(src, session)
        view = ListedExtents(src, list(src.extents("dirty"))) if o.dirty else src
        workers = max(1, min(o.workers, src.max_readers or o.workers))
        try:
            stats = consume(view, workers, session.progress(progress), session.cancel_event)
        except CopyCancelled:
            name = getattr(disk, "name", None) or f"disk {disk_id}"
            raise session.stopped(f"download of {name}") from None
        extra = after(view) if after is not None else None
        if o.verify and local is not None:
            verification = verifying.verify_download(src, local, what=o.what)
    return Received(disk_id, session.transfer_id, stats, verification, extra)
