"""The one parallel copier: every copy of image bytes goes through ``copy``.

Uploads and downloads, ``convert``, the conversions of upload and download,
and the local engine's disk copy (flatten), snapshot merge, rebuilt upload
writers and pre-transfer copies all call it (as ovirt-imageio's client
runs upload, download and backup over one copy loop).

``copy(src, dst, CopyOptions(...))`` plans requests from the source's
extents (data ranges are copied in requests of at most ``request_size``
bytes; zero ranges become ``dst.zero()`` or nothing when the destination is
known to be empty), then runs them on N worker threads. Worker 0 uses the
caller's backends and the others ``clone()``s (so an HTTP backend opens
exactly N connections); each worker reuses one buffer (two with
``overlap``), so memory stays at about ``workers x request_size`` whatever
the image size.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import mmap
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from imagetool.iocore.backends import SharedBackend
from imagetool.errors import ImagetoolError, TransferError
from imagetool.iocore.backend import Backend, Extent, merge_extents, undo_on_error
from imagetool.threads import Worker, wait_all

MiB = 1 << 20
DEFAULT_REQUEST_SIZE = 8 * MiB
# Zero ranges are split too, so that progress moves and workers share them.
MAX_ZERO_REQUEST = 1024 * MiB


class CopyError(TransferError):
    """A copy request failed; says where and on which side.

    ``side`` is ``"reading source"`` or ``"writing destination"``. The
    original exception is chained as ``__cause__``; the exit code follows it
    (a connection failure stays exit code 3).
    """

    def __init__(self, side: str, offset: int, length: int, cause: BaseException):
        self.side = side
        self.offset = offset
        self.length = length
        if isinstance(cause, ImagetoolError):
            self.exit_code = cause.exit_code
        super().__init__(
            f"{side} failed at offset {offset} length {length}: {cause}")


class CopyCancelled(TransferError):
    """The copy was stopped through its ``cancel_event``."""


@dataclass
class CopyStats:
    """What a copy did. ``bytes_total`` covers the whole source size."""

    bytes_total: int = 0
    bytes_copied: int = 0      # data read and written
    bytes_zeroed: int = 0      # zeroed on the destination (zero op or zeros sent)
    bytes_skipped: int = 0     # zero ranges left alone (destination already zero)
    requests: int = 0
    workers: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Guest bytes per second over the whole copy."""
        return self.bytes_total / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class _Request:
    op: str          # "copy" | "zero" | "zerodata" | "skip"
    start: int
    length: int


