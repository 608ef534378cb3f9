"""Resume policy of the upload and download workflows: journals and decisions.

``UploadResume.open`` finds (or refuses) the journal of an upload before
anything is created on the engine; ``attach_transfer`` decides whether an
interrupted transfer can be reused; ``resumable_download`` decides whether
a download keeps a journal (every raw guest-data download does,
``--resume`` or not), ``open_download`` finds or refuses it, and
``download_failed`` keeps or drops what a failed one leaves. The
workflows themselves are in ``upload.py`` and ``download.py``; this module
returns decisions (journals, TransferSession options) and never drives a
transfer.

An upload journal whose disk the engine removed (its transfer cancelled,
e.g. by the ``cancel`` timeout policy after a kill) has nothing left to
continue: a plain run says so and that ``--resume`` starts over; with
``--resume`` the journal is reset and a new disk created.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from urllib.parse import urlsplit
from typing import Any

from imagetool.engine.wait import wait_for_disk_unlocked
from imagetool.errors import ChecksumMismatch, ImagetoolError, NotFound, TransferError
from imagetool.paths import default_data_dir
from imagetool.phases import ACTIVE, FAILING, PAUSED
from imagetool.iocore.backends import JournalingBackend, RetryingBackend, RetryPolicy
from imagetool.transfer.journal import (Journal, JournalError, flush_bytes_for,
                                        source_changes, source_identity)
from imagetool.transfer.session import wait_quietly

log = logging.getLogger(__name__)

DOWNLOAD_JOURNAL_SUFFIX = ".imagetool-journal"
DOWNLOAD_PART_SUFFIX = ".imagetool-part"
_PLAN_KEYS = ("transfer_format", "disk_format")


def journals_dir() -> str:
    """Where upload journals live: ``$IMAGETOOL_HOME/journals``."""
    return os.path.join(default_data_dir(), "journals")


def upload_journal_path(engine: str, source: str, target: str) -> str:
    """The journal of uploading ``source`` to ``target`` (storage domain/name
    or disk id) on ``engine`` (its :func:`engine_identity`)."""
    key = "\0".join((engine, os.path.abspath(source), target))
    return os.path.join(journals_dir(), hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


def download_paths(dest: str) -> tuple[str, str]:
    """(journal, partial file) of a resumable download to ``dest``."""
    dest = os.path.abspath(dest)
    return dest + DOWNLOAD_JOURNAL_SUFFIX, dest + DOWNLOAD_PART_SUFFIX


def _engine_url(conn: Any) -> str:
    return str(getattr(conn, "url", "") or getattr(conn, "base_url", ""))


def engine_identity(conn: Any) -> str:
    """What names one engine across runs, for keying upload journals.

    Not its URL: the embedded engine gets a new port on every run, so a
    journal keyed by URL was never found again. The API root's
    ``product_info/instance_id`` (oVirt 4.4+, and the local engine's, kept
    in its data directory) when there is one, else the URL without its port.
    """
    try:
        instance = conn.api_info().instance_id
    except Exception:       # a stand-in connection, or an engine without the root
        instance = None
    if instance:
        return f"instance:{instance}"
    parts = urlsplit(_engine_url(conn))
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}"


@dataclass
class UploadResume:
    """The journal of one upload and what it allows to skip."""

    journal: Journal
    resumed: bool            # an earlier run's journal is being continued
    resume: bool             # the caller asked for resume (keep state on failure)

    @classmethod
    def open(cls, conn: Any, path: str, target: str, *, resume: bool,
             plan: dict) -> "UploadResume":
        """Load the journal for ``path`` -> ``target`` or start one.

        Without ``resume`` an existing journal is an error (never reused
        nor deleted silently); with it, a changed source is refused.
        """
        jpath = upload_journal_path(engine_identity(conn), path, target)

        def new_journal(**extra: Any) -> Journal:
            return Journal.create(jpath, engine_url=_engine_url(conn), target=target,
                                  source=source_identity(path), plan=plan,
                                  disk_id=None, transfer_id=None, **extra)

        if os.path.exists(jpath):
            j = Journal.load(jpath)
            gone = _disk_gone(conn, j)
            if gone and not resume:
                raise JournalError(
                    f"{path}: an interrupted upload of this file exists (journal "
                    f"{jpath}) but the engine removed its disk {gone} (its transfer "
                    f"was cancelled, e.g. by the 'cancel' timeout policy), so "
                    f"nothing is left to continue: run the same command with "
                    f"--resume to upload the file again from the start to a new "
                    f"disk, or delete the journal (rm {jpath}) and run it again")
            if not resume:
                raise JournalError(
                    f"{path}: an interrupted upload of this file exists (journal "
                    f"{jpath}); run the same command with --resume to continue it, "
                    f"or delete the journal (rm {jpath}) to start over")
            if gone:
                _refuse_same_named(conn, path, target)
                log.warning("%s: the disk %s of the interrupted upload no longer "
                            "exists (its transfer was cancelled); starting over with "
                            "a new disk", path, gone)
                return cls(new_journal(restarted_after=gone), resumed=False, resume=True)
            changes = source_changes(j.data.get("source", {}), path)
            if changes:
                raise JournalError(
                    f"{path}: the file changed since the interrupted upload "
                    f"({', '.join(changes)}); the disk on the engine holds part of "
                    f"the old content. {_start_over_steps(conn, j, target)}")
            old = j.data.get("plan") or {}
            if any(old.get(k) != plan.get(k) for k in _PLAN_KEYS):
                raise JournalError(
                    f"{path}: the interrupted upload used other options "
                    f"({j.data.get('plan')}); use the same ones, or delete the "
                    f"journal (rm {jpath}) to start over")
            return cls(j, resumed=True, resume=True)
        if resume:
            _refuse_same_named(conn, path, target)
        return cls(new_journal(), resumed=False, resume=resume)

    @property
    def disk_id(self) -> str | None:
        """The disk an earlier run created (None: create one)."""
        return self.journal.data.get("disk_id") if self.resumed else None

    def existing_disk(self, conn: Any) -> Any:
        """The earlier run's disk, or a clear error when it is gone."""
        try:
            return conn.disks.get(self.disk_id)
        except NotFound:
            raise JournalError(
                f"the disk {self.disk_id} of the interrupted upload no longer "
                f"exists (removed while this command started): run the same "
                f"command with --resume again to upload the file from the start "
                f"to a new disk, or delete the journal (rm {self.journal.path}) "
                f"and upload again") from None

    def session_options(self, conn: Any, disk_id: str) -> dict:
        """Record the disk; the TransferSession options this upload needs.

        ``keep_on_error`` when resume was asked (a failure keeps the
        transfer for the next --resume); ``reuse_transfer_id`` when the
        earlier run's transfer is still alive.
        """
        self.journal.update(disk_id=disk_id)
        reuse = None
        if self.resumed:
            reuse = attach_transfer(conn, self.journal.data.get("transfer_id"), disk_id)
        return {"keep_on_error": self.resume, "reuse_transfer_id": reuse}

    def start(self, session: Any, dst: Any, source: Any,
              policy: RetryPolicy | None = None) -> Any:
        """The destination the copier should use: retries, then journaling."""
        self.journal.update(transfer_id=session.transfer_id)
        request_size = int(self.journal.data.get("plan", {}).get("request_size") or 0)
        return JournalingBackend(
            retrying(dst, session, source, policy), self.journal,
            flush_bytes=flush_bytes_for(source.size, request_size or 8 << 20))

    def failed(self, exc: BaseException | None = None) -> None:
        """Keep the journal (resume) or drop it (the transfer was cancelled).

        With resume, an ImagetoolError is raised again (same exit code)
        saying that the same command with --resume continues the upload.
        """
        if not self.resume:
            self.journal.remove()
            return
        self.journal.save()
        _raise_kept(exc, f"the partial disk {self.journal.data.get('disk_id')} is kept: "
                         f"run the same command with --resume to continue the upload")


