"""Progress on the terminal: tqdm byte bars, and running several transfers
at once with one bar each (stopped together on Ctrl-C)."""

from __future__ import annotations

import functools
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from tqdm import tqdm

from imagetool.iocore.backend import Closing
from imagetool.threads import Worker, interrupts_held, interrupts_ignored


def bar_options() -> dict:
    """tqdm options of a byte bar on stderr, its size following the terminal,
    or 80x100 where it reports a zero size (a fresh pty, some serial
    consoles say 0x0, and tqdm would then draw empty lines or hide every
    positioned bar)."""
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        columns = lines = 0
    opts: dict = dict(unit="B", unit_scale=True, unit_divisor=1024, leave=True,
                      file=sys.stderr)
    opts.update({"dynamic_ncols": True} if columns > 0 else {"ncols": 80})
    if lines <= 0:
        opts["nrows"] = 100
    return opts


def vm_disks_size(conn: Any, vm: str) -> int:
    """A bar's total for reading a VM: the virtual sizes of its disks.
    Only on a terminal: a piped run asks the engine nothing more."""
    if not sys.stderr.isatty():
        return 0
    return sum(conn.disks.get(a.disk_id).provisioned_size or 0
               for a in conn.vms.disk_attachments(conn.vms.find(vm).id))


@contextmanager
def progress_bar(total: int, desc: str) -> Iterator[Any]:
    """A tqdm byte bar on a terminal; a no-op callable when piped.

    Yields ``update(nbytes)``.
    """
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with tqdm(total=total, desc=desc, **bar_options()) as bar:
        yield bar.update


class Bars(Closing):
    """One tqdm bar per image plus a total; nothing when not on a terminal.

    ``stop`` is set on Ctrl-C: the next progress call of every transfer
    then raises KeyboardInterrupt in its worker, which cancels it.
    """

    def __init__(self, items: Sequence[tuple[str, int]], enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.bars: list[Any] = []
        self.total = None
        if self.enabled:
            kw = bar_options()
            pos = 0
            if len(items) > 1:
                self.total = tqdm(total=sum(s for _, s in items), desc="total",
                                  position=0, **kw)
                pos = 1
            self.bars = [tqdm(total=size, desc=_short(name), position=pos + i, **kw)
                         for i, (name, size) in enumerate(items)]

    def callback(self, index: int) -> Callable[[int], None]:
        """The progress callback for image ``index``."""
        def update(n: int) -> None:
            if self.stop.is_set():
                raise KeyboardInterrupt
            if self.enabled:
                with self.lock:
                    self.bars[index].update(n)
                    if self.total is not None:
                        self.total.update(n)
        return update

    def write(self, text: str) -> None:
        """One line on stderr, above the bars rather than through them."""
        if self.enabled:
            with self.lock:
                tqdm.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        for b in self.bars + ([self.total] if self.total is not None else []):
            b.close()


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def run_with_bars(jobs: int, items: Sequence[tuple[str, int]],
                  run: Callable[[int, Bars], Any]) -> list[Any]:
    """``run(i, bars)`` for each ``(label, size)`` of ``items``, each with its
    bar, ``jobs`` at a time: :func:`run_jobs`'s outcomes, with every
    command's ``committed`` (``threads.interrupts_ignored``)."""
    with Bars(items) as bars:
        return run_jobs(jobs, [functools.partial(run, i, bars) for i in range(len(items))],
                        bars, interrupts_ignored)


def run_jobs(jobs: int, tasks: Sequence[Callable[[], Any]], bars: Bars,
             committed: Callable[[], None] | None = None) -> list[Any]:
    """Run ``tasks`` ``jobs`` at a time; results (or exceptions) in order.

    On Ctrl-C (or any error while waiting) every running task is told to
    stop (through ``bars.stop``) and waited for, so each cancels its
    transfer; then the exception is raised.

    Workers are ``threads.Worker`` (waited for on an event, never through
    ``Thread.join``), listed before they start: a Ctrl-C inside
    ``Thread.start`` or a pool's bookkeeping must not leave a running worker
    unlisted. A second Ctrl-C while the stopped tasks end is held until
    they have (each must cancel its transfer before the process exits).

    ``committed()`` is called once every task did its work (commands pass
    ``threads.interrupts_ignored``: the results stand, and a Ctrl-C until
    the command has reported them is ignored).
    """
    not_run = object()
    outcomes: list[Any] = [not_run] * len(tasks)
    lock = threading.Lock()
    queue = iter(range(len(tasks)))

    def worker() -> None:
        while not bars.stop.is_set():
            with lock:
                i = next(queue, None)
            if i is None:
                return
            try:
                outcomes[i] = tasks[i]()
            except BaseException as e:      # handed to the caller below
                outcomes[i] = e

    workers: list[Worker] = []
    try:
        for _ in range(max(1, min(jobs, len(tasks)))):
            w = Worker(worker)
            workers.append(w)               # listed before it can run
            w.start()
        for w in workers:
            while not w.wait(0.2):
                pass
    except BaseException as e:
        bars.stop.set()
        interrupt: BaseException | None = e
    else:
        interrupt = None
    finally:
        with interrupts_held():
            # A worker that has not run (Worker.done) sees the stop and
            # takes no task.
            for w in workers:
                w.wait()
            done = all(o is not not_run and not isinstance(o, BaseException)
                       for o in outcomes)
            if done and committed is not None:
                committed()
    if interrupt is not None and not done:
        raise interrupt
    # (A Ctrl-C that came once every task had done its work anyway, e.g.
    # while the last transfer was finalized, changes nothing: the command
    # reports what it did and exits 0, rather than 130 with all done.)
    for outcome in outcomes:
        if isinstance(outcome, KeyboardInterrupt):
            raise outcome
    return outcomes
