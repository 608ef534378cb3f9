"""What end-to-end verification adds to an upload's wall time.

One image (default 1 GiB: 8 MiB of random data, then an 8 MiB hole, over
and over: half data, half holes) is uploaded to a local engine served by an
``imagetool serve`` subprocess (TLS on loopback), each upload in a fresh
client process, in three modes, interleaved ``--repeat`` times:

- ``off``: ``--no-verify``;
- ``parallel``: verification on (the default), the source hashed in a
  thread while the copy runs;
- ``after``: verification on, the source hashed after the copy.

Every verified upload compares the server's checksum with ours; the disk is
removed after each run. Prints a Markdown table (median wall time, the
verification's own time, added % over ``off``) and optionally JSON.

    python benchmarks/compare_verify.py [--size 1G] [--repeat 3] [--workers 4]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from imagetool.units import format_size, parse_size  # noqa: E402

MiB = 1 << 20
RUN = 8 * MiB
MODES = ("off", "parallel", "after")


def make_half_data(path: str, size: int) -> None:
    """Random data and holes in alternating 8 MiB runs."""
    rnd = random.Random(7)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 2 * RUN):
            f.seek(off)
            f.write(rnd.randbytes(min(RUN, size - off)))


def start_engine(data_dir: str) -> tuple[subprocess.Popen, dict]:
    """``imagetool serve`` on ``data_dir``; returns (process, lock-file info)."""
    from imagetool.server.local import find_running_engine

    pw = os.path.join(data_dir, "password")
    os.makedirs(data_dir, exist_ok=True)
    with open(pw, "w") as f:
        f.write("bench-secret\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagetool", "serve", "--data-dir", data_dir,
         "--password-file", pw], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = find_running_engine(data_dir)
        if info:
            info["password"] = "bench-secret"
            return proc, info
        if proc.poll() is not None:
            raise SystemExit("imagetool serve exited")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("imagetool serve did not start")


def one(info: dict, path: str, mode: str, workers: int) -> dict:
    """One upload in this process (called in a child): timings and result."""
    from imagetool.engine import Connection
    from imagetool.transfer import verify
    from imagetool.transfer.upload import upload_disk_result

    verify.PARALLEL_UPLOAD_HASH = mode == "parallel"
    with Connection(info["url"], username=info.get("username", "admin@internal"),
                    password=info["password"], cafile=info.get("cafile")) as conn:
        start = time.monotonic()
        res = upload_disk_result(conn, path, "data", workers=workers,
                                 verify=mode != "off", name=f"bench-{mode}")
        seconds = time.monotonic() - start
        out = {"mode": mode, "seconds": seconds,
               "verify_seconds": res.verification.seconds if res.verification else 0.0,
               "verified": bool(res.verification and res.verification.verified),
               "checksum": res.checksum}
        conn.disks.remove(res.disk_id)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--one", nargs=3, metavar=("INFO", "PATH", "MODE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        info, path, mode = args.one
        print(json.dumps(one(json.loads(info), path, mode, args.workers)))
        return

    work = os.path.join(os.environ.get("TMPDIR", "/var/tmp"),
                        f"imagetool-bench-verify-{os.getpid()}")
    os.makedirs(work)
    proc = None
    try:
        src = os.path.join(work, "half.raw")
        make_half_data(src, args.size)
        proc, info = start_engine(os.path.join(work, "engine"))
        rows: dict[str, list[dict]] = {m: [] for m in MODES}
        # One warm-up (page cache, engine start-up), not counted.
        _child(info, src, "off", args.workers)
        for _ in range(args.repeat):
            for mode in MODES:
                r = _child(info, src, mode, args.workers)
                rows[mode].append(r)
                print(f"{mode:9} {r['seconds']:.2f} s (verify {r['verify_seconds']:.2f} s)",
                      file=sys.stderr)
        summary = _summary(rows)
        print(f"Upload of {format_size(args.size)} (half data, half holes), "
              f"{args.workers} workers, median of {args.repeat}, "
              f"{os.cpu_count()} CPUs, imagetool serve on loopback (TLS)\n")
        print("| mode | wall time (s) | verification (s) | added |")
        print("|---|---|---|---|")
        for s in summary:
            print(f"| {s['mode']} | {s['seconds']:.2f} | {s['verify_seconds']:.2f} | "
                  f"{s['added_pct']:+.1f}% |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"size": args.size, "repeat": args.repeat,
                           "summary": summary, "runs": rows}, f, indent=2)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def _child(info: dict, src: str, mode: str, workers: int) -> dict:
    p = subprocess.run([sys.executable, __file__, "--workers", str(workers),
                        "--one", json.dumps(info), src, mode],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"upload ({mode}) failed: {p.stderr[-2000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if mode != "off" and not r["verified"]:
        raise SystemExit(f"upload ({mode}) was not verified")
    return r


def _summary(rows: dict[str, list[dict]]) -> list[dict]:
    base = statistics.median(r["seconds"] for r in rows["off"])
    out = []
    for mode in MODES:
        t = statistics.median(r["seconds"] for r in rows[mode])
        v = statistics.median(r["verify_seconds"] for r in rows[mode])
        out.append({"mode": mode, "seconds": t, "verify_seconds": v,
                    "added_pct": 100.0 * (t - base) / base})
    return out


if __name__ == "__main__":
    main()
