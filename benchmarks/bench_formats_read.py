"""Read side of the formats layer: qcow2 guest-data reads and extents.

Not part of the test run. Run::

    python benchmarks/bench_formats_read.py [SIZE_MIB]

Builds (in IMAGETOOL_BENCH_DIR, default /var/tmp) a raw image of SIZE_MIB
(default 1024) of half-compressible data, converts it with qemu-img to
qcow2 (plain, zlib, zstd), then times a sequential 8 MiB read_into loop over
each next to ``qemu-img convert`` of the same file into qemu's null driver, and extents() of
a 1 TiB sparse qcow2. Prints one table.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from imagetool.formats import open_image

MiB = 1 << 20


def _build(d: str, size_mib: int) -> str:
    raw = os.path.join(d, "src.raw")
    rnd = random.Random(0)
    with open(raw, "wb") as f:
        for _ in range(size_mib):
            # half random, half text: compresses about 2:1
            text = b"imagetool " * (MiB // 20)
            f.write(rnd.randbytes(MiB // 2) + text + bytes(MiB // 2 - len(text)))
    return raw


def _read_all(path: str) -> float:
    buf = bytearray(8 * MiB)
    view = memoryview(buf)
    start = time.monotonic()
    with open_image(path) as b:
        for ext in b.extents():
            if ext.zero:
                continue
            off = ext.start
            while off < ext.end:
                n = min(len(buf), ext.end - off)
                b.read_into(off, view[:n])
                off += n
    return time.monotonic() - start


def _qemu(path: str, size: int) -> float:
    # Into qemu's null driver: qemu only reads, as our loop does.
    start = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-n", path, "--target-image-opts",
                    f"driver=null-co,size={size}"], check=True)
    return time.monotonic() - start


def main() -> None:
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    d = tempfile.mkdtemp(prefix="imagetool-read-",
                         dir=os.environ.get("IMAGETOOL_BENCH_DIR", "/var/tmp"))
    try:
        raw = _build(d, size_mib)
        rows = []
        for name, opts in [("qcow2", []), ("qcow2 zlib", ["-c"]),
                           ("qcow2 zstd", ["-c", "-o", "compression_type=zstd"])]:
            path = os.path.join(d, name.replace(" ", "-") + ".qcow2")
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", *opts, raw, path],
                           check=True)
            _read_all(path)  # warm the page cache for both readers alike
            ours = _read_all(path)
            theirs = _qemu(path, size_mib * MiB)
            rows.append((name, size_mib / ours, size_mib / theirs))
        sparse = os.path.join(d, "sparse.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", sparse, "1T"], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write 0 1M",
                        "-c", "write 500G 1M", sparse], check=True,
                       stdout=subprocess.DEVNULL)
        start = time.monotonic()
        with open_image(sparse) as b:
            n = len(list(b.extents()))
        ext_time = time.monotonic() - start
        print(f"{'image':<12} {'imagetool MiB/s':>16} {'qemu-img convert (null) MiB/s':>30}")
        for name, a, b in rows:
            print(f"{name:<12} {a:>16.0f} {b:>30.0f}")
        print(f"extents of a 1 TiB sparse qcow2: {n} extents in {ext_time * 1000:.0f} ms")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
