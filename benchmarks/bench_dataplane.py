"""Client byte path: http.client (our ImageioClient) vs httpx, ranged GETs and PUTs.

Runs against the reference daemon (file ticket, plain HTTP on loopback) with
one connection and 8 MiB requests, so only the client's per-byte cost differs.

Usage: python benchmarks/bench_dataplane.py [--size 512M] [--request 8M] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "support"))

import httpx  # noqa: E402
from imageio_daemon import ImageioDaemon, scratch_dir  # noqa: E402

from imagetool.imageio import ImageioClient  # noqa: E402
from imagetool.units import parse_size  # noqa: E402

MiB = 1024 * 1024


def ours_get(url: str, size: int, req: int) -> None:
    buf = memoryview(bytearray(req))
    with ImageioClient(url) as c:
        for off in range(0, size, req):
            c.read_into(off, buf[:min(req, size - off)])


def httpx_get(url: str, size: int, req: int) -> None:
    buf = memoryview(bytearray(req))
    with httpx.Client(timeout=60) as c:
        for off in range(0, size, req):
            n = min(req, size - off)
            # Streaming into our buffer is the fairest use of httpx.
            with c.stream("GET", url, headers={"Range": f"bytes={off}-{off + n - 1}"}) as r:
                assert r.status_code == 206
                pos = 0
                for chunk in r.iter_raw(1024 * 1024):
                    buf[pos:pos + len(chunk)] = chunk
                    pos += len(chunk)
                assert pos == n


def ours_put(url: str, size: int, req: int, data: bytes) -> None:
    view = memoryview(data)
    with ImageioClient(url) as c:
        for off in range(0, size, req):
            c.write(off, view[:min(req, size - off)])
        c.flush()


def httpx_put(url: str, size: int, req: int, data: bytes) -> None:
    with httpx.Client(timeout=60) as c:
        for off in range(0, size, req):
            n = min(req, size - off)
            r = c.put(url + "?flush=n", content=data[:n],
                      headers={"Content-Range": f"bytes {off}-{off + n - 1}/*"})
            assert r.status_code == 200
        c.patch(url, json={"op": "flush"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="512M")
    p.add_argument("--request", default="8M")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    size, req = parse_size(args.size), parse_size(args.request)
    work = scratch_dir("imagetool-bench-")
    try:
        path = os.path.join(work, "disk.raw")
        data = os.urandom(req)
        with open(path, "wb") as f:
            for _ in range(size // req):
                f.write(data)
        best: dict[str, float] = {}
        with ImageioDaemon() as daemon:
            url = daemon.add_ticket(path=path, size=size)
            cases = {
                "GET  http.client readinto": lambda: ours_get(url, size, req),
                "GET  httpx stream": lambda: httpx_get(url, size, req),
                "PUT  http.client memoryview": lambda: ours_put(url, size, req, data),
                "PUT  httpx content=bytes": lambda: httpx_put(url, size, req, data),
            }
            for r in range(args.rounds):
                for name, fn in cases.items():
                    t = time.monotonic()
                    fn()
                    rate = size / MiB / (time.monotonic() - t)
                    best[name] = max(best.get(name, 0.0), rate)
                    print(f"round {r + 1}  {name:30s} {rate:7.1f} MiB/s", flush=True)
        print(f"\nbest of {args.rounds} (one connection, {req // MiB} MiB requests):")
        for name, rate in best.items():
            print(f"  {name:30s} {rate:7.1f} MiB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
