"""imageio's block checksum of an image's guest data.

The guest bytes are split into ``block_size`` blocks (the last one may be
shorter); each block is hashed on its own, and the checksum is the hash of
the concatenated block digests (ovirt-imageio docs, "Checksum"). The value
depends only on the guest bytes, so a raw file and a qcow2 image holding the
same data give the same checksum, equal to ``ovirt_imageio.client.checksum``
and to an imageio server's ``GET /images/<ticket>/checksum``.

Speed: zero and unallocated extents are never read, and blocks are read
and hashed by several threads while the digests are combined in block
order (``BlockHasher`` and ``block_digests``, the one block-hashing engine).
Memory: one block buffer per worker.

Size: the checksum covers the backend's ``size``. For a raw file that is its
exact length; the reference client goes through qemu, which rounds a raw
file up to a multiple of 512 bytes, so the two differ only for raw files
whose length is not a multiple of 512 (an imageio server hashes the ticket's
size, which is the disk's size).

Backends are read with ``read_into`` only, never cloned, so a backend shared
between threads (the local engine's data plane) can be checksummed.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from typing import Callable, Container, Iterator, Mapping

from imagetool.errors import FormatError
from imagetool.formats import open_image
from imagetool.iocore.backend import Backend
from imagetool.imageio.protocol import DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE

DEFAULT_ALGORITHM = "blake2b"


@dataclass(frozen=True)
class GuestChecksum:
    """The block checksum of a disk's guest data, as a workflow reports it
    (the value imageio's ``GET .../checksum`` gives for the same
    algorithm and block size)."""

    value: str
    algorithm: str = DEFAULT_ALGORITHM
    block_size: int = DEFAULT_BLOCK_SIZE

    def to_json(self) -> dict:
        """The one checksum object of every ``--json`` (upload's)."""
        return {"algorithm": self.algorithm, "block_size": self.block_size,
                "value": self.value, "scope": "guest-data"}
# blake2 digests are truncated to 32 bytes, as imageio does.
_DIGEST_SIZE = {"blake2b": 32, "blake2s": 32}


def _usable_algorithms() -> frozenset[str]:
    names = set()
    for name in hashlib.algorithms_available:
        name = name.lower()
        if name.startswith("shake") or name == "md5-sha1":
            continue  # variable-length digests; a TLS-only concatenation
        try:
            if hashlib.new(name).digest_size > 0:
                names.add(name)
        except ValueError:
            continue
    return frozenset(names)


ALGORITHMS: frozenset[str] = _usable_algorithms()


def hash_factory(algorithm: str) -> Callable[..., "hashlib._Hash"]:
    """A constructor for ``algorithm``'s hash objects; ValueError if unknown."""
    name = algorithm.lower()
    if name not in ALGORITHMS:
        raise ValueError(
            f"unsupported checksum algorithm {algorithm!r} "
            f"(use one of: {', '.join(sorted(ALGORITHMS))})")
    size = _DIGEST_SIZE.get(name)
    if size:
        ctor = getattr(hashlib, name)
        return lambda data=b"": ctor(data, digest_size=size)
    return lambda data=b"": hashlib.new(name, data)


def validate_block_size(block_size: int) -> None:
    """ValueError unless ``block_size`` is a multiple of 4096 in [1 MiB, 16 MiB]."""
    if (not isinstance(block_size, int) or block_size % 4096
            or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE):
        raise ValueError(
            f"invalid block size {block_size}: must be a multiple of 4096 "
            f"between {MIN_BLOCK_SIZE} (1 MiB) and {MAX_BLOCK_SIZE} (16 MiB)")


class BlockHasher:
    """imageio's block hashing, the one engine of the client checksum, backup
    digests (``imagetool.backup.digests``) and the local engine's checksum
    ahead (``imagetool.server.checksum_ahead``). Ranges known to be zero
    are not read; an all-zero block's digest is computed once."""

    def __init__(self, algorithm: str = DEFAULT_ALGORITHM,
                 block_size: int = DEFAULT_BLOCK_SIZE):
        self.new = hash_factory(algorithm)
        self.block_size = block_size
        self._zeros = memoryview(bytes(block_size))
        self._zero_digests = {block_size: self.new(self._zeros).digest()}

    def zero_digest(self, length: int) -> bytes:
        d = self._zero_digests.get(length)
        if d is None:
            d = self._zero_digests[length] = self.new(self._zeros[:length]).digest()
        return d

    def digest(self, reader: Backend, start: int, length: int, buf: memoryview,
               ranges: list[tuple[int, int]] | None = None) -> bytes:
        """Digest of the block ``[start, start+length)`` of ``reader``.

        ``ranges``: the block-relative ``(offset, length)`` runs holding
        data (default: all of it), read into ``buf``; the rest is zeroed.
        FormatError if the reader ends early.
        """
        pos = 0
        for rstart, rlen in [(0, length)] if ranges is None else ranges:
            buf[pos:rstart] = self._zeros[:rstart - pos]
            got = 0
            while got < rlen:
                n = reader.read_into(start + rstart + got, buf[rstart + got:rstart + rlen])
                if not n:
                    raise FormatError(f"short read at offset {start + rstart}: "
                                      f"{got} of {rlen} bytes")
                got += n
            pos = rstart + rlen
        buf[pos:length] = self._zeros[:length - pos]
        view = buf[:length]
        # Allocated zeros (preallocated images) are not hashed; bytes.startswith()
        # is a memcmp, stopping at the first data byte.
        if self._zeros.obj.startswith(view):
            return self.zero_digest(length)
        return self.new(view).digest()


@contextmanager
def block_buffer(size: int) -> Iterator[memoryview]:
    """A page-aligned buffer (anonymous mmap), so a backend may read into it
    with O_DIRECT; unmapped on the way out."""
    m = mmap.mmap(-1, size)
    view = memoryview(m)
    try:
        yield view
    finally:
        view.release()
        try:
            m.close()
        except BufferError:
            pass        # a view still alive somewhere; the GC unmaps it


def block_digests(backend: Backend, hasher: BlockHasher, workers: int, *,
                  known: Mapping[int, bytes] | None = None,
                  wanted: Container[int] | None = None) -> Iterator[tuple[int, int, bytes]]:
    """``(index, length, digest)`` of ``backend``'s blocks, in block order,
    read and hashed by ``workers`` threads (hashlib drops the GIL on large
    buffers), one block buffer each, at most 2 blocks per worker in flight.
    Blocks in ``known`` (by index) are not read; ``wanted``: only these."""
    bs = hasher.block_size
    local = threading.local()
    buffers = ExitStack()
    lock = threading.Lock()

    def hash_block(start: int, length: int, ranges: list[tuple[int, int]]) -> bytes:
        buf = getattr(local, "buf", None)
        if buf is None:
            with lock:
                buf = local.buf = buffers.enter_context(block_buffer(bs))
        return hasher.digest(backend, start, length, buf, ranges)

    def result(entry: tuple) -> tuple[int, int, bytes]:
        i, length, item = entry
        return i, length, item if isinstance(item, bytes) else item.result()

    pending: deque = deque()
    # The pool is shut down (waiting for its threads) before the buffers go.
    with buffers, ThreadPoolExecutor(max_workers=workers,
                                     thread_name_prefix="checksum") as pool:
        try:
            for start, length, ranges in _blocks(backend, backend.size, bs):
                i = start // bs
                if wanted is not None and i not in wanted:
                    continue
                item = known.get(i) if known else None
                if item is None:
                    item = (pool.submit(hash_block, start, length, ranges) if ranges
                            else hasher.zero_digest(length))
                pending.append((i, length, item))
                while len(pending) > 2 * workers or (pending and isinstance(pending[0][2], bytes)):
                    yield result(pending.popleft())
            while pending:
                yield result(pending.popleft())
        except BaseException:
            for *_, item in pending:
                if not isinstance(item, bytes):
                    item.cancel()
            raise


def checksum(backend: Backend, algorithm: str = DEFAULT_ALGORITHM,
             block_size: int = DEFAULT_BLOCK_SIZE, workers: int | None = None,
             progress: Callable[[int], None] | None = None,
             known: Mapping[int, bytes] | None = None) -> dict:
    """Block checksum of ``backend``'s guest data.

    Returns ``{"algorithm": ..., "block_size": ..., "checksum": hex}``.
    ``workers``: hashing threads (default: CPUs, 2 to 4). ``progress`` is
    called with the number of guest bytes done after each block. ``known``:
    digests of blocks already hashed, by block index (not read again).
    """
    validate_block_size(block_size)
    hasher = BlockHasher(algorithm, block_size)
    if workers is None:
        workers = max(2, min(4, os.cpu_count() or 1))
    if workers < 1:
        raise ValueError(f"invalid workers {workers}")
    outer = hasher.new()
    with closing(block_digests(backend, hasher, workers, known=known)) as blocks:
        for _, length, digest in blocks:
            outer.update(digest)
            if progress:
                progress(length)
    return {"algorithm": algorithm.lower(), "block_size": block_size,
            "checksum": outer.hexdigest()}


def checksum_file(path: str | os.PathLike, format: str | None = None,
                  **kw) -> dict:
    """Block checksum of an image file's guest data (raw or qcow2, chain aware).

    Keyword arguments are those of :func:`checksum`.
    """
    with open_image(path, "r", format=format) as backend:
        return checksum(backend, **kw)


def _blocks(backend: Backend, size: int,
            block_size: int) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """Yield ``(start, length, data_ranges)`` per block; ranges are block-relative.

    Ranges not covered by any extent are treated as data, so a backend with
    incomplete extents is read rather than trusted to be zero.
    """
    block_start = 0
    ranges: list[tuple[int, int]] = []

    def add_data(a: int, b: int) -> None:
        # [a, b) lies inside the current block.
        rel_a, rel_b = a - block_start, b - block_start
        if ranges and ranges[-1][0] + ranges[-1][1] == rel_a:
            ranges[-1] = (ranges[-1][0], rel_b - ranges[-1][0])
        else:
            ranges.append((rel_a, rel_b - rel_a))

    for ext in _extents_with_gaps(backend, size):
        pos, end = ext[0], ext[1]
        while pos < end:
            block_end = min(block_start + block_size, size)
            stop = min(end, block_end)
            if not ext[2]:
                add_data(pos, stop)
            pos = stop
            if pos == block_end:
                yield block_start, block_end - block_start, ranges
                ranges = []
                block_start = block_end


def _extents_with_gaps(backend: Backend, size: int) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, is_zero)`` covering ``[0, size)`` exactly."""
    pos = 0
    for ext in backend.extents():
        start = max(ext.start, pos)
        end = min(ext.start + ext.length, size)
        if start > pos:
            yield pos, start, False
        if end > start:
            yield start, end, ext.zero
            pos = end
        if pos >= size:
            return
    if pos < size:
        yield pos, size, False
