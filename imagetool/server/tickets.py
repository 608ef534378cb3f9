"""Tickets: what the control plane tells the data plane it may serve.

The control plane (``server/domain/transfers.py``) adds a ticket when an
ImageTransfer reaches ``transferring`` and removes it on finalize/cancel; the
data plane (``server/dataplane.py``) looks tickets up by the id in
``/images/<ticket-id>``. Activity on a ticket (any completed request or an
OPTIONS) resets its expiry, which the control plane reads to apply the
transfer's inactivity timeout.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from imagetool.iocore.backend import Backend


@dataclass
class Ticket:
    uuid: str
    size: int
    ops: tuple[str, ...]                      # ("read",) or ("read", "write")
    open_backend: Callable[[], Backend]       # opened lazily, once, shared
    timeout: float = 300.0                    # seconds until expiry, reset by activity
    inactivity_timeout: float = 60.0          # idle connection drop
    dirty: bool = False                       # supports extents?context=dirty
    transfer_id: str | None = None
    # Called with (offset, length) before a write or zero changes the image
    # (write tracking for incremental backups, server/dirty.py).
    on_write: Callable[[int, int], None] | None = None

    # Runtime state, guarded by ``lock``.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    canceled: bool = False
    connections: int = 0
    transferred: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    expires: float = 0.0                      # monotonic deadline
    _backend: Backend | None = field(default=None, repr=False)
    _busy: int = 0                            # requests using the backend now
    _close_pending: bool = False
    _closed: threading.Event = field(default_factory=threading.Event, repr=False)
    # A server.checksum_ahead.ChecksumAhead once a client announced its checksum.
    checksum_ahead: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.expires = time.monotonic() + self.timeout

    @property
    def writable(self) -> bool:
        return "write" in self.ops

    def backend(self) -> Backend:
        with self.lock:
            if self._backend is None:
                self._backend = self.open_backend()
            return self._backend

    def touch(self, nbytes: int = 0) -> None:
        """Record activity: extends expiry and counts bytes moved."""
        with self.lock:
            now = time.monotonic()
            self.last_activity = now
            self.expires = now + self.timeout
            self.transferred += nbytes

    def idle_time(self) -> float:
        return time.monotonic() - self.last_activity

    def expired(self) -> bool:
        return time.monotonic() > self.expires

    def extend(self, timeout: float) -> None:
        with self.lock:
            self.timeout = timeout
            self.expires = time.monotonic() + timeout

    def active(self) -> bool:
        return self.connections > 0

    def begin_request(self) -> None:
        """A request starts using the backend (pair with ``end_request``)."""
        with self.lock:
            self._busy += 1

    def end_request(self) -> None:
        """A request is done with the backend; closes it if a close waited."""
        with self.lock:
            self._busy -= 1
            closing = self._busy == 0 and self._close_pending
        if closing:
            self.close_backend()

    def close_backend(self) -> None:
        """Close the backend now, or when the last running request ends.

        Closing under a running request (a cancel racing a PUT) would let
        it write through a descriptor number the process may already have
        reused for another file.
        """
        with self.lock:
            self._close_pending = self._busy > 0
            if self._close_pending:
                return
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
        self._closed.set()

    def wait_closed(self, timeout: float) -> bool:
        """Wait until the backend is closed (a deferred close ran); False on
        timeout. A request's reply is sent before it lets go of the backend,
        so a finalize or cancel that follows the client's last reply must
        wait here before it reads, copies or restores the volume (a qcow2
        writer writes its metadata when closed)."""
        return self._closed.wait(timeout)


class TicketRegistry:
    """Thread-safe map of ticket id -> Ticket."""

    def __init__(self) -> None:
        self._tickets: dict[str, Ticket] = {}
        self._lock = threading.Lock()

    def add(self, ticket: Ticket) -> None:
        with self._lock:
            old = self._tickets.get(ticket.uuid)
            self._tickets[ticket.uuid] = ticket
        if old is not None and old is not ticket:
            old.close_backend()

    def get(self, uuid: str) -> Ticket | None:
        """The ticket, or None when unknown (expired tickets are returned:
        the caller decides, so it can say 'expired' rather than 'no such')."""
        with self._lock:
            return self._tickets.get(uuid)

    def remove(self, uuid: str) -> None:
        """Remove and close the backend; idempotent."""
        with self._lock:
            ticket = self._tickets.pop(uuid, None)
        if ticket is not None:
            ticket.canceled = True
            ticket.close_backend()

    def all(self) -> list[Ticket]:
        with self._lock:
            return list(self._tickets.values())
