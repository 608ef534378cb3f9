"""Threads whose end is waited for on an event, never through ``Thread.join``.

On Python 3.11 a KeyboardInterrupt landing inside ``Thread.join`` marks the
thread as stopped although it still runs: the interrupted
``_wait_for_tstate_lock`` releases the lock the running thread holds (the
handling CPython added for bpo-45274 takes a held lock for its own), after
which ``is_alive()`` is False and no later ``join`` waits for it. Code that stops its workers on Ctrl-C
would then close files and connections under a running worker. A worker
started here sets an event as its last act; waiting on the event can be
interrupted any number of times and waited on again.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


class Worker:
    """A daemon thread running ``target(*args)`` whose end sets ``ended``."""

    def __init__(self, target: Callable[..., Any], *args: Any, name: str | None = None):
        self.ended = threading.Event()

        def body() -> None:
            try:
                target(*args)
            finally:
                self.ended.set()

        self.thread = threading.Thread(target=body, name=name, daemon=True)

    def start(self) -> "Worker":
        self.thread.start()
        return self

    def done(self) -> bool:
        """Over, or never started (a thread with no ident has not run)."""
        return self.ended.is_set() or self.thread.ident is None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever); whether it is over."""
        return self.done() or self.ended.wait(timeout)


def wait_all(workers: list[Worker], timeout: float | None = None,
             on_interrupt: Callable[[BaseException], None] | None = None) -> bool:
    """Wait for every worker, up to ``timeout`` seconds in all (None: for ever).

    An exception raised into the waiting thread (a Ctrl-C) is handed to
    ``on_interrupt`` and the wait goes on; without ``on_interrupt`` it is
    raised once every worker is over. Whether all are over.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pending: BaseException | None = None
    for w in workers:
        while True:
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if w.wait(0.5 if left is None else min(0.5, left)) or left == 0.0:
                    break
            except BaseException as e:  # noqa: B036 - kept, raised after the wait
                if on_interrupt is not None:
                    on_interrupt(e)
                elif pending is None:
                    pending = e
    if pending is not None:
        raise pending
    return all(w.done() for w in workers)


class Background(Worker):
    """``fn()`` run in a daemon thread beside the caller's own work;
    ``result()`` waits and returns its value, or raises what it raised."""

    def __init__(self, fn: Callable[[], Any], name: str | None = None):
        self._out: dict[str, Any] = {}

        def run() -> None:
            try:
                self._out["value"] = fn()
            except BaseException as e:  # noqa: B036 - raised by result()
                self._out["error"] = e
        super().__init__(run, name=name)
        self.start()

    def result(self) -> Any:
        self.wait()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]


def shielded(fn: Callable[[], Any], undo: Callable[[Any], Any] | None = None) -> Any:
    """``fn()`` run to its end whatever Ctrl-Cs come meanwhile; its value.

    For cleanup after a failure (a first Ctrl-C included): a second Ctrl-C
    landing in the middle of it would otherwise leave half of it undone,
    e.g. a disk made but not removed. And for a request that makes
    something (``undo`` given): a Ctrl-C while it is in flight would leave
    what the engine made with no id to remove it by; here the request
    ends, ``undo(value)`` removes what it made, then the Ctrl-C goes on.
    ``fn`` runs in a worker thread, which signals never interrupt; the
    caller waits for it, and a KeyboardInterrupt received while it waits
    is raised once ``fn`` (and ``undo``) is over; what ``fn`` raised goes
    first, and what ``undo`` raised is dropped (the interrupt matters).
    """
    job = Background(fn, name="cleanup")
    interrupts: list[BaseException] = []
    wait_all([job], on_interrupt=interrupts.append)
    value = job.result()
    if interrupts:
        if undo is not None:
            try:
                shielded(lambda: undo(value))
            except Exception:
                pass
        raise interrupts[0]
    return value
