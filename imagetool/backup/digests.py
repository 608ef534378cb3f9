"""Block digests of imageio's block checksum, kept per restore point.

imageio's checksum (ovirt-imageio docs, "Checksum") is the hash of the
concatenated digests of fixed-size blocks of guest data. Keeping the block
digests of a point lets the next incremental point compute its checksum
from the blocks that changed alone: the others are the previous point's.
"""

from __future__ import annotations

from contextlib import closing
from typing import Iterable

from imagetool.checksum import DEFAULT_ALGORITHM, BlockHasher, block_digests, hash_factory
from imagetool.iocore.backend import Backend
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
    """Digests of ``backend``'s blocks (all, or ``indices``), read in parallel
    by the client checksum's engine: zero ranges are not read."""
    blocks = block_digests(backend, BlockHasher(algorithm, block_size), workers,
                           wanted=None if indices is None else set(indices))
    with closing(blocks):
        return {i: digest for i, _, digest in blocks}


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
