"""One ImageTransfer on an engine, from creation to finished_success.

Workflows do not build one: ``imagetool.transfer.disk`` does (its
``open_session``) for its ``send`` and ``receive``::

    with TransferSession(conn, disk_id=disk.id, direction="upload") as s:
        backend = s.open_backend()      # HttpBackend on transfer_url/proxy_url
        copy(src, backend, progress=s.progress(cb), cancel_event=s.cancel_event)
    # leaving the block normally finalizes and waits for finished_success;
    # any exception (Ctrl-C included) cancels, waits until the disk is no
    # longer locked, and re-raises.

A background thread keeps the session alive: an OPTIONS on the data plane
when no request was made for a while (the server drops idle tickets after
``inactivity_timeout``), ``extend`` on engines that need it (4.1), and a
look at the transfer's phase so a transfer paused or cancelled by the system
stops the copy instead of failing request by request.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable

from imagetool.errors import (EngineError, ImagetoolError, NotFound, TimeoutExpired,
                              TransferError)
from imagetool.engine.wait import (transfer_phase, wait_for_disk, wait_for_disk_unlocked,
                                   wait_for_transfer_phase, wait_until)
from imagetool.imageio.backend import HttpBackend
from imagetool.imageio.client import ImageioClient
from imagetool.phases import ENDED, STOPPED
from imagetool.threads import interrupts_held, shielded
from imagetool.transfer.options import DiskOptions, resolve

log = logging.getLogger(__name__)


def wait_quietly(conn: Any, transfer_id: str, done: Callable[[str], bool],
                 timeout: float) -> None:
    """Wait until ``transfer_id``'s phase is ``done`` or the transfer is gone;
    at the deadline go on (the caller's next step has its own checks)."""
    try:
        wait_until(lambda: transfer_phase(conn, transfer_id),
                   lambda phase: phase is None or done(phase), timeout,
                   f"transfer {transfer_id}")
    except TimeoutExpired as e:
        log.debug("%s", e)


class TransferSession:
    """Context manager around one image transfer (see module docstring).

    ``direction`` upload|download; ``options`` (a ``DiskOptions``, or its
    fields as keywords) say which disk or snapshot, ``format`` raw (guest
    data) or cow (volume bytes; ignored by 4.1 engines), ``timeout_policy``
    legacy|pause|cancel or None for the engine's default, ``use_proxy``
    (data through the engine's proxy_url even when the host is reachable),
    ``host_id`` (None: the engine picks), ``backup_id`` (a download through
    that VM backup, whose data plane also answers dirty extents).
    ``extend`` asks the engine to extend the session periodically (None:
    only 4.1 engines).

    Resume: ``reuse_transfer_id`` attaches to that existing transfer
    instead of creating one; ``keep_on_error`` pauses the transfer on
    failure (kept for ``--resume``) instead of cancelling it (should the
    pause fail, the engine's ``pause`` timeout policy does the same after
    the inactivity timeout).
    """

    start_timeout = 300.0
    finalize_timeout = 600.0
    cleanup_timeout = 300.0

    def __init__(self, conn: Any, *, disk_id: str | None = None, direction: str,
                 options: DiskOptions | None = None, reuse_transfer_id: str | None = None,
                 keep_on_error: bool = False, extend: bool | None = None,
                 **keywords: Any):
        o = self.options = resolve(DiskOptions, options, keywords)
        if direction not in ("upload", "download"):
            raise ValueError(f"direction must be upload or download, not {direction!r}")
        if not (disk_id or o.snapshot_id):
            raise ValueError("give disk_id or snapshot_id")
        self.conn = conn
        self.disk_id = disk_id
        self.direction = direction
        self.transfer: Any = None
        self.transfer_id: str | None = None
        self.url: str | None = None
        self.proxy_url: str | None = None
        self.cancel_event = threading.Event()
        self.stop_reason: str | None = None
        self.finished = False
        self._last_activity = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backends: list[Any] = []
        self.reuse_transfer_id = reuse_transfer_id
        self.keep_on_error = keep_on_error
        self.extend = extend

    # --- lifecycle --------------------------------------------------------

    def __enter__(self) -> "TransferSession":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if self.keep_on_error and self.transfer_id is not None:
                self._stop_keepalive()
                self._close_backends()
                self._pause()
                return
            self.cancel()
            return  # re-raised by Python
        if not self.finished:
            try:
                self.finalize()
            except BaseException:
                self.cancel()   # never leave the disk locked
                raise

    def start(self) -> None:
        """Create the transfer and wait until the data plane serves it."""
        try:
            if self.reuse_transfer_id:
                t = self.conn.transfers.get(self.reuse_transfer_id)
                self.transfer_id = t.id
            else:
                o = self.options
                # A Ctrl-C while the request is in flight comes once its id
                # is kept: the transfer the engine made is cancelled below
                # (else it would hold the disk locked until its inactivity
                # timeout).
                with interrupts_held():
                    t = self.conn.transfers.add(
                        disk_id=self.disk_id, snapshot_id=o.snapshot_id,
                        direction=self.direction, format=o.format,
                        inactivity_timeout=o.inactivity_timeout,
                        timeout_policy=o.timeout_policy, shallow=o.shallow or None,
                        host_id=o.host_id, backup_id=o.backup_id)
                    self.transfer_id = t.id
            self.transfer = wait_for_transfer_phase(
                self.conn, t.id, "transferring", timeout=self.start_timeout,
                disk_id=self.disk_id)
            self.url, self.proxy_url = self._pick_urls(self.transfer)
            # Inside the try: a Ctrl-C in Thread.start (which waits for the
            # thread to run) would otherwise leave the transfer open.
            self._thread = threading.Thread(target=self._keepalive,
                                            name=f"keepalive-{t.id}", daemon=True)
            self._thread.start()
        except BaseException:
            self.cancel()
            raise

    def _pick_urls(self, t: Any) -> tuple[str, str | None]:
        if self.options.use_proxy:
            if not t.proxy_url:
                raise TransferError("the engine gave no proxy_url for this transfer")
            return t.proxy_url, None
        if t.transfer_url:
            # The client falls back to the proxy when the host is unreachable.
            return t.transfer_url, t.proxy_url
        if t.proxy_url:
            return t.proxy_url, None
        raise TransferError("the engine gave no transfer_url nor proxy_url")

    def _client(self, read_timeout: float = 60.0) -> ImageioClient:
        return ImageioClient(self.url, proxy_url=self.proxy_url,
                             signed_ticket=getattr(self.transfer, "signed_ticket", None),
                             cafile=getattr(self.conn, "cafile", None),
                             insecure=getattr(self.conn, "insecure", False),
                             read_timeout=read_timeout)

    def open_backend(self, read_timeout: float = 60.0) -> Any:
        """An HttpBackend on this transfer's data plane (closed with the session)."""
        backend = HttpBackend(self._client(read_timeout))
        self._backends.append(backend)
        self.touch()
        return backend

    def touch(self) -> None:
        """Record data-plane activity (the keep-alive then stays quiet)."""
        self._last_activity = time.monotonic()

    def progress(self, callback: Callable[[int], None] | None = None) -> Callable[[int], None]:
        """A progress callback for the copier that also records activity."""
        def update(n: int) -> None:
            self._last_activity = time.monotonic()
            if callback is not None:
                callback(n)
        return update

    def stopped(self, what: str, error: type[ImagetoolError] = TransferError) -> ImagetoolError:
        """The error for a copy that this session's cancel event stopped:
        ``<what> stopped: <reason>``, the system's reason (inactivity, the
        engine ending the transfer) or else ``cancelled``."""
        return error(f"{what} stopped: {self.stop_reason or 'cancelled'}")

    def finalize(self) -> Any:
        """Finalize and wait for finished_success; return the final transfer.

        Raises TransferError with the engine's phase when it fails. For an
        upload, also waits until the disk is ``ok``.
        """
        self._stop_keepalive()
        self._close_backends()
        if self.stop_reason:
            # The system stopped the transfer while we copied.
            raise TransferError(self.stop_reason)
        self.conn.transfers.finalize(self.transfer_id)
        try:
            final = wait_for_transfer_phase(
                self.conn, self.transfer_id, "finished_success",
                timeout=self.finalize_timeout, disk_id=self.disk_id)
        except TransferError as e:
            raise TransferError(f"finalizing the {self.direction} failed: {e}") from e
        self.finished = True
        if self.direction == "upload" and self.disk_id:
            wait_for_disk(self.conn, self.disk_id, "ok", timeout=self.finalize_timeout)
        return final

    def _pause(self) -> None:
        """Pause the transfer now, so its state says it waits for --resume.

        Best effort: the error that stopped the run matters more.
        """
        try:
            self.conn.transfers.pause(self.transfer_id)
        except Exception as e:
            log.debug("pausing transfer %s failed: %s", self.transfer_id, e)

    def cancel(self) -> None:
        """Cancel the transfer and wait until its disk is not locked.

        Never raises for cleanup trouble (the original error matters more);
        problems are logged. A Ctrl-C meanwhile (a second one, often) does
        not stop it halfway, which would leave the disk locked until the
        engine's inactivity timeout: it is raised once the cancel is over.
        """
        shielded(self._cancel)

    def _cancel(self) -> None:
        self._stop_keepalive()
        self._close_backends()
        if self.transfer_id is None or self.finished:
            return
        self.finished = True
        try:
            self.conn.transfers.cancel(self.transfer_id)
        except NotFound:
            pass   # already gone
        except EngineError as e:
            ended = self._ended()
            if ended:
                # The engine ended it first (inactivity timeout, failed
                # finalize): nothing to cancel, nothing worth a warning.
                log.debug("transfer %s already ended: %s", self.transfer_id, e)
            else:
                log.warning("cancelling transfer %s failed: %s", self.transfer_id, e)
            if self.direction == "download" and not ended:
                # Engines without cancel for downloads end them with finalize.
                try:
                    self.conn.transfers.finalize(self.transfer_id)
                except ImagetoolError as e2:
                    log.warning("finalizing transfer %s failed: %s", self.transfer_id, e2)
        except Exception as e:
            log.warning("cancelling transfer %s failed: %s", self.transfer_id, e)
        try:
            wait_quietly(self.conn, self.transfer_id, lambda phase: phase in ENDED,
                         self.cleanup_timeout)
            if self.disk_id:
                wait_for_disk_unlocked(self.conn, self.disk_id,
                                       timeout=self.cleanup_timeout)
        except Exception as e:
            log.warning("transfer %s: waiting for cleanup failed: %s",
                        self.transfer_id, e)

    def _ended(self) -> bool:
        """Whether the transfer is over (or gone) on the engine."""
        try:
            t = self.conn.transfers.get(self.transfer_id)
        except NotFound:
            return True
        except ImagetoolError:
            return False
        return t.phase in ENDED

    # --- keep-alive -------------------------------------------------------

    def _keepalive(self) -> None:
        timeout = max(self.options.inactivity_timeout or 60, 2)
        interval = max(0.5, min(timeout / 4, 15.0))
        extend = self.extend if self.extend is not None else bool(
            getattr(self.conn, "legacy", False))
        last_extend = time.monotonic()
        while not self._stop.wait(interval):
            try:
                self._check_phase()
                now = time.monotonic()
                if now - self._last_activity > timeout / 2:
                    self._ping_data_plane()
                if extend and now - last_extend > min(timeout / 2, 60):
                    self.conn.transfers.extend(self.transfer_id)
                    last_extend = now
            except Exception as e:  # keep-alive trouble must not kill the copy
                log.debug("keep-alive: %s", e)

    def _check_phase(self) -> None:
        try:
            t = self.conn.transfers.get(self.transfer_id)
        except NotFound:
            self._stopped_by_system("the transfer disappeared from the engine")
            return
        if t.phase in STOPPED:
            self._stopped_by_system(f"the engine moved the transfer to phase {t.phase}")

    def _stopped_by_system(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel_event.set()

    def _ping_data_plane(self) -> None:
        # A fresh client: the worker connections are busy or cached options
        # would not reach the server.
        with self._client() as client:
            client.options()
            self.touch()

    def _stop_keepalive(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        self._thread = None

    def _close_backends(self) -> None:
        for b in self._backends:
            with contextlib.suppress(Exception):
                b.close()
        self._backends.clear()
