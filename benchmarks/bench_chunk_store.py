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
    limit: a point hashes every data byte once). Verify is also measured
    as ``backup verify`` runs it, the disk's guest checksum recorded as
    ``backup create`` records it (blocks of the chunk size): it then
    hashes each chunk twice (SHA-256 for its id, BLAKE2b for the
    checksum), against both hashes of the same chunks in memory on the
    same number of threads (this machine's hashing limit for that work).
(c) S3: a full point of a ``--s3-size`` image into a Ceph RGW started on
    loopback (``tests/backup/store/rgw.py``), against plain parallel PUTs
    of the same image's 4 MiB pieces (non-zero ones, uncompressed) to the
    same RGW with as many threads: guest bytes per second, median of
    ``--repeat`` runs each.
(d) Memory: peak RSS of ``imagetool backup export`` and ``backup verify``
    of the speed point, each run as its own process (``wait4``).

    python benchmarks/bench_chunk_store.py [--size 512M] [--clones 10]
        [--unique 0.03] [--piece 64K] [--workers 2] [--dir /var/tmp]
        [--s3-size 192M] [--repeat 3] [--no-dedup] [--no-s3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
sys.path.insert(0, ROOT)

from helpers import random_image, write_raw  # noqa: E402

from imagetool import formats  # noqa: E402
from imagetool.backup.store import (ChunkStore, DiskSource, open_storage, verify,  # noqa: E402
                                    write_point)
from imagetool.backup.store.chunkstore import chunk_name  # noqa: E402
from imagetool.units import parse_size  # noqa: E402

MiB = 1 << 20


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def point(store: ChunkStore, vm: str, path: str, workers: int, meta: dict | None = None):
    b = formats.open_image(path, "r")
    try:
        return write_point(store, vm, [DiskSource("d1", b, meta=meta)], workers=workers)
    finally:
        b.close()


def hashing_limit(img: bytes, workers: int, algorithms: tuple[str, ...]) -> float:
    """Bytes per second hashing ``img``'s non-zero 4 MiB chunks with each of
    ``algorithms`` on ``workers`` threads, in memory."""
    from imagetool.checksum import hash_factory
    news = [hash_factory(a) for a in algorithms]
    zero = bytes(4 * MiB)
    chunks = [memoryview(img)[i:i + 4 * MiB] for i in range(0, len(img), 4 * MiB)]
    chunks = [c for c in chunks if c != zero]

    def work(c):
        for new in news:
            new(c).digest()
    t = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, chunks))
    return sum(len(c) for c in chunks) / (time.monotonic() - t)


# The child reports its own peak (VmHWM, Linux): wait4's ru_maxrss would
# count the pages of this big process that the child shared until exec.
_RSS = ("import sys\nfrom imagetool.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
        "finally:\n    print(next(l.split()[1] for l in open('/proc/self/status')\n"
        "               if l.startswith('VmHWM:')), file=sys.stderr)\n")


