"""Bytes sent to finish an upload that was killed (kill -9) at 50%, vs the image size.

::

    python benchmarks/compare_resume.py [--size 2G] [--kill-at 0.5] [--dir /var/tmp]
                                        [--workers 4] [--buffer-size 8M] [--json out.json]

Starts ``imagetool serve`` (a local engine) in a scratch directory, writes an
image of random data, runs ``imagetool upload --resume`` in a subprocess
(through tests/support/resume_harness.py, which counts the PUT body bytes the client
sends, with no delay), kills it with SIGKILL once ``--kill-at`` of the image
was sent, runs the same command again and reports::

    sent before the kill + sent by the resume = total; total / size (target <= 1.05)

The uploaded disk is downloaded and compared with the source (byte equal).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HARNESS = os.path.join(ROOT, "tests", "support", "resume_harness.py")
MiB = 1 << 20


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def count(stats: str) -> int:
    try:
        with open(stats) as f:
            return json.load(f)["put"]
    except (FileNotFoundError, ValueError):
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--kill-at", type=float, default=0.5)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--buffer-size", default="8M")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    size = parse_size(args.size)
    root = tempfile.mkdtemp(prefix="imagetool-resume-bench-", dir=args.dir)
    data = os.path.join(root, "engine")
    pw = os.path.join(root, "pw")
    with open(pw, "w") as f:
        f.write("bench\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
    env.update(IMAGETOOL_HOME=os.path.join(root, "client"),
               XDG_CONFIG_HOME=os.path.join(root, "config"),
               PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    serve = subprocess.Popen([sys.executable, "-m", "imagetool", "serve", "--data-dir", data,
                              "--password-file", pw], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = os.path.join(data, "serve.json")
        while not os.path.exists(lock):
            if serve.poll() is not None:
                raise SystemExit("serve exited")
            time.sleep(0.1)
        time.sleep(0.3)
        with open(lock) as f:
            info = json.load(f)
        opts = ["--engine-url", info["url"], "--username", "admin@internal",
                "--password-file", pw, "--cafile", info["cafile"]]
        src = os.path.join(root, "src.raw")
        with open(src, "wb") as f:
            for _ in range(size // MiB):
                f.write(os.urandom(MiB))
        cmd = [sys.executable, HARNESS, "upload", src, "--sd", "data", "--resume",
               "--workers", str(args.workers), "--buffer-size", args.buffer_size,
               "--no-verify", *opts]
        stats1 = os.path.join(root, "first.stats")
        t0 = time.monotonic()
        first = subprocess.Popen(cmd, env={**env, "RESUME_TEST_STATS": stats1},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while count(stats1) < size * args.kill_at:
            if first.poll() is not None:
                raise SystemExit("the upload ended before the kill")
            time.sleep(0.002)
        first.send_signal(signal.SIGKILL)
        first.wait()
        t1 = time.monotonic()
        sent1 = count(stats1)
        stats2 = os.path.join(root, "second.stats")
        second = subprocess.run(cmd, env={**env, "RESUME_TEST_STATS": stats2},
                                capture_output=True, text=True)
        t2 = time.monotonic()
        if second.returncode != 0:
            raise SystemExit(f"resume failed: {second.stderr}")
        sent2 = count(stats2)
        back = os.path.join(root, "back.raw")
        dl = subprocess.run([sys.executable, "-m", "imagetool", "download", "src.raw", back,
                             "--no-verify", *opts], env=env, capture_output=True, text=True)
        if dl.returncode != 0:
            raise SystemExit(f"download failed: {dl.stderr}")
        same = subprocess.run(["cmp", "-s", src, back]).returncode == 0
        total = sent1 + sent2
        result = {"size": size, "kill_at": args.kill_at, "sent_before_kill": sent1,
                  "sent_by_resume": sent2, "total": total, "ratio": total / size,
                  "first_seconds": t1 - t0, "resume_seconds": t2 - t1,
                  "identical": same, "workers": args.workers,
                  "buffer_size": args.buffer_size}
        print(f"image {size / MiB:.0f} MiB, killed at {sent1 / MiB:.0f} MiB sent "
              f"({t1 - t0:.1f} s); resume sent {sent2 / MiB:.0f} MiB ({t2 - t1:.1f} s)")
        print(f"total sent {total / MiB:.0f} MiB = {total / size:.3f} x image size "
              f"(target <= 1.05); result identical: {same}")
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(result, f, indent=2)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