def _raise_kept(exc: BaseException | None, kept: str) -> None:
    """Raise an ImagetoolError ``exc`` again, with its exit code, saying what
    a failed run kept for --resume (a JournalError already says what to do)."""
    if isinstance(exc, ImagetoolError) and not isinstance(exc, JournalError):
        err = TransferError(f"{exc}; {kept}")
        err.exit_code = exc.exit_code
        raise err from exc


def _refuse_same_named(conn: Any, path: str, target: str) -> None:
    """With --resume and no journal to continue: refuse when the storage
    domain already has a disk of that name.

    Without a journal nothing proves that disk holds a part of this file
    (the journal of a plain upload is dropped when it fails, e.g. while
    the engine was down), so it is neither reused nor silently doubled by
    a second disk of the same name.
    """
    if "/" not in target:
        return          # a disk id: the engine refuses a second disk with it
    sd_name, name = target.split("/", 1)
    try:
        sd = conn.storage_domains.find(sd_name)
        disks = [d for d in conn.disks.list(search=f"name={name}")
                 if name in (d.name, getattr(d, "alias", None))
                 and (not d.storage_domain_ids or sd.id in d.storage_domain_ids)]
    except ImagetoolError as e:
        log.debug("cannot look for disks named %r: %s", name, e)
        return
    if not disks:
        return
    disk = disks[0]
    try:
        held = [t for t in conn.transfers.list() if t.disk_id == disk.id
                and not (t.phase or "").startswith("finished")]
    except ImagetoolError:
        held = []
    if held:
        # Cancelling an upload's transfer removes the disk it was filling:
        # a "disks remove" after it would fail on a disk already gone.
        steps = (f"cancel its transfer (imagetool transfers cancel {held[0].id}), which "
                 f"also removes it (if it is still listed after that: imagetool disks "
                 f"remove --yes {disk.id})")
    else:
        steps = f"remove it (imagetool disks remove --yes {disk.id})"
    raise JournalError(
        f"{path}: --resume found no interrupted upload of this file to continue, "
        f"but storage domain {sd_name} already has a disk named {name!r} "
        f"({disk.id}, status {disk.status}); nothing proves it holds this file: "
        f"if it is a leftover, {steps}, and upload again; or "
        f"upload with another --name")