def peak_rss(argv: list[str]) -> tuple[int, float]:
    """(peak RSS in bytes, seconds) of the CLI running ``argv``."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-c", _RSS, *argv], env=env, text=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if p.returncode:
        raise SystemExit(f"{argv}: exit {p.returncode}: {p.stderr}")
    return int(p.stderr.split()[-1]) * 1024, time.monotonic() - t


def s3_bench(work: str, size: int, workers: int, repeat: int) -> None:
    """(c): a point into RGW against plain parallel PUTs of the same bytes."""
    import boto3
    import rgw
    if rgw.missing_binaries():
        print("S3: skipped (Ceph RGW is not installed)")
        return
    os.environ.update(AWS_ACCESS_KEY_ID=rgw.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=rgw.SECRET_KEY,
                      AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull,
                      AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    server = rgw.start(os.path.join(work, "rgw"))
    try:
        import botocore.config
        s3 = boto3.client("s3", endpoint_url=server.endpoint, config=botocore.config.Config(
            max_pool_connections=workers + 4))
        img = random_image(size, seed=9, fill=0.9)
        src = os.path.join(work, "s3.raw")
        write_raw(src, img)
        zero = bytes(4 * MiB)
        pieces = [(i, img[i:i + 4 * MiB]) for i in range(0, size, 4 * MiB)]
        pieces = [(i, p) for i, p in pieces if p != zero]
        del img

        def empty(bucket: str) -> None:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for o in page.get("Contents", []):
                    s3.delete_object(Bucket=bucket, Key=o["Key"])
            s3.delete_bucket(Bucket=bucket)

        # What the point PUTs: each piece as its compressed blob.
        coder = ChunkStore.init(open_storage(os.path.join(work, "coder"), create=True))
        blobs = [(i, coder.encode(chunk_name(coder.chunk_id(p)), p)) for i, p in pieces]

        def put_all(objects) -> float:
            bucket = f"b-{uuid.uuid4().hex[:12]}"
            s3.create_bucket(Bucket=bucket)
            t = time.monotonic()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda ip: s3.put_object(Bucket=bucket, Key=f"p/{ip[0]}",
                                                       Body=ip[1]), objects))
            speed = size / (time.monotonic() - t)
            empty(bucket)
            return speed

        puts, blob_puts, points = [], [], []
        for _ in range(repeat):
            puts.append(put_all(pieces))
            blob_puts.append(put_all(blobs))
            bucket = f"b-{uuid.uuid4().hex[:12]}"
            s3.create_bucket(Bucket=bucket)
            store = ChunkStore.init(open_storage(f"s3://{bucket}/repo",
                                                 endpoint=server.endpoint, workers=workers))
            t = time.monotonic()
            point(store, "vm", src, workers)
            points.append(size / (time.monotonic() - t))
            store.storage.close()
            empty(bucket)
        put, pt = statistics.median(puts), statistics.median(points)
        blob = statistics.median(blob_puts)
        stored = sum(len(b) for _, b in blobs)
        print(f"| S3 full point, {workers} workers, {size // MiB} MiB | plain parallel PUTs "
              f"of the 4 MiB pieces ({put / MiB:.0f} MiB/s) | {pt / put:.2f}x | "
              f"{pt / MiB:.0f} MiB/s |")
        print(f"| S3 full point, {workers} workers | plain parallel PUTs of the blobs it "
              f"stores ({stored / MiB:.0f} MiB, {blob / MiB:.0f} MiB/s of guest data) | "
              f"{pt / blob:.2f}x | |")
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512M")
    ap.add_argument("--clones", type=int, default=10)
    ap.add_argument("--unique", type=float, default=0.03)
    ap.add_argument("--piece", default="64K")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--s3-size", default="192M")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-dedup", action="store_true")
    ap.add_argument("--no-s3", action="store_true")
    a = ap.parse_args()
    size, piece = parse_size(a.size), parse_size(a.piece)
    work = tempfile.mkdtemp(prefix="bench-chunks-", dir=a.dir)
    try:
        tmpl = random_image(size if not a.no_dedup else 4 * MiB, seed=1, fill=0.5)
        zero = bytes(64 * 1024)
        data = sum(64 * 1024 for i in range(0, size, 64 * 1024)
                   if tmpl[i:i + 64 * 1024] != zero)
        clones = []
        for c in range(a.clones if not a.no_dedup else 0):
            img, r = bytearray(tmpl), random.Random(c)
            for _ in range(int(a.unique * data) // piece):
                off = r.randrange(0, size - piece) // 4096 * 4096
                img[off:off + piece] = r.randbytes(piece)
            clones.append(os.path.join(work, f"clone{c}.raw"))
            write_raw(clones[-1], img)
        del tmpl
        if not a.no_dedup:
            print(f"template: {size // MiB} MiB virtual, {data / MiB:.0f} MiB data; {a.clones} "
                  f"clones with {a.unique:.0%} unique in {piece // 1024} KiB pieces")
        for cs in (4 * MiB, 1 * MiB) if not a.no_dedup else ():
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
        from imagetool.checksum import checksum_file
        repo = os.path.join(work, "speed")
        store = ChunkStore.init(open_storage(repo, create=True))
        # Recorded as `backup create` records it: blocks of the chunk size,
        # so verify takes each block's digest in its chunk pass.
        c = checksum_file(src, block_size=store.chunk_size)
        meta = {"checksum": {"algorithm": c["algorithm"], "block_size": c["block_size"],
                             "value": c["checksum"]}}
        t = time.monotonic()
        point(store, "vm", src, a.workers, meta)
        speed = size / (time.monotonic() - t)
        # Interleaved, so the limits and verify see the same machine load.
        limits, boths, vspeeds, cspeeds = [], [], [], []
        for _ in range(a.repeat):
            limits.append(hashing_limit(img, 1, ("sha256",)))
            boths.append(hashing_limit(img, a.workers, ("sha256", "blake2b")))
            t = time.monotonic()
            rep = verify(store, workers=a.workers)
            vspeeds.append(rep.checked_bytes / (time.monotonic() - t))
            t = time.monotonic()
            rep = verify(store, workers=a.workers, checksums=True)
            cspeeds.append(rep.checked_bytes / (time.monotonic() - t))
            assert rep.ok, rep.to_dict()
        del img
        limit, both = statistics.median(limits), statistics.median(boths)
        vspeed, cspeed = statistics.median(vspeeds), statistics.median(cspeeds)
        print(f"| full point, {a.workers} workers | SHA-256 one thread "
              f"({limit / MiB:.0f} MiB/s) | {speed / limit:.2f}x | {speed / MiB:.0f} MiB/s |")
        print(f"| verify (chunk ids only), {a.workers} workers | SHA-256 one thread | "
              f"{vspeed / limit:.2f}x | {vspeed / MiB:.0f} MiB/s |")
        print(f"| backup verify (ids + guest checksum), {a.workers} workers | SHA-256 + "
              f"BLAKE2b, {a.workers} threads, in memory ({both / MiB:.0f} MiB/s) | "
              f"{cspeed / both:.2f}x | {cspeed / MiB:.0f} MiB/s |")
        for argv in (["backup", "export", repo, "vm", os.path.join(work, "out"),
                      "--workers", str(a.workers)],
                     ["backup", "verify", repo, "--workers", str(a.workers)]):
            rss, secs = peak_rss(argv)
            print(f"| peak RSS, {argv[1]} of {size // MiB} MiB | 300 MiB | "
                  f"{rss / (300 * MiB):.2f}x | {rss / MiB:.0f} MiB in {secs:.1f} s |")
        shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)
        os.unlink(src)
        if not a.no_s3:
            s3_bench(work, parse_size(a.s3_size), a.workers, a.repeat)
        print(f"load average: {open('/proc/loadavg').read().split()[:3]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
