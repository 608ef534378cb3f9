"""Run ONE transfer with one client and print its time as JSON.

Used by compare_transfer.py, which runs each measurement in a fresh process
so that peak RSS is the client's own::

    python benchmarks/bench_transfer.py --tool imagetool|reference|null \
        --op upload|download --file PATH --url URL --workers N [--buffer-size B]

``imagetool`` copies without verification, as the reference client does
(it has none), so the two compare like with like; ``imagetool-verify`` is
the same copy with imagetool's default block-checksum verification on, a
row of its own that only imagetool can fill.

``null`` (downloads only) GETs every range on N connections, in requests of
``--buffer-size`` like imagetool's, into one reused buffer per worker and
throws the bytes away: no file is written. What it reaches is the most the
server, on this machine, gives any client making the same requests.
"""

from __future__ import annotations

import argparse
import json
import time


def run(tool: str, op: str, path: str, url: str, workers: int, buffer_size: int) -> float:
    """Do the transfer; return seconds."""
    start = time.monotonic()
    if tool == "null":
        if op != "download":
            raise SystemExit("the null client measures downloads only")
        _null(url, workers, buffer_size)
    elif tool in ("imagetool", "imagetool-verify"):
        from imagetool.transfer.urls import download_url, upload_url

        verify = tool == "imagetool-verify"
        if op == "upload":
            upload_url(path, url, workers=workers, request_size=buffer_size, verify=verify)
        else:
            download_url(url, path, format="raw", workers=workers,
                         request_size=buffer_size, force=True, verify=verify)
    else:
        from ovirt_imageio import client

        if op == "upload":
            client.upload(path, url, None, buffer_size=buffer_size, secure=False,
                          max_workers=workers)
        else:
            client.download(url, path, None, fmt="raw", buffer_size=buffer_size,
                            secure=False, max_workers=workers)
    return time.monotonic() - start


def _null(url: str, workers: int, buffer_size: int) -> None:
    """Read the whole image on ``workers`` connections; keep nothing."""
    from concurrent.futures import ThreadPoolExecutor

    from imagetool.imageio.client import ImageioClient

    first = ImageioClient(url, insecure=True)
    size = first.size()
    offsets = iter(range(0, size, buffer_size))

    def worker(client: ImageioClient) -> None:
        buf = memoryview(bytearray(buffer_size))
        with client:
            for offset in offsets:      # next() on a range iterator holds the GIL
                n = min(buffer_size, size - offset)
                if client.read_into(offset, buf[:n]) != n:
                    raise RuntimeError(f"short read at {offset}")

    clients = [first] + [first.clone() for _ in range(workers - 1)]
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(worker, c) for c in clients]:
            f.result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tool", choices=["imagetool", "imagetool-verify", "reference", "null"], required=True)
    p.add_argument("--op", choices=["upload", "download"], required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--buffer-size", type=int, default=4 << 20)
    a = p.parse_args()
    seconds = run(a.tool, a.op, a.file, a.url, a.workers, a.buffer_size)
    print(json.dumps({"seconds": seconds, "rss_kib": peak_rss_kib()}))


def peak_rss_kib() -> int | None:
    """This process's peak RSS (VmHWM; exec resets it, unlike ru_maxrss
    which a child inherits from its forking parent). Helper processes such
    as the reference client's qemu-nbd are not included."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
