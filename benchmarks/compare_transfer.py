"""imagetool vs the reference client (ovirt_imageio.client), same daemon, same run.

Images: one all-data image (default 2 GiB) and one sparse image with 10%
data (default 8 GiB). For each image, direction (upload/download), client
and worker count, one transfer runs in a fresh process against the REAL
ovirt-imageio daemon (plain HTTP on loopback, file tickets) and we record
wall time, throughput (virtual bytes per second) and the process's peak RSS.
Every result is checked with ``qemu-img compare``.

    python benchmarks/compare_transfer.py [--full-size 2G] [--sparse-size 8G]
        [--workers 1,4] [--rss-workers 8] [--buffer-size 8M] [--repeat N]
        [--backend nbd|file] [--dir DIR] [--images full,sparse10]
        [--ops upload,download] [--ceiling] [--json FILE]

``--dir`` is where the images and the copies live (default /var/tmp, the
machine's disk); ``--dir /dev/shm`` keeps everything in memory, so the
figures measure the clients and the daemon rather than the disk.
``--ceiling`` adds, for downloads, a client that makes imagetool's requests
and discards the bytes (``bench_transfer.py --tool null``): what the daemon
gives any client on this machine, so ceiling/reference bounds the ratio a
download can reach here.

imagetool uses its default request size (8 MiB); the reference client its
default buffer (4 MiB). Like with like: the reference client does not
verify, so the ``imagetool`` column copies with verification off too; the
``verified`` column (``--no-verified`` drops it) is imagetool with its
default block-checksum verification, a row only imagetool can fill, never
the ratio's numerator. Prints a Markdown table with imagetool/reference
ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
sys.path.insert(0, ROOT)

from imageio_daemon import ImageioDaemon, QemuNbd, scratch_dir  # noqa: E402
from imagetool.units import format_size, parse_size  # noqa: E402

MiB = 1 << 20


def make_full(path: str, size: int) -> None:
    """All data: random-looking bytes everywhere (no zero blocks)."""
    chunk = random.Random(1).randbytes(8 * MiB)
    with open(path, "wb") as f:
        left = size
        i = 0
        while left:
            n = min(left, len(chunk))
            # vary each chunk so no two blocks are equal
            f.write(i.to_bytes(8, "little") + chunk[8:n] if n > 8 else chunk[:n])
            left -= n
            i += 1


def make_sparse(path: str, size: int, fraction: float = 0.10) -> None:
    """``fraction`` of the image is data, in 1 MiB runs spread evenly."""
    rnd = random.Random(2)
    step = int(MiB / fraction)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size - MiB + 1, step):
            f.seek(off)
            f.write(rnd.randbytes(MiB))


def measure(tool: str, op: str, path: str, url: str, workers: int,
            buffer_size: int) -> dict:
    """One transfer in a child process: seconds and peak RSS (KiB)."""
    cmd = [sys.executable, os.path.join(HERE, "bench_transfer.py"), "--tool", tool,
           "--op", op, "--file", path, "--url", url, "--workers", str(workers),
           "--buffer-size", str(buffer_size)]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.decode()[-2000:]}")
    reply = json.loads(out)
    return {"seconds": reply["seconds"],
            "rss_kib": reply.get("rss_kib") or usage.ru_maxrss}


def one_transfer(daemon, backend: str, work: str, src: str, size: int, tool: str,
                 op: str, workers: int, buffer_size: int) -> dict:
    """One measured transfer into a fresh target, verified with qemu-img compare."""
    if op == "upload":
        target = os.path.join(work, "target.raw")
        with open(target, "wb") as f:
            f.truncate(size)
        served, ops, path_arg = target, ["read", "write"], src
    else:
        target = os.path.join(work, "down.raw")
        if os.path.exists(target):
            os.unlink(target)
        served, ops, path_arg = src, ["read"], target
    try:
        if backend == "nbd":
            with QemuNbd(served, "raw") as nbd:
                url = daemon.add_ticket(nbd_socket=nbd.socket_path, size=size, ops=ops)
                r = measure(tool, op, path_arg, url, workers, buffer_size)
        else:
            url = daemon.add_ticket(path=served, size=size, ops=ops)
            r = measure(tool, op, path_arg, url, workers, buffer_size)
        # The null client moves no file's bytes: there is nothing to compare.
        r["ok"] = True if tool == "null" else same(src, target)
    finally:
        if os.path.exists(target):
            os.unlink(target)
    return r


def same(a: str, b: str) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", a, b]
                          ).returncode == 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-size", default="2G")
    p.add_argument("--sparse-size", default="8G")
    p.add_argument("--workers", default="1,4")
    p.add_argument("--rss-workers", type=int, default=8)
    p.add_argument("--buffer-size", default="8M", help="imagetool request size")
    p.add_argument("--ref-buffer-size", default="4M", help="reference client buffer")
    p.add_argument("--backend", choices=["nbd", "file"], default="nbd",
                   help="daemon tickets: nbd (qemu-nbd, 8 writers) or file (1 writer)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per measurement; the table shows the median")
    p.add_argument("--dir", default=None,
                   help="directory for images and copies (default: /var/tmp)")
    p.add_argument("--images", default="full,sparse10",
                   help="which images: full, sparse10 or both")
    p.add_argument("--ops", default="upload,download")
    p.add_argument("--ceiling", action="store_true",
                   help="downloads: also time a client that writes no file (the daemon's ceiling)")
    p.add_argument("--no-verified", dest="verified", action="store_false",
                   help="leave out imagetool with verification on")
    p.add_argument("--json", dest="json_out")
    a = p.parse_args()
    workers = [int(w) for w in a.workers.split(",")]
    kinds = a.images.split(",")
    ops = a.ops.split(",")
    bufs = {"imagetool": parse_size(a.buffer_size), "reference": parse_size(a.ref_buffer_size),
            "null": parse_size(a.buffer_size), "imagetool-verify": parse_size(a.buffer_size)}
    work = (tempfile.mkdtemp(prefix="imagetool-bench-transfer-", dir=a.dir) if a.dir
            else scratch_dir("imagetool-bench-transfer-"))
    rows = []
    try:
        images = {k: os.path.join(work, f"{k}.raw") for k in kinds}
        if "full" in images:
            make_full(images["full"], parse_size(a.full_size))
        if "sparse10" in images:
            make_sparse(images["sparse10"], parse_size(a.sparse_size))
        with ImageioDaemon() as daemon:
            for kind, src in images.items():
                size = os.path.getsize(src)
                for w in workers + ([a.rss_workers] if a.rss_workers else []):
                    for op in ops:
                        tools = ["reference", "imagetool"]
                        if w == a.rss_workers and w not in workers:
                            tools = ["imagetool"]   # the RSS row is about imagetool
                        else:
                            if a.verified:
                                tools.append("imagetool-verify")
                            if a.ceiling and op == "download":
                                tools.append("null")
                        samples: dict[str, list] = {t: [] for t in tools}
                        # Interleave the clients so drifting load hits both alike.
                        for _ in range(a.repeat):
                            for tool in tools:
                                samples[tool].append(one_transfer(
                                    daemon, a.backend, work, src, size, tool, op, w,
                                    bufs[tool]))
                        for tool in tools:
                            runs = sorted(samples[tool], key=lambda r: r["seconds"])
                            r = runs[len(runs) // 2]        # the median run
                            row = {"backend": a.backend, "image": kind, "size": size,
                                   "op": op, "tool": tool, "workers": w,
                                   "seconds": round(r["seconds"], 3),
                                   "mib_s": round(size / MiB / r["seconds"], 1),
                                   "all_mib_s": [round(size / MiB / x["seconds"], 1)
                                                 for x in samples[tool]],
                                   "rss_mib": round(max(x["rss_kib"] for x in runs) / 1024, 1),
                                   "ok": all(x["ok"] for x in runs)}
                            rows.append(row)
                            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(rows, f, indent=2)


def table(rows: list[dict]) -> str:
    """Markdown: one line per (image, op, workers) with both clients and the ratio."""
    ceiling = any(r["tool"] == "null" for r in rows)
    extra = " ceiling MiB/s | ceiling/reference |" if ceiling else ""
    out = ["| image | op | workers | reference MiB/s | imagetool MiB/s | ratio | "
           "imagetool verifying MiB/s | reference RSS MiB | imagetool RSS MiB | "
           "copies equal |" + extra,
           "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if ceiling else "")]
    keys = []
    for r in rows:
        k = (r["image"], r["op"], r["workers"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        by = {r["tool"]: r for r in rows if (r["image"], r["op"], r["workers"]) == k}
        ref, it, ver = by.get("reference"), by.get("imagetool"), by.get("imagetool-verify")
        ratio = f"{it['mib_s'] / ref['mib_s']:.2f}x" if ref and it else "-"
        ok = all(r["ok"] for r in by.values())
        size = format_size(next(iter(by.values()))["size"])
        out.append(f"| {k[0]} ({size}) | {k[1]} | {k[2]} | "
                   f"{ref['mib_s'] if ref else '-'} | {it['mib_s'] if it else '-'} | "
                   f"{ratio} | {ver['mib_s'] if ver else '-'} | "
                   f"{ref['rss_mib'] if ref else '-'} | "
                   f"{it['rss_mib'] if it else '-'} | {'yes' if ok else 'NO'} |"
                   + (_ceiling_cells(by) if ceiling else ""))
    return "\n".join(out)


def _ceiling_cells(by: dict) -> str:
    cap, ref = by.get("null"), by.get("reference")
    if not cap:
        return " - | - |"
    ratio = f"{cap['mib_s'] / ref['mib_s']:.2f}x" if ref else "-"
    return f" {cap['mib_s']} | {ratio} |"


if __name__ == "__main__":
    main()
