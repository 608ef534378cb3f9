"""Threads whose end is waited for on an event, never through ``Thread.join``.

On Python 3.11 a KeyboardInterrupt landing inside ``Thread.join`` marks the
thread as stopped although it still runs: the interrupted
``_wait_for_tstate_lock`` releases the lock the running thread holds (the
handling CPython added for bpo-45274 takes a held lock for its own), after
which ``is_alive()`` is False and no later ``join`` waits for it. Code that stops its workers on Ctrl-C
would then close files and connections under a running worker. A worker
started here sets an event as its last act; waiting on the event can be
interrupted any number of times and waited on again.

And blocks that a Ctrl-C must not cut in two (:func:`interrupts_held`):
a request that makes something with the line that keeps its id, or a
clean-up.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator


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


class _Held:
    """The SIGINT handler of :func:`interrupts_held`: it notes the signal.
    ``previous`` is the handler it stands in for (put back at the end);
    ``ignore``: what it notes is dropped (see :func:`interrupts_ignored`)."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.signals = 0
        self.ignore = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.signals += 1


def _in_main_thread() -> bool:
    """Whether signals reach this thread (the main one only) and their
    handler was set from Python (else it cannot be put back)."""
    return threading.current_thread() is threading.main_thread() \
        and signal.getsignal(signal.SIGINT) is not None


@contextmanager
def interrupts_held() -> Iterator[None]:
    """A block that Ctrl-C never cuts in two: a SIGINT received in it is
    acted on once the block is over (KeyboardInterrupt, raised where the
    ``with`` ends, even over an exception of the block).

    For a request that makes something together with the line that
    records its id (so that the caller's clean-up finds it), and for a
    clean-up that must not stop halfway. A KeyboardInterrupt can land at
    any bytecode of the main thread, outside any ``try`` meant to catch
    it: in ``Thread.start`` while a worker making the request starts, or
    between a request's answer and the line that keeps its id (the
    transfer then stays open and its disk locked until the engine's
    inactivity timeout). Here the SIGINT handler itself is swapped for
    one that only notes the signal, so no bytecode of the block can be
    interrupted; blocking calls go on after it (PEP 475). Only the main
    thread receives signals: elsewhere this does nothing. Nested blocks
    pass a held signal to the outer one, which acts on it.
    """
    if not _in_main_thread():
        yield
        return
    held = _Held(signal.getsignal(signal.SIGINT))
    signal.signal(signal.SIGINT, held)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, held.previous)
        if held.signals and not held.ignore:
            _deliver(held.previous)


def _deliver(handler: Any) -> None:
    """Act on a held SIGINT as ``handler`` (the one before the block) would."""
    if callable(handler):
        handler(signal.SIGINT, None)
    elif handler == signal.SIG_DFL:
        raise KeyboardInterrupt


def interrupts_ignored() -> None:
    """From now on, Ctrl-C is ignored, and one held by
    :func:`interrupts_held` blocks is dropped: the command's work is done
    and stands, and what is left is to say so.

    For the CLI, whose commands pass it as the ``committed`` callback of
    a workflow (called at the moment the result exists: a VM restored or
    imported, an OVA under its name); the CLI's ``main`` puts the handler
    back when the command is over. Without it, a Ctrl-C landing between
    that moment and the report (closing the connection, printing) made
    the command exit 130 with everything it made left in place.
    """
    if not _in_main_thread():
        return
    handler = signal.getsignal(signal.SIGINT)
    while isinstance(handler, _Held):      # the blocks around us, inner to outer
        handler.ignore = True
        if not isinstance(handler.previous, _Held):
            handler.previous = signal.SIG_IGN
            return
        handler = handler.previous
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def shielded(fn: Callable[[], Any]) -> Any:
    """``fn()`` run to its end whatever Ctrl-Cs come meanwhile; its value.

    For clean-up after a failure (a first Ctrl-C included): a second
    Ctrl-C landing in the middle of it would otherwise leave half of it
    undone, e.g. a disk made but not removed. A KeyboardInterrupt
    received meanwhile is raised once ``fn`` is over (see
    :func:`interrupts_held`).
    """
    with interrupts_held():
        return fn()
