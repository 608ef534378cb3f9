"""Block digests of imageio's block checksum, kept per restore point.

imageio's checksum (ovirt-imageio docs, "Checksum") is the hash of the
concatenated digests of fixed-size blocks of guest data. Keeping the block
digests of a point lets the next incremental point compute its checksum
from the blocks that changed alone: the others are the previous point's.
"""

from __future__ import annotations

import mmap
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from imagetool.checksum import DEFAULT_ALGORITHM, hash_factory
from imagetool.formats.base import Backend
from imagetool.imageio.protocol import DEFAULT_BLOCK_SIZE


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


def blocks_touching(ranges: Iterable[tuple[int, int]], block_size: int) -> set[int]:
    """Indices of the blocks that ``(start, length)`` ranges overlap."""
    out: set[int] = set()
    for start, length in ranges:
        if length <= 0:
            continue
        out.update(range(start // block_size, (start + length - 1) // block_size + 1))
    return out


def compute(backend: Backend, indices: Iterable[int] | None = None, *,
            algorithm: str = DEFAULT_ALGORITHM, block_size: int = DEFAULT_BLOCK_SIZE,
            workers: int = 4) -> dict[int, bytes]:
    """Digests of ``backend``'s blocks (all, or ``indices``), read in parallel.

    Blocks that the backend reports as zero are not read.
    """
    new = hash_factory(algorithm)
    size = backend.size
    count = block_count(size, block_size)
    wanted = sorted(set(range(count) if indices is None else indices))
    zero_blocks = _zero_blocks(backend, block_size, size)
    zeros: dict[int, bytes] = {}

    def zero_digest(length: int) -> bytes:
        if length not in zeros:
            zeros[length] = new(bytes(length)).digest()
        return zeros[length]

    out: dict[int, bytes] = {}
    todo = []
    for i in wanted:
        length = min(block_size, size - i * block_size)
        if i in zero_blocks:
            out[i] = zero_digest(length)
        else:
            todo.append(i)

    def work(chunk: list[int]) -> list[tuple[int, bytes]]:
        m = mmap.mmap(-1, block_size)
        view = memoryview(m)
        res = []
        try:
            for i in chunk:
                start = i * block_size
                length = min(block_size, size - start)
                got = 0
                while got < length:
                    n = backend.read_into(start + got, view[got:length])
                    if n <= 0:
                        raise OSError(f"short read at offset {start + got}")
                    got += n
                res.append((i, new(view[:length]).digest()))
        finally:
            view.release()
            m.close()
        return res

    if todo:
        n = max(1, min(workers, len(todo)))
        chunks = [todo[k::n] for k in range(n)]
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="digests") as pool:
            for res in pool.map(work, chunks):
                out.update(res)
    return out


def _zero_blocks(backend: Backend, block_size: int, size: int) -> set[int]:
    """Blocks wholly inside zero (or unallocated) extents."""
    out: set[int] = set()
    for ext in backend.extents():
        if not (ext.zero or ext.hole):
            continue
        first = -(-ext.start // block_size)
        end = min(ext.start + ext.length, size)
        for i in range(first, block_count(size, block_size)):
            bend = min((i + 1) * block_size, size)
            if bend > end:
                break
            out.add(i)
    return out


def combine(digests: list[bytes], algorithm: str = DEFAULT_ALGORITHM) -> str:
    """The checksum (hex) from every block's digest, in block order."""
    h = hash_factory(algorithm)()
    for d in digests:
        h.update(d)
    return h.hexdigest()


def save(path: str, digests: list[bytes]) -> None:
    with open(path, "wb") as f:
        f.write(b"".join(digests))


def load(path: str, count: int, digest_size: int) -> list[bytes]:
    """A point's digests; the file must be a regular file, not a symlink."""
    from imagetool.backup.repo import read_file

    data = read_file(path)
    if len(data) != count * digest_size:
        raise ValueError(f"{path}: {len(data)} bytes, expected {count * digest_size}")
    return [data[i * digest_size:(i + 1) * digest_size] for i in range(count)]


def digest_size(algorithm: str = DEFAULT_ALGORITHM) -> int:
    return hash_factory(algorithm)().digest_size


def merged(previous: list[bytes] | None, fresh: dict[int, bytes], count: int) -> list[bytes]:
    """The point's digests: ``fresh`` where given, else ``previous``'s."""
    out = []
    for i in range(count):
        d = fresh.get(i)
        if d is None:
            if previous is None or i >= len(previous):
                raise ValueError(f"no digest for block {i}")
            d = previous[i]
        out.append(d)
    return out


__all__ = ["blocks_touching", "block_count", "combine", "compute", "digest_size", "load",
           "merged", "save"]