def plan(extents: Iterator[Extent], *, request_size: int, dst_is_zero: bool,
         dst_zero: bool = True, over_backing: bool = False) -> Iterator[_Request]:
    """Turn extents into requests of bounded size.

    Data requests are cut at multiples of ``request_size`` so that requests
    stay aligned whatever the extent boundaries. Holes count as zeros: the
    copier moves guest data, and a hole reads as zeros. ``over_backing``
    (a new layer over a backing file): holes are skipped, left unallocated
    so the backing shows through as in the source chain, and zero extents
    that are not holes are zeroed, so they hide the backing's data.
    """
    for ext in extents:
        if ext.length <= 0:
            continue
        if ext.zero or ext.hole:
            if (over_backing and ext.hole) or (dst_is_zero and not over_backing):
                yield _Request("skip", ext.start, ext.length)
                continue
            op, step = ("zero", MAX_ZERO_REQUEST) if dst_zero else ("zerodata", request_size)
        else:
            op, step = "copy", request_size
        pos, end = ext.start, ext.end
        while pos < end:
            boundary = (pos // step + 1) * step
            length = min(end, boundary) - pos
            yield _Request(op, pos, length)
            pos += length


def align_extents(extents: Iterable[Extent], align: int, size: int) -> Iterator[Extent]:
    """Data extents widened to whole ``align`` blocks (reading a little zero
    data around them); the zero ranges between shrink accordingly."""
    def widened() -> Iterator[Extent]:
        pos = 0             # everything before pos is covered
        for ext in extents:
            if ext.zero or ext.hole or ext.length <= 0:
                continue
            start = max(pos, ext.start // align * align)
            end = min(size, -(-ext.end // align) * align)
            if end <= start:
                continue
            if start > pos:
                yield Extent(pos, start - pos, zero=True)
            yield Extent(start, end - start)
            pos = end
        if pos < size:
            yield Extent(pos, size - pos, zero=True)
    return merge_extents(widened())


def missing(intervals: list[list[int]], start: int, end: int) -> Iterator[tuple[int, int]]:
    """The parts of ``[start, end)`` not covered by sorted, disjoint
    ``intervals`` as (start, end)."""
    pos = start
    i = max(0, bisect.bisect_right(intervals, [start, float("inf")]) - 1)
    while pos < end and i < len(intervals):
        a, b = intervals[i]
        if b <= pos:
            i += 1
            continue
        if a >= end:
            break
        if a > pos:
            yield pos, a
        pos = max(pos, b)
        i += 1
    if pos < end:
        yield pos, end


def skip_done(requests: Iterable[Any], intervals: list[list[int]]) -> Iterator[Any]:
    """Requests with the parts inside ``intervals`` (done before a resume)
    turned into skips."""
    for req in requests:
        if req.op == "skip" or not intervals:
            yield req
            continue
        end = req.start + req.length
        pos = req.start
        for a, b in missing(intervals, req.start, end):
            if a > pos:
                yield dataclasses.replace(req, op="skip", start=pos, length=a - pos)
            yield dataclasses.replace(req, start=a, length=b - a)
            pos = b
        if pos < end:
            yield dataclasses.replace(req, op="skip", start=pos, length=end - pos)


class _Run:
    """Shared state of one copy: the first error, progress, counters."""

    def __init__(self, progress, on_done, cancel_event):
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.progress = progress
        self.on_done = on_done
        self.cancel_event = cancel_event
        self.stats = CopyStats()

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def stopped(self) -> bool:
        if self.cancel_event is not None and self.cancel_event.is_set():
            self.fail(CopyCancelled("copy cancelled"))
        return self.stop.is_set()

    def done(self, req: _Request) -> None:
        with self.lock:
            st = self.stats
            st.requests += 1
            if req.op == "copy":
                st.bytes_copied += req.length
            elif req.op == "skip":
                st.bytes_skipped += req.length
            else:
                st.bytes_zeroed += req.length
            # Callbacks run under the lock: a tqdm bar or a journal need not
            # be thread-safe. An exception here (Ctrl-C from a callback)
            # stops the copy and is raised as is.
            if self.on_done is not None:
                self.on_done(req.start, req.length)
            if self.progress is not None:
                self.progress(req.length)


def _buffer(size: int) -> mmap.mmap:
    """A page-aligned request buffer: a raw destination can then write it
    with O_DIRECT (no copy through the page cache)."""
    return mmap.mmap(-1, size)


def _apply(dst: Backend, req: _Request, view: memoryview | None,
           zeros: memoryview) -> None:
    """Do one request's destination side."""
    try:
        if req.op == "copy":
            dst.write(req.start, view)
        elif req.op == "zero":
            dst.zero(req.start, req.length)
        else:  # zerodata: the destination cannot zero; send zeros as data
            dst.write(req.start, zeros[:req.length])
    except Exception as e:
        raise CopyError("writing destination", req.start, req.length, e) from e


def _read(src: Backend, req: _Request, raw: mmap.mmap, zeros: memoryview,
          gran: int | None, zero_op: str | None) -> list:
    """Read a copy request into ``raw``: ``[(request, view)]`` to apply.

    With ``gran`` (zero detection), data reading as zeros is not written:
    the whole request, or runs of ``gran``-sized pieces of it, become
    ``zero_op`` requests (None: skipped, the destination reads as zeros
    there already; "zero": a layer over a backing file hides its data).
    """
    view = memoryview(raw)[:req.length]
    got = 0
    try:
        while got < req.length:
            n = src.read_into(req.start + got, view[got:])
            if not n:
                raise TransferError(f"short read: got {got} of {req.length} bytes "
                                    f"at offset {req.start}")
            got += n
    except Exception as e:
        raise CopyError("reading source", req.start, req.length, e) from e
    if gran is None:
        return [(req, view)]
    # bytes.startswith() is a memcmp; comparing memoryviews goes item by item.
    is_zero = zeros.obj.startswith
    if is_zero(view):
        return [(_Request(zero_op or "skip", req.start, req.length), None)]
    if gran >= req.length:
        return [(req, view)]
    parts = []
    run_start, run_zero = 0, is_zero(view[:gran])
    for pos in range(gran, req.length + gran, gran):
        zero = pos < req.length and is_zero(view[pos:pos + gran])
        if pos >= req.length or zero != run_zero:
            end = min(pos, req.length)
            op = (zero_op or "skip") if run_zero else "copy"
            parts.append((_Request(op, req.start + run_start, end - run_start),
                          None if run_zero else view[run_start:end]))
            run_start, run_zero = pos, zero
    return parts


def _apply_parts(run: _Run, dst: Backend, parts: list, zeros: memoryview) -> None:
    for part, view in parts:
        if part.op != "skip":
            _apply(dst, part, view, zeros)
        run.done(part)


def _worker(run: _Run, src: Backend, dst: Backend, work: "queue.Queue",
            request_size: int, zeros: memoryview, gran: int | None,
            zero_op: str | None = None) -> None:
    """Read then write, one request at a time, with one buffer."""
    raw = _buffer(request_size)
    try:
        while True:
            req = work.get()
            if req is None or run.stopped():
                return
            parts = (_read(src, req, raw, zeros, gran, zero_op) if req.op == "copy"
                     else [(req, None)])
            _apply_parts(run, dst, parts, zeros)
    except BaseException as e:  # noqa: B036 - Ctrl-C from a callback must stop everyone
        run.fail(e)


def _worker_overlap(run: _Run, src: Backend, dst: Backend, work: "queue.Queue",
                    request_size: int, zeros: memoryview, gran: int | None,
                    zero_op: str | None = None) -> None:
    """Read the next request while a helper thread writes the previous one.

    Two buffers per worker; the helper owns ``dst``. Worth it when both
    sides are slow in different places (a socket and a local disk).
    """
    free: queue.Queue = queue.Queue()
    for _ in range(2):
        free.put(_buffer(request_size))
    writes: queue.Queue = queue.Queue(maxsize=1)

    def writer() -> None:
        # Once the copy stopped (this helper failing included), items are
        # only drained: their buffers go back, so the reader never blocks.
        while True:
            item = writes.get()
            if item is None:
                return
            parts, raw = item
            try:
                if not run.stop.is_set():
                    _apply_parts(run, dst, parts, zeros)
            except BaseException as e:  # noqa: B036
                run.fail(e)
            finally:
                if raw is not None:
                    free.put(raw)

    helper = Worker(writer, name=threading.current_thread().name + "-w").start()
    try:
        while True:
            req = work.get()
            if req is None or run.stopped():
                return
            if req.op != "copy":
                writes.put(([(req, None)], None))
                continue
            raw = free.get()
            try:
                parts = _read(src, req, raw, zeros, gran, zero_op)
            except BaseException:
                free.put(raw)
                raise
            writes.put((parts, raw))
    except BaseException as e:  # noqa: B036
        run.fail(e)
    finally:
        writes.put(None)
        wait_all([helper])


def _flush(run: _Run, dst: Backend) -> None:
    try:
        dst.flush()
    except Exception as e:
        run.fail(CopyError("writing destination", 0, 0,
                           TransferError(f"flush failed: {e}")))


@dataclass(frozen=True)
class CopyOptions:
    """How to copy, as one value (as httpx's ``Timeout`` and ``Limits``).

    ``workers`` threads (and connections of an HTTP backend), requests of
    ``request_size`` bytes (a multiple of 4096 and of ``align``).
    ``dst_is_zero``: the destination reads as zeros already (a new disk or
    file), so zero ranges are skipped. ``detect_zeroes`` (with
    ``dst_is_zero``): data that reads as all zeros is not written, so a
    source that cannot report holes still gives a sparse destination;
    ``zero_granularity``: runs of zeros this long, aligned to it within a
    request, are left unwritten too (as qemu-img convert does).
    ``over_backing``: the destination is a new layer over a backing file
    (a shallow download): the source's holes, unallocated in its layer,
    are skipped, while its zero extents, and with ``detect_zeroes`` data
    that reads as zeros, are zeroed so the backing's data stays hidden
    there (as ovirt-imageio's client download does with a backing file).
    ``align``: data extents are widened to whole blocks of this size, so
    each block of the destination is written whole by one request (qcow2
    clusters, needed for compression). ``check_size`` refuses a
    destination smaller than the source. ``overlap``: each worker reads the
    next request while a helper thread writes the previous one (two buffers).
    """

    workers: int = 4
    request_size: int = DEFAULT_REQUEST_SIZE
    dst_is_zero: bool = False
    detect_zeroes: bool = False
    zero_granularity: int | None = None
    over_backing: bool = False
    align: int | None = None
    check_size: bool = True
    overlap: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        r = self.request_size
        if r < 4096 or r % 4096 or r % (self.align or 1):
            raise ValueError("request_size must be a multiple of 4096 and of align")


def copy(src: Backend, dst: Backend, options: CopyOptions = CopyOptions(), *,
         progress: Callable[[int], None] | None = None,
         on_done: Callable[[int, int], None] | None = None,
         cancel_event: threading.Event | None = None,
         skip_ranges: list | None = None,
         extents: Iterable[Extent] | None = None) -> CopyStats:
    """Copy all guest bytes of ``src`` to ``dst`` as ``options`` say.

    ``progress(nbytes)`` is called as ranges finish, zero ranges included,
    so the total reaches ``src.size``. ``on_done(start, length)`` is
    called for every finished request (for a resume journal). Both
    callbacks are called with a lock held, from worker threads.
    ``cancel_event`` stops the copy (CopyCancelled). ``skip_ranges``
    ([start, end) intervals) are not copied (resume). ``extents``: what to
    copy instead of ``src.extents()`` (data extents are read, the others
    treated as zeros).
    The first error stops the copy and is raised: a :class:`CopyError` for
    I/O failures, or the exception itself (e.g. KeyboardInterrupt raised by
    a callback). The caller's ``src`` and ``dst`` are not closed.
    """
    o = options
    workers, request_size, align = o.workers, o.request_size, o.align
    size = src.size
    if o.check_size and (dst_size := dst.size) < size:
        raise TransferError(
            f"destination is smaller than the source ({dst_size} < {size} bytes)")
    run = _Run(progress, on_done, cancel_event)
    run.stats.bytes_total = size
    run.stats.workers = workers
    start = time.monotonic()
    zeros = memoryview(bytes(request_size)).toreadonly()
    # A short queue is enough to keep workers busy and keeps the plan lazy.
    work: queue.Queue = queue.Queue(maxsize=workers * 4)
    threads: list[Worker] = []
    clones: list[tuple[Backend, Backend]] = []
    zero_op: str | None = None      # what becomes of data reading as zeros
    gran = (o.zero_granularity or request_size
            if o.detect_zeroes and (o.dst_is_zero or o.over_backing) else None)

    def run_worker(s: Backend, d: Backend) -> None:
        body = _worker_overlap if o.overlap else _worker
        body(run, s, d, work, request_size, zeros, gran, zero_op)
        if not run.stop.is_set():
            _flush(run, d)

    try:
        # Start the extents before any worker runs: an HTTP source fetches
        # them in one request, after which worker 0 may use its connection.
        extents = iter(src.extents("zero") if extents is None else extents)
        if align:
            extents = align_extents(extents, align, size)
        first = next(extents, None)
        dst_zero = "zero" in dst.features      # else zeros are sent as data
        if o.over_backing:
            zero_op = "zero" if dst_zero else "zerodata"
        # Worker 0 uses the caller's backends, the others clones: a server
        # allowing N connections (qemu-nbd --shared=N) serves N workers.
        for _ in range(workers - 1):
            s = src.clone()
            with undo_on_error(s.close):
                d = dst.clone()
            clones.append((s, d))
        for i, (s, d) in enumerate([(src, dst), *clones]):
            t = Worker(run_worker, s, d, name=f"copy-worker-{i}")
            threads.append(t)       # listed before it can run (see _finish)
            t.start()
        requests = plan(itertools.chain([first] if first else [], extents),
                        request_size=request_size, dst_is_zero=o.dst_is_zero,
                        dst_zero=dst_zero, over_backing=o.over_backing)
        if skip_ranges:
            # A resume: ranges a journal knows are done are not sent again.
            requests = skip_done(requests, skip_ranges)
        for req in requests:
            if req.op == "skip":
                run.done(req)
                continue
            while not run.stopped():
                try:
                    work.put(req, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if run.stop.is_set():
                break
    except BaseException as e:
        run.fail(e)
    finally:
        _finish(run, work, threads, clones)
    run.stats.seconds = time.monotonic() - start
    if run.error is not None:
        raise run.error
    return run.stats


def copy_local(src: Backend, dst: Backend, options: CopyOptions = CopyOptions(),
               **hooks: Any) -> CopyStats:
    """``copy`` between local, thread-safe backends (files, qcow2 readers
    and writers): every worker uses them as they are, ``dst`` is flushed
    once at the end, and errors of either side are raised as they are (a
    local copy has no remote side to name). The caller closes both."""
    try:
        stats = copy(SharedBackend(src, owner=False), SharedBackend(dst, owner=False),
                     options, **hooks)
    except CopyError as e:
        raise (e.__cause__ or e) from None
    dst.flush()
    return stats


def _finish(run: _Run, work: "queue.Queue", threads: list[Worker], clones) -> None:
    """Stop the workers (one sentinel each), wait, close the clones.

    A Ctrl-C landing here is remembered (``run.fail``) and the shutdown
    goes on: the clones are closed only once every worker is over, which
    is waited for on the workers' events (``imagetool.threads``), so an
    interrupted wait cannot make a running worker look ended.
    """
    if run.stop.is_set():
        # Drop queued work so the sentinels fit and workers exit soon.
        while True:
            try:
                work.get_nowait()
            except queue.Empty:
                break
    sent = 0
    while sent < len(threads):
        try:
            work.put(None, timeout=0.1)
            sent += 1
        except queue.Full:
            # Workers leave without a sentinel once the copy stopped.
            if all(t.done() for t in threads):
                break
        except BaseException as e:  # noqa: B036 - Ctrl-C: remember it, keep shutting down
            run.fail(e)
    wait_all(threads, on_interrupt=run.fail)
    for s, d in clones:
        for b in (s, d):
            try:
                b.close()
            except Exception as e:
                if run.error is None:
                    run.fail(CopyError("writing destination" if b is d else "reading source",
                                       0, 0, e))
