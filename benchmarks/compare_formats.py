#!/usr/bin/env python3
"""Side by side: imagetool checksum/convert against the reference tools.

Builds a test image (default 2 GiB: data and holes alternating, half each)
in a temporary directory on disk, then times, each in its own process so
that peak RSS can be read per run (``os.wait4``):

- checksum of the raw and the qcow2 image: ``imagetool checksum`` against
  ``ovirt_imageio.client.checksum`` (which reads through qemu-nbd);
- conversion raw -> qcow2 and qcow2 -> raw: ``imagetool convert`` against
  ``qemu-img convert`` (default cache mode "unsafe": no flush at the end),
  and ``qemu-img convert -t writeback`` (flushes at the end, like
  imagetool, which fsyncs before renaming).

Every run is repeated (``--repeat``, best time kept) with a warm page cache
for all tools alike. Prints a Markdown table; ``--json FILE`` saves the
figures. Usage::

    python benchmarks/compare_formats.py [--size 2G] [--dir /var/tmp] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from imagetool.units import format_size, parse_size  # noqa: E402

CHUNK = 64 * 1024 * 1024


def build_image(path: str, size: int) -> int:
    """Alternate CHUNK of random data and CHUNK of hole; return data bytes."""
    data = 0
    with open(path, "wb") as f:
        f.truncate(size)
        block = bytearray(os.urandom(4 * 1024 * 1024))
        for off in range(0, size, 2 * CHUNK):
            n = min(CHUNK, size - off)
            f.seek(off)
            for i in range(0, n, len(block)):
                # Vary each block so no layer can dedupe or cache it cheaply.
                block[:8] = (off + i).to_bytes(8, "little")
                f.write(block[:min(len(block), n - i)])
            data += n
        f.flush()
        os.fsync(f.fileno())
    return data


def timed(cmd: list[str]) -> tuple[float, float, int]:
    """Run ``cmd``: (wall seconds, CPU seconds, peak RSS bytes) of that process.

    CPU and RSS come from ``os.wait4``, so they include the process's own
    reaped children (qemu-nbd under the reference client).
    """
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.monotonic() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.read().decode()}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def best_pair(a: list[str], b: list[str], repeat: int, before=None):
    """Alternate runs of ``a`` and ``b`` (fair on a busy machine); best of each.

    Returns ((wall, cpu, rss) for a, (wall, cpu, rss) for b): the minimum
    wall and CPU times and the maximum RSS over the runs.
    """
    results: list[list[tuple[float, float, int]]] = [[], []]
    for i in range(repeat):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for k in order:
            if before:
                before()
            results[k].append(timed((a, b)[k]))
    return tuple((min(r[0] for r in rs), min(r[1] for r in rs), max(r[2] for r in rs))
                 for rs in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2G", help="image size (default 2G)")
    ap.add_argument("--dir", default="/var/tmp", help="where to build the images (on disk)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    size = parse_size(args.size)
    py = sys.executable
    work = tempfile.mkdtemp(prefix="imagetool-bench-", dir=args.dir)
    try:
        raw = os.path.join(work, "src.raw")
        qcow = os.path.join(work, "src.qcow2")
        data = build_image(raw, size)
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, qcow], check=True)
        print(f"image: {format_size(size)}, data {format_size(data)}, in {work}",
              file=sys.stderr)

        ref_sum = ("from ovirt_imageio.client import checksum; import sys; "
                   "print(checksum(sys.argv[1]))")
        rows = []

        def compare(what, ours_cmd, ref_name, ref_cmd, cleanup=None):
            (ours_t, ours_cpu, ours_rss), (ref_t, ref_cpu, ref_rss) = best_pair(
                ours_cmd, ref_cmd, args.repeat, cleanup)
            rows.append({
                "operation": what, "reference": ref_name,
                "ours_s": round(ours_t, 2), "reference_s": round(ref_t, 2),
                "ours_MiBps": round(size / ours_t / 2**20),
                "reference_MiBps": round(size / ref_t / 2**20),
                "ratio": round(ref_t / ours_t, 2),
                "ours_cpu_s": round(ours_cpu, 2), "reference_cpu_s": round(ref_cpu, 2),
                "ours_peak_rss_MiB": round(ours_rss / 2**20),
                "reference_peak_rss_MiB": round(ref_rss / 2**20)})
            print(rows[-1], file=sys.stderr)

        for name, path in (("raw", raw), ("qcow2", qcow)):
            compare(f"checksum {name}",
                    [py, "-m", "imagetool", "checksum", path],
                    "ovirt_imageio.client.checksum", [py, "-c", ref_sum, path])

        for src, fmt in ((raw, "qcow2"), (qcow, "raw")):
            dst = os.path.join(work, f"dst.{fmt}")

            def rm(dst=dst):
                if os.path.exists(dst):
                    os.unlink(dst)

            label = f"convert {os.path.splitext(src)[1][1:]} -> {fmt}"
            ours = [py, "-m", "imagetool", "convert", "--force", src, dst, "-O", fmt]
            compare(label, ours, "qemu-img convert",
                    ["qemu-img", "convert", "-O", fmt, src, dst], rm)
            compare(label, ours, "qemu-img convert -t writeback",
                    ["qemu-img", "convert", "-t", "writeback", "-O", fmt, src, dst], rm)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nImage: {format_size(size)} ({format_size(data)} data, rest holes); "
          f"best of {args.repeat}; ratio = reference time / our time (>1: we are faster).\n")
    print("| operation | reference | ours s | ref s | ours MiB/s | ref MiB/s | ratio "
          "| ours CPU s | ref CPU s | ours peak RSS MiB | ref peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['operation']} | {r['reference']} | {r['ours_s']} | {r['reference_s']} | "
              f"{r['ours_MiBps']} | {r['reference_MiBps']} | {r['ratio']} | "
              f"{r['ours_cpu_s']} | {r['reference_cpu_s']} | "
              f"{r['ours_peak_rss_MiB']} | {r['reference_peak_rss_MiB']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": size, "data": data, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
