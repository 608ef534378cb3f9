"""The chunk repository (imagetool.backup.store) on a local directory:
dedup of cloned disks by chunk size, and point/verify speed against the
hashing limit, in one run.

(a) Dedup: a template image (``--size`` virtual, about half data: random
    runs and runs of one byte, as ``tests/support/helpers.random_image`` makes) and
    ``--clones`` copies, each with ``--unique`` of the template's data
    rewritten with new random bytes, in ``--piece`` pieces at random
    places. Every clone is backed up as its own VM into one repository per
    chunk size; the repository's bytes are compared with the template's
    data (today's qcow2-chain format stores each clone's data in full).
(b) Speed: one full point of a fresh image (90% data) and a verify of it,
    against SHA-256 of the same bytes in memory on one thread (the hashing
    limit: a point hashes every data byte once).

    python benchmarks/bench_chunk_store.py [--size 512M] [--clones 10]
        [--unique 0.03] [--piece 64K] [--workers 2] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "support"))

from helpers import random_image, write_raw  # noqa: E402

from imagetool import formats  # noqa: E402
from imagetool.backup.store import (ChunkStore, DiskSource, open_storage, verify,  # noqa: E402
                                    write_point)
from imagetool.units import parse_size  # noqa: E402

MiB = 1 << 20


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def point(store: ChunkStore, vm: str, path: str, workers: int):
    b = formats.open_image(path, "r")
    try:
        return write_point(store, vm, [DiskSource("d1", b)], workers=workers)
    finally:
        b.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512M")
    ap.add_argument("--clones", type=int, default=10)
    ap.add_argument("--unique", type=float, default=0.03)
    ap.add_argument("--piece", default="64K")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    size, piece = parse_size(a.size), parse_size(a.piece)
    work = tempfile.mkdtemp(prefix="bench-chunks-", dir=a.dir)
    try:
        tmpl = random_image(size, seed=1, fill=0.5)
        zero = bytes(64 * 1024)
        data = sum(64 * 1024 for i in range(0, size, 64 * 1024)
                   if tmpl[i:i + 64 * 1024] != zero)
        clones = []
        for c in range(a.clones):
            img, r = bytearray(tmpl), random.Random(c)
            for _ in range(int(a.unique * data) // piece):
                off = r.randrange(0, size - piece) // 4096 * 4096
                img[off:off + piece] = r.randbytes(piece)
            clones.append(os.path.join(work, f"clone{c}.raw"))
            write_raw(clones[-1], img)
        del tmpl
        print(f"template: {size // MiB} MiB virtual, {data / MiB:.0f} MiB data; "
              f"{a.clones} clones with {a.unique:.0%} unique in {piece // 1024} KiB pieces")
        for cs in (4 * MiB, 1 * MiB):
            root = os.path.join(work, f"repo-{cs}")
            store = ChunkStore.init(open_storage(root, create=True), chunk_size=cs)
            t = time.monotonic()
            for c, path in enumerate(clones):
                point(store, f"vm{c}", path, a.workers)
            print(f"| dedup, {cs // MiB} MiB chunks | repository / template data | "
                  f"{du(root) / data:.2f}x | {time.monotonic() - t:.1f} s for all |")
        for path in clones:
            os.unlink(path)
        img = random_image(size, seed=7, fill=0.9)
        src = os.path.join(work, "speed.raw")
        write_raw(src, img)
        t = time.monotonic()
        for i in range(0, size, 4 * MiB):
            hashlib.sha256(img[i:i + 4 * MiB]).digest()
        limit = size / (time.monotonic() - t)
        del img
        store = ChunkStore.init(open_storage(os.path.join(work, "speed"), create=True))
        t = time.monotonic()
        point(store, "vm", src, a.workers)
        speed = size / (time.monotonic() - t)
        t = time.monotonic()
        rep = verify(store, workers=a.workers)
        vspeed = rep.checked_bytes / (time.monotonic() - t)
        print(f"| full point, {a.workers} workers | SHA-256 one thread "
              f"({limit / MiB:.0f} MiB/s) | {speed / limit:.2f}x | {speed / MiB:.0f} MiB/s |")
        print(f"| verify, {a.workers} workers | SHA-256 one thread | {vspeed / limit:.2f}x | "
              f"{vspeed / MiB:.0f} MiB/s |")
        print(f"load average: {open('/proc/loadavg').read().split()[:3]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
