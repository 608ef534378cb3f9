"""The backend wrappers, in one place: each adds one concern to a Backend.

A transfer stacks them around the backends of ``imagetool.formats`` and
``imagetool.imageio``; the copier (``imagetool.iocore.copier``) sees only the
top of each stack::

    upload (remote side)                 download (local side)
    ---------------------                ---------------------
    JournalingBackend  resume journal    JournalingBackend  resume journal
      RetryingBackend  per-request         SharedBackend    workers share
        HttpBackend    retries               RawBackend     one file
                                                            (O_DIRECT, sparse)
    checksum read-back                   local hash beside a copy
    ------------------                   ------------------------
    Window             cut / pad size    Cancellable        stop on demand
      PerThread        a clone per         open_image(...)
        HttpBackend    reading thread

- ``SharedBackend``: worker threads share one thread-safe local backend
  (raw file, qcow2 reader or writer); only the owner flushes and closes.
- ``RetryingBackend``: transient data-plane errors are retried on a new
  connection; unflushed writes are re-sent from the source first.
- ``FlushingBackend``: flushes every so many bytes, so the server can
  hash flushed blocks beside the copy (checksum ahead).
- ``JournalingBackend``: a FlushingBackend whose ranges become "done" in
  a resume journal once a flush or fsync made them durable.
- ``PerThread``: each reading thread gets its own ``clone()`` (an
  HttpBackend holds one connection).
- ``Window``: a backend seen with another length (cut, or padded with a
  zero hole).
- ``Cancellable``: reads stop with an error once an event is set.

Direct I/O and sparseness are not wrappers: the raw backend owns them
(``RawBackend(path, mode, direct=..., sparse=...)``).
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from imagetool.errors import ConnectionFailed, ImageioError, ImagetoolError
from imagetool.iocore.backend import Backend, BackendBase, Extent

log = logging.getLogger(__name__)

# A journaling connection flushes (and its ranges become "done") after this
# many bytes or seconds, so a kill loses at most that much per worker.
FLUSH_BYTES = 16 * 1024 * 1024
FLUSH_SECONDS = 2.0


# --- sharing ---------------------------------------------------------------

class Wrapper(BackendBase):
    """Passes everything to ``inner``; each wrapper overrides what it adds.

    The protocol's attributes are the wrapped backend's; so are others
    (``read_into``, ``direct``, ...).
    """

    def __init__(self, inner: Any):
        self.inner = inner

    size = property(lambda self: self.inner.size)
    features = property(lambda self: self.inner.features)
    max_readers = property(lambda self: self.inner.max_readers)
    max_writers = property(lambda self: self.inner.max_writers)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":         # not set yet: no endless recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def close(self) -> None:
        self.inner.close()


class SharedBackend(Wrapper):
    """Let worker threads share one thread-safe local backend.

    ``clone()`` returns views whose ``close()`` and ``flush()`` do nothing:
    the owner flushes and closes the real backend once, after the copy
    (a qcow2 writer writes its metadata then, not once per worker).
    ``owner=False``: this one never flushes or closes it either.
    """

    def __init__(self, backend: Backend, owner: bool = True):
        super().__init__(backend)
        self._owner = owner

    def flush(self) -> None:
        if self._owner:
            self.inner.flush()

    def clone(self) -> "SharedBackend":
        return SharedBackend(self.inner, owner=False)

    def close(self) -> None:
        if self._owner:
            self.inner.close()


# --- retries of transient data-plane errors -------------------------------

TRANSIENT_STATUS = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry one request: attempts, total time, backoff."""

    tries: int = 5
    total: float = 60.0          # seconds from the first failure
    base_delay: float = 0.5
    max_delay: float = 10.0

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        """The default policy, changed by $IMAGETOOL_RETRY_TRIES (attempts per
        request, 1 = no retry) and $IMAGETOOL_RETRY_SECONDS (time limit)."""
        tries = os.environ.get("IMAGETOOL_RETRY_TRIES")
        total = os.environ.get("IMAGETOOL_RETRY_SECONDS")
        return cls(tries=max(1, int(tries)) if tries else cls.tries,
                   total=float(total) if total else cls.total)

    def delay(self, attempt: int) -> float:
        """Backoff before attempt ``attempt`` (1 = first retry), with full jitter."""
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return cap / 2 + random.uniform(0, cap / 2)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying on a new connection."""
    if isinstance(exc, ImageioError):
        # A 2xx "error" is a reply cut short (fewer bytes than announced).
        return exc.status in TRANSIENT_STATUS or (
            exc.status is not None and 200 <= exc.status < 300)
    if isinstance(exc, ConnectionFailed):
        return True
    return isinstance(exc, (ConnectionError, socket.timeout, TimeoutError,
                            http.client.RemoteDisconnected,
                            http.client.IncompleteRead))


def call_with_retry(fn: Callable[[], Any], policy: RetryPolicy, *,
                    what: str = "request",
                    before_retry: Callable[[], None] | None = None,
                    stop: threading.Event | None = None) -> Any:
    """Call ``fn`` until it succeeds, a permanent error, or the policy ends.

    ``before_retry`` runs before every new attempt (reconnect, re-send);
    its own transient failures count as a failed attempt. The last error
    is raised as is.
    """
    attempt = 0
    first_failure: float | None = None
    while True:
        try:
            if attempt and before_retry is not None:
                before_retry()
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            now = time.monotonic()
            if first_failure is None:
                first_failure = now
            attempt += 1
            if attempt >= policy.tries or now - first_failure >= policy.total:
                raise
            delay = min(policy.delay(attempt),
                        max(0.0, policy.total - (now - first_failure)))
            log.info("%s failed (%s); retry %d of %d in %.1f s",
                     what, e, attempt, policy.tries - 1, delay)
            if stop is not None and stop.wait(delay):
                raise
            if stop is None:
                time.sleep(delay)


class RetryingBackend(Wrapper):
    """A Backend over an HttpBackend that retries transient failures.

    ``source`` (a thread-safe backend, e.g. a SharedBackend of the upload's
    source) lets the wrapper re-send ranges written since the last flush.
    Without it, a failure after unflushed writes is raised (nothing could
    be re-sent). Only this object's connection is involved: each copier
    worker gets its own through ``clone()``.
    """

    def __init__(self, inner: Any, policy: RetryPolicy = RetryPolicy(), *,
                 source: Any = None, stop: threading.Event | None = None):
        super().__init__(inner)
        self.policy = policy
        self.source = source
        self.stop = stop
        self._unflushed: list[tuple[str, int, int]] = []   # (op, start, length)

    @property
    def size(self) -> int:
        return self._call(lambda: self.inner.size, "size")

    def extents(self, context: str = "zero") -> Iterator[Extent]:
        return iter(self._call(lambda: list(self.inner.extents(context)), "extents"))

    def _reconnect(self) -> None:
        self.inner.close()          # the next request opens a new connection

    def _resend(self) -> None:
        """Reconnect and send again what the server may have lost."""
        self._reconnect()
        if not self._unflushed:
            return
        if self.source is None:
            raise RuntimeError("unflushed writes were lost and cannot be re-sent")
        buf = bytearray(max(length for _, _, length in self._unflushed))
        for op, start, length in self._unflushed:
            if op == "zero":
                self.inner.zero(start, length)
                continue
            view = memoryview(buf)[:length]
            got = 0
            while got < length:
                n = self.source.read_into(start + got, view[got:])
                if not n:
                    raise RuntimeError(f"short read re-sending offset {start}")
                got += n
            self.inner.write(start, view)

    def _call(self, fn: Callable[[], Any], what: str, resend: bool = False) -> Any:
        return call_with_retry(fn, self.policy, what=what,
                               before_retry=self._resend if resend else self._reconnect,
                               stop=self.stop)

    def read_into(self, offset: int, buf: memoryview) -> int:
        """A ranged read, retried on a new connection."""
        return self._call(lambda: self.inner.read_into(offset, buf),
                          f"read at {offset}")

    def write(self, offset: int, data: Any) -> None:
        """Write with flush=n; a retry re-sends the unflushed ranges first."""
        self._call(lambda: self.inner.write(offset, data), f"write at {offset}",
                   resend=True)
        self._unflushed.append(("write", offset, len(memoryview(data).cast("B"))))

    def zero(self, offset: int, length: int) -> None:
        """Zero a range; retried like a write."""
        self._call(lambda: self.inner.zero(offset, length), f"zero at {offset}",
                   resend=True)
        self._unflushed.append(("zero", offset, length))

    def flush(self) -> None:
        """Flush this connection; after that nothing needs re-sending."""
        self._call(self.inner.flush, "flush", resend=True)
        self._unflushed.clear()

    def clone(self) -> "RetryingBackend":
        """Same policy and source, new connection (retried too)."""
        inner = call_with_retry(self.inner.clone, self.policy, what="connect",
                                stop=self.stop)
        return RetryingBackend(inner, self.policy, source=self.source, stop=self.stop)


# --- the resume journal ----------------------------------------------------

class FlushingBackend(Wrapper):
    """Wraps a destination backend; flushes it every so many bytes or seconds.

    A sync runs every ``flush_bytes`` written or zeroed or ``flush_seconds``
    on this object, and at ``flush()``. ``sync`` defaults to this
    connection's own ``flush`` (an upload's PATCH flush); a shared local
    file passes its fsync, shared by all clones. A server hashing flushed
    blocks ahead of a checksum (``imagetool.server.checksum_ahead``) can
    only hash what a flush made durable: flushing as the copy goes lets it
    hash beside the copy instead of after it, and a RetryingBackend below
    keeps fewer unflushed ranges to re-send. ``journal``: see
    JournalingBackend.
    """

    def __init__(self, inner: Any, *, sync: Callable[[], None] | None = None,
                 flush_bytes: int = FLUSH_BYTES, flush_seconds: float = FLUSH_SECONDS,
                 journal: Any = None):
        super().__init__(inner)
        self._shared_sync = sync
        self.flush_bytes = flush_bytes
        self.flush_seconds = flush_seconds
        self.journal = journal
        self._pending: list[tuple[int, int]] = []
        self._pending_bytes = 0
        self._last_sync = time.monotonic()

    def _written(self, offset: int, length: int) -> None:
        self._pending.append((offset, length))
        self._pending_bytes += length
        if (self._pending_bytes >= self.flush_bytes
                or time.monotonic() - self._last_sync >= self.flush_seconds):
            self._sync()

    def _sync(self) -> None:
        if self._shared_sync is not None:
            self._shared_sync()
        else:
            self.inner.flush()
        self._last_sync = time.monotonic()
        if self._pending and self.journal is not None:
            self.journal.add_done(self._pending)
        self._pending = []
        self._pending_bytes = 0

    def write(self, offset: int, data: Any) -> None:
        self.inner.write(offset, data)
        self._written(offset, len(memoryview(data).cast("B")))

    def zero(self, offset: int, length: int) -> None:
        self.inner.zero(offset, length)
        self._written(offset, length)

    def flush(self) -> None:
        self._sync()

    def clone(self) -> "FlushingBackend":
        return FlushingBackend(self.inner.clone(), sync=self._shared_sync,
                               flush_bytes=self.flush_bytes,
                               flush_seconds=self.flush_seconds, journal=self.journal)


class JournalingBackend(FlushingBackend):
    """A FlushingBackend that records ranges in a resume journal once durable.

    Writes and zeros are "pending" until a sync succeeds, then added to
    the journal. Downloads pass the local file's fsync as ``sync``.
    """

    def __init__(self, inner: Any, journal: Any, **options: Any):
        super().__init__(inner, journal=journal, **options)


# --- verification's adapters ------------------------------------------------

class PerThread(Wrapper):
    """Reads of a non-thread-safe backend, each thread on its own clone.

    ``imagetool.checksum`` reads from several threads; an HttpBackend holds
    one connection, so every reading thread gets its own ``clone()``.
    """

    def __init__(self, backend: Any):
        super().__init__(backend)
        self._local = threading.local()
        self._clones: list[Any] = []
        self._lock = threading.Lock()

    def read_into(self, offset: int, buf: memoryview) -> int:
        b = getattr(self._local, "backend", None)
        if b is None:
            b = self._local.backend = self.inner.clone()
            with self._lock:
                self._clones.append(b)
        return b.read_into(offset, buf)

    def close(self) -> None:
        """Close the clones (the wrapped backend is the caller's)."""
        with self._lock:
            clones, self._clones = self._clones, []
        for b in clones:
            with suppress(Exception):
                b.close()


class Window(BackendBase):
    """``backend`` seen with length ``size``: cut, or padded with a zero hole."""

    def __init__(self, backend: Any, size: int):
        self._backend = backend
        self.size = size
        self._inner = backend.size

    def extents(self, context: str = "zero") -> Iterator[Extent]:
        end = min(self.size, self._inner)
        for ext in self._backend.extents(context):
            if ext.start >= end:
                break
            yield Extent(ext.start, min(ext.start + ext.length, end) - ext.start,
                         ext.zero, ext.hole)
        if self.size > self._inner:
            yield Extent(self._inner, self.size - self._inner, zero=True, hole=True)

    def read_into(self, offset: int, buf: memoryview) -> int:
        # Only called inside [0, min(size, inner)): the padding is a zero extent.
        return self._backend.read_into(offset, buf)


class Cancellable(Wrapper):
    """A backend whose reads stop with ``ImagetoolError`` once ``event`` is set."""

    def __init__(self, backend: Backend, event: threading.Event):
        super().__init__(backend)
        self._event = event

    def read_into(self, offset: int, buf: memoryview) -> int:
        if self._event.is_set():
            raise ImagetoolError("verification cancelled")
        return self.inner.read_into(offset, buf)
