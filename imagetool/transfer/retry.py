"""Per-request retries of transient data-plane errors.

``RetryingBackend`` wraps an ``HttpBackend`` (one connection) for the
copier: a request failing with a transient error (connection reset,
refused or aborted, timeout, 500/502/503/504) is tried again after an
exponential backoff with jitter, on a new connection, up to
``RetryPolicy.tries`` attempts and ``RetryPolicy.total`` seconds. Permanent
errors (403: ticket gone or expired, other 4xx) are raised at once.

Uploads write with ``flush=n``: after a 500 or a lost connection the server
may have dropped everything this connection sent since its last flush. So
the wrapper remembers those ranges and, before retrying, sends them again
(re-reading them from ``source``); a range is forgotten only after a
successful flush on this connection.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from imagetool.errors import ConnectionFailed, ImageioError
from imagetool.formats.base import Extent

log = logging.getLogger(__name__)

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


NO_RETRY = RetryPolicy(tries=1, total=0.0)


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


class RetryingBackend:
    """A Backend over an HttpBackend that retries transient failures.

    ``source`` (a thread-safe backend, e.g. a SharedBackend of the upload's
    source) lets the wrapper re-send ranges written since the last flush.
    Without it, a failure after unflushed writes is raised (nothing could
    be re-sent). Only this object's connection is involved: each copier
    worker gets its own through ``clone()``.
    """

    def __init__(self, inner: Any, policy: RetryPolicy = RetryPolicy(), *,
                 source: Any = None, stop: threading.Event | None = None):
        self.inner = inner
        self.policy = policy
        self.source = source
        self.stop = stop
        self._unflushed: list[tuple[str, int, int]] = []   # (op, start, length)
        self.retries = 0

    # Attributes the copier and callers read (features, max_writers, client...).
    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def size(self) -> int:
        return self._call(lambda: self.inner.size, "size")

    def extents(self, context: str = "zero") -> Iterator[Extent]:
        return iter(self._call(lambda: list(self.inner.extents(context)), "extents"))

    def _reconnect(self) -> None:
        self.retries += 1
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

    def close(self) -> None:
        self.inner.close()
