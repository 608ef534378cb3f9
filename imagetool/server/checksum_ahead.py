"""Hash an upload's flushed blocks while it runs, for its final checksum.

A client that will verify its upload may announce the algorithm and block
size of the checksum it will ask for (``dataplane_images``: PATCH op
``checksum-ahead``). From then on two background threads per ticket read
back, with their own O_DIRECT descriptor, every block that a flush made
durable, and keep that block's digest (one thread alone, reading then
hashing, fell behind a 1 GiB upload on 2 CPUs: about half the blocks were
left for the final request). The final ``GET .../checksum``
with the same algorithm and block size reads only the blocks without a
digest and combines all digests in block order (``imagetool.checksum``), so
its value is the one a full read-back gives.

Rules that keep every digest equal to the block's current bytes on storage:

- a block is hashed only after a flush that began after its last write
  ended, and only while no write or zero on it is in flight;
- a write or zero touching a block drops its digest when it starts, and a
  write starting or ending during the block's read-back spoils that read;
- bytes are always read from storage, never taken from the requests;
- the file changed by someone else after the last write through the data
  plane (its mtime moved on) makes the final request read everything.
  A change by someone else between two writes of the upload is not seen.

Blocks never written while announced (holes, data from before the
announcement) simply have no digest and are read by the final request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager, suppress
from typing import Any, Callable, Iterator

from imagetool.checksum import BlockHasher, block_buffer
from imagetool.imageio.protocol import CHECKSUM_AHEAD

log = logging.getLogger(__name__)

# How often an idle hasher looks whether its ticket is still alive.
_POLL_SECONDS = 1.0
# Hashing threads: two, so that one block is read while another is hashed.
THREADS = 2


class ChecksumAhead:
    """Digests of one ticket's flushed blocks, computed in ``threads`` threads.

    ``reader`` has ``read_into(offset, buf)`` and ``close()`` and is owned
    (closed) here; ``size`` is the image size the digests are for;
    ``alive()`` turns False when the ticket is gone (the thread then ends);
    ``mtime()`` is the file's modification time in ns.
    """

    def __init__(self, reader: Any, size: int, algorithm: str, block_size: int,
                 alive: Callable[[], bool], mtime: Callable[[], int],
                 threads: int = THREADS):
        self.algorithm = algorithm
        self.block_size = block_size
        self.size = size
        self._hasher = BlockHasher(algorithm, block_size)
        self._reader = reader
        self._alive = alive
        self._mtime = mtime
        self._last_mtime = mtime()             # after our latest write
        self._cond = threading.Condition()
        self._busy: dict[int, int] = {}        # block -> writes in flight
        self._unflushed: set[int] = set()      # written since the last flush began
        self._queue: deque[int] = deque()      # flushed, waiting to be hashed
        self._digests: dict[int, bytes] = {}
        # Blocks being read and hashed -> a write touched it meanwhile.
        self._current: dict[int, bool] = {}
        self._paused = 0
        self._stopped = False
        self._running = threads
        self._threads = [threading.Thread(target=self._run, name=CHECKSUM_AHEAD,
                                          daemon=True) for _ in range(threads)]

    def start(self) -> "ChecksumAhead":
        for t in self._threads:
            t.start()
        return self

    def matches(self, algorithm: str, block_size: int, size: int) -> bool:
        """Whether these digests serve a checksum with these parameters."""
        return (algorithm.lower() == self.algorithm and block_size == self.block_size
                and size == self.size)

    # --- called by the request handlers ----------------------------------------

    def _indexes(self, offset: int, length: int) -> range:
        if length <= 0:
            return range(0)
        return range(offset // self.block_size, (offset + length - 1) // self.block_size + 1)

    def begin_write(self, offset: int, length: int) -> None:
        """A write or zero of ``[offset, offset+length)`` starts."""
        with self._cond:
            for i in self._indexes(offset, length):
                self._busy[i] = self._busy.get(i, 0) + 1
                self._digests.pop(i, None)
                if i in self._current:
                    self._current[i] = True

    def end_write(self, offset: int, length: int) -> None:
        """That write ended (done or failed): its blocks wait for a flush."""
        with self._cond:
            for i in self._indexes(offset, length):
                n = self._busy[i] - 1
                if n:
                    self._busy[i] = n
                else:
                    del self._busy[i]
                self._unflushed.add(i)
                if i in self._current:
                    self._current[i] = True
            with suppress(OSError):  # _unchanged() fails the same way
                self._last_mtime = max(self._last_mtime, self._mtime())

    def flush(self, do_flush: Callable[[], None]) -> None:
        """Run the backend's flush; then blocks written before it may be hashed."""
        with self._cond:
            covered, self._unflushed = self._unflushed, set()
        try:
            do_flush()
        except BaseException:
            with self._cond:
                self._unflushed |= covered
            raise
        if covered:
            with self._cond:
                self._queue.extend(sorted(covered))
                self._cond.notify_all()

    @contextmanager
    def paused(self) -> Iterator[dict[int, bytes]]:
        """The digests so far (block index -> digest), hashing paused meanwhile.

        Blocks still waiting are dropped from the queue: the caller reads
        them itself, and hashing them again afterwards would only compete
        with the transfer's end.
        """
        with self._cond:
            self._paused += 1
            while self._current:
                self._cond.wait()
            self._queue.clear()
            known = dict(self._digests) if self._unchanged() else {}
        try:
            yield known
        finally:
            with self._cond:
                self._paused -= 1
                self._cond.notify_all()

    def _unchanged(self) -> bool:
        """No write but ours since our latest one (with ``_cond`` held)."""
        try:
            return self._mtime() <= self._last_mtime
        except OSError:
            return False

    def hashed_blocks(self) -> frozenset[int]:
        """Indexes of the blocks with a digest now (for tests and status)."""
        with self._cond:
            return frozenset(self._digests)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True when it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        """End the thread soon (it closes the reader)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # --- the hashing threads ---------------------------------------------------

    def _next(self) -> int | None:
        """The next block to hash (with ``_cond`` held), None to stop."""
        while True:
            if self._stopped or not self._alive():
                return None
            while self._queue and not self._paused:
                i = self._queue.popleft()
                if (i in self._digests or i in self._busy or i in self._unflushed
                        or i in self._current):
                    continue        # hashed already, or a later flush brings it back
                return i
            self._cond.wait(_POLL_SECONDS)

    def _run(self) -> None:
        try:
            with block_buffer(self.block_size) as buf:
                while True:
                    with self._cond:
                        i = self._next()
                        if i is None:
                            return
                        self._current[i] = False
                    digest = None
                    start = i * self.block_size
                    length = min(self.block_size, self.size - start)
                    try:
                        if length > 0:
                            digest = self._hasher.digest(self._reader, start, length, buf)
                    except Exception as e:     # the final request reads it instead
                        log.debug("checksum-ahead of block %d failed: %s", i, e)
                    with self._cond:
                        # Always leave _current: paused() waits for it to empty.
                        spoiled = self._current.pop(i)
                        if digest is not None and not spoiled:
                            self._digests[i] = digest
                        self._cond.notify_all()
        finally:
            with self._cond:
                self._running -= 1
                last = self._running == 0
            if last:
                with suppress(OSError):
                    self._reader.close()