def _disk_gone(conn: Any, journal: Journal, timeout: float = 60.0) -> str | None:
    """The journal's disk id when the engine removed that disk, else None.

    A transfer being cancelled (the ``cancel`` timeout policy after a kill)
    is waited for first: the engine removes the disk it created at the end.
    """
    disk_id = journal.data.get("disk_id")
    if not disk_id:
        return None
    transfer_id = journal.data.get("transfer_id")
    if transfer_id:
        wait_quietly(conn, transfer_id, lambda phase: phase not in FAILING, timeout)
    try:
        conn.disks.get(disk_id)
    except NotFound:
        return disk_id
    return None


def _transfer_alive(conn: Any, transfer_id: str | None) -> bool:
    """Whether ``transfer_id`` still holds its disk (not finished, not gone)."""
    if not transfer_id:
        return False
    try:
        phase = conn.transfers.get(transfer_id).phase or ""
    except ImagetoolError:
        return False        # gone, or the engine cannot tell: nothing to cancel
    return not phase.startswith("finished")


def _start_over_steps(conn: Any, journal: Journal, target: str) -> str:
    """What to run, in order, to drop an interrupted upload and start anew.

    A live (paused) transfer keeps its disk locked, so it is cancelled
    first; only a disk this upload created (target ``sd/name``) is removed,
    never one the user named by id.
    """
    disk_id = journal.data.get("disk_id")
    transfer_id = journal.data.get("transfer_id")
    created = "/" in target
    steps = []
    if _transfer_alive(conn, transfer_id):
        steps.append(f"cancel the interrupted transfer (imagetool transfers cancel "
                     f"{transfer_id})"
                     + (f", which also removes its partial disk {disk_id}" if created else ""))
    if created and disk_id:
        steps.append(f"{'if the disk is still listed, ' if steps else ''}remove the "
                     f"partial disk (imagetool disks remove --yes {disk_id})")
    steps.append(f"delete the journal (rm {journal.path})")
    return "To start over: " + "; ".join(steps) + "; then upload again"


def upload_timeout_policy(asked: str | None, resume: bool) -> str:
    """The timeout policy an upload asks for, unless told otherwise.

    A resumable upload asks for ``pause``: a quiet client (killed, cut off,
    or waiting out an engine restart) keeps its transfer and partial disk
    for ``--resume``. A plain upload keeps no journal, so nothing could
    resume it: it asks for ``cancel``, and when it goes quiet the engine
    cancels the transfer and removes the disk it created instead of
    leaving it locked (the engine's ``legacy`` default would pause it).
    """
    return asked or ("pause" if resume else "cancel")


def open_upload(conn: Any, plan: Any, storage_domain: str, name: str,
                disk_id: str | None, *, resume: bool,
                request_size: int) -> UploadResume | None:
    """The journal of this upload, or None when it cannot be resumed
    (a raw file converted to a temporary qcow2 first)."""
    if plan.convert:
        if resume:
            raise JournalError(f"{plan.path}: --resume needs a raw transfer or a "
                               f"qcow2 file (this upload converts to a temporary file)")
        return None
    target = disk_id or f"{storage_domain}/{name}"
    try:
        return UploadResume.open(conn, plan.path, target, resume=resume, plan={
            "transfer_format": plan.transfer_format, "disk_format": plan.disk_format,
            "request_size": request_size})
    except OSError as e:
        if resume:
            raise JournalError(f"cannot keep a resume journal in {journals_dir()}: {e}") from None
        # A journal only helps a later --resume: a plain upload goes on without.
        log.warning("no resume journal for %s: %s", plan.path, e)
        return None


def attach_transfer(conn: Any, transfer_id: str | None, disk_id: str) -> str | None:
    """The id of a transfer to reuse for ``disk_id`` (resumed if paused), or None.

    A transfer that ended, failed or vanished cannot be reused: the caller
    then starts a new one after the disk is unlocked.
    """
    t = None
    if transfer_id:
        try:
            t = conn.transfers.get(transfer_id)
        except NotFound:
            t = None
    if t is not None and t.phase in ACTIVE:
        if t.phase in PAUSED:
            conn.transfers.resume(transfer_id)
        return transfer_id
    if t is not None and not t.phase.startswith("finished"):
        # Finalizing or cancelling: wait for the end, then start anew.
        wait_quietly(conn, transfer_id, lambda phase: phase.startswith("finished"), 120)
    wait_for_disk_unlocked(conn, disk_id, timeout=300)
    return None


