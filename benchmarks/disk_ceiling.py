"""How fast this machine's storage can do what a download must do.

A full download on one machine moves every byte twice through storage: the
server reads the source and the client writes the copy. This measures, on
``--dir`` (default /var/tmp), with O_DIRECT and 4 threads per stream in
8 MiB requests: reading the source alone, writing a copy alone (then
fsync), and both at once. The "both" figure bounds any download whose
source and destination share this storage, whatever the client; compare
it with the reference client's download rate from compare_transfer.py.

    python benchmarks/disk_ceiling.py [--size 1G] [--dir /var/tmp] [--repeat 3]
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from imagetool.units import format_size, parse_size  # noqa: E402

MiB = 1 << 20
REQUEST = 8 * MiB
THREADS = 4


def stream(path: str, size: int, write: bool) -> float:
    """Read or write ``path`` entirely with O_DIRECT; return seconds."""
    flags = (os.O_WRONLY | os.O_CREAT) if write else os.O_RDONLY
    fd = os.open(path, flags | os.O_DIRECT, 0o644)
    offsets = iter(range(0, size, REQUEST))

    def worker() -> None:
        buf = mmap.mmap(-1, REQUEST)
        buf.write(os.urandom(REQUEST))
        io = os.pwritev if write else os.preadv
        for offset in offsets:
            io(fd, [buf], offset)
        buf.close()

    start = time.monotonic()
    try:
        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if write:
            os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic() - start


def both(src: str, dst: str, size: int) -> float:
    """Read ``src`` and write ``dst`` at the same time; seconds until both end."""
    start = time.monotonic()
    reader = threading.Thread(target=stream, args=(src, size, False))
    reader.start()
    stream(dst, size, True)
    reader.join()
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"))
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    size = a.size - a.size % REQUEST
    work = tempfile.mkdtemp(prefix="imagetool-disk-ceiling-", dir=a.dir)
    try:
        src, dst = os.path.join(work, "src"), os.path.join(work, "dst")
        stream(src, size, True)
        runs: dict[str, list[float]] = {"read": [], "write": [], "read+write": []}
        for _ in range(a.repeat):
            runs["read"].append(stream(src, size, False))
            runs["write"].append(stream(dst, size, True))
            os.unlink(dst)
            runs["read+write"].append(both(src, dst, size))
            os.unlink(dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{format_size(size)} on {a.dir}, O_DIRECT, {THREADS} threads x "
          f"{REQUEST // MiB} MiB per stream, median of {a.repeat}\n")
    print("| stream | MiB/s (median) | all runs |")
    print("|---|---|---|")
    for name, secs in runs.items():
        rates = [size / MiB / s for s in secs]
        print(f"| {name} | {statistics.median(rates):.0f} | "
              f"{', '.join(f'{r:.0f}' for r in rates)} |")


if __name__ == "__main__":
    main()
