"""Which hash verification should use here: a one-off micro-benchmark.

The block checksum works with any hash both sides offer. With SHA
extensions sha256 is much faster than blake2b (imageio's default) in
CPython, without them it is the other way round (benchmarks/README.md), and
both sides hash every data byte, so the faster one makes verification
cheaper. Each candidate hashes the same 4 MiB once per process.
"""

from __future__ import annotations

import time

from imagetool.checksum import DEFAULT_ALGORITHM, hash_factory

# Candidates for verification, fastest first once measured.
CANDIDATE_ALGORITHMS = ("sha256", DEFAULT_ALGORITHM)
_fastest: str | None = None


def fastest_algorithm() -> str:
    """The candidate hashing 4 MiB fastest here (measured once per process)."""
    global _fastest
    if _fastest is None:
        data = bytes(range(256)) * (4 * 1024 * 1024 // 256)
        timings = []
        for name in CANDIDATE_ALGORITHMS:
            new = hash_factory(name)
            t = time.perf_counter()
            new(data).digest()
            timings.append((time.perf_counter() - t, name))
        _fastest = min(timings)[1]
    return _fastest