def open_download(conn: Any, disk: Any, path: str, *, resume: bool,
                  snapshot_id: str | None, shallow: bool, buffer_size: int) -> Journal:
    """The journal of a raw download to ``path``: the interrupted one (with
    ``resume``, checked against this download) or a new one.

    Without ``resume`` an existing journal is an error (nothing is reused
    or deleted); a partial file without a journal is removed (nothing
    says what is in it).
    """
    jpath, part = download_paths(path)
    if os.path.exists(jpath) and not resume:
        raise JournalError(
            f"{path}: an interrupted download to this file exists (journal {jpath}, "
            f"data in {part}); run the same command with --resume to continue it, "
            f"or delete both (rm {jpath} {part}) to start over")
    if os.path.exists(jpath) and os.path.exists(part):
        journal = Journal.load(jpath)
        if journal.data.get("disk_id") != disk.id or \
                journal.data.get("snapshot_id") != snapshot_id:
            raise JournalError(
                f"{path}: the interrupted download was of another disk or snapshot "
                f"(disk {journal.data.get('disk_id')}, snapshot "
                f"{journal.data.get('snapshot_id') or 'none'}); delete {jpath} and "
                f"{part} to start over")
        # Journals from before shallow was recorded were always full downloads.
        was_shallow = bool(journal.data.get("shallow", False))
        if was_shallow != shallow:
            kept = ("with --shallow (that layer only)" if was_shallow
                    else "without --shallow (the whole chain)")
            raise JournalError(
                f"{path}: the interrupted download was {kept}; resume it with the "
                f"same options, or delete {jpath} and {part} to start over")
        return journal
    if os.path.exists(part):
        os.unlink(part)     # data without a journal: nothing says what is in it
    return Journal.create(jpath, engine_url=_engine_url(conn), disk_id=disk.id,
                          snapshot_id=snapshot_id, shallow=shallow,
                          dest=os.path.abspath(path),
                          plan={"format": "raw", "request_size": buffer_size})


def download_session_options(conn: Any, journal: Journal, disk_id: str) -> dict:
    """TransferSession options of a journaled download: a killed client
    leaves its transfer running, so carry on with it when it is alive."""
    if not journal.data.get("transfer_id"):
        return {}
    return {"reuse_transfer_id": attach_transfer(conn, journal.data["transfer_id"],
                                                 disk_id)}


def download_failed(journal: Journal, part: str, exc: BaseException, *,
                    resume: bool) -> None:
    """Keep or drop a failed download's partial file and journal.

    A checksum mismatch always drops both (the data is complete but wrong,
    and resuming cannot fix it), as does a failure without ``resume`` or
    before the partial file existed.
    With ``resume`` both are kept, and an ImagetoolError is raised again
    (same exit code) saying that --resume continues the download; other
    errors are left for the caller to re-raise.
    """
    if isinstance(exc, ChecksumMismatch) or not resume or not os.path.exists(part):
        # No partial file (the failure came before the first byte): nothing
        # to continue, and nothing to claim is kept.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        journal.remove()
        return
    journal.save()
    _raise_kept(exc, f"the partial download is kept in {part}: run the same command "
                     f"with --resume to continue it")


def resumable_download(path: Any, resume: bool, format: str, legacy: bool,
                       backing_file: str | None) -> bool:
    """Whether a download goes the journaled, resumable way.

    Raw downloads of guest data always do (so a killed one can be
    continued with --resume); qcow2 output, 4.1 engines (volume bytes) and
    a backing file cannot, and refuse ``resume`` or a journal left at
    ``path``.
    """
    if format == "raw" and not legacy and not backing_file:
        return True
    journal, _ = download_paths(os.fspath(path))
    if resume or os.path.exists(journal):
        raise JournalError(
            f"{os.fspath(path)}: --resume supports raw downloads of guest data only "
            f"(not qcow2 output, a backing file or a 4.1 engine)"
            + (f"; a journal of an interrupted raw download is there ({journal}): "
               f"continue it with --format raw --resume, or delete it"
               if os.path.exists(journal) else ""))
    return False


def retrying(backend: Any, session: Any = None, source: Any = None,
             policy: RetryPolicy | None = None) -> RetryingBackend:
    """``backend`` with per-request retries of transient errors; ``source``
    (thread-safe) lets writes lost since the last flush be sent again. Stops
    waiting when the session is cancelled."""
    return RetryingBackend(backend, policy or RetryPolicy.from_env(), source=source,
                           stop=getattr(session, "cancel_event", None))
