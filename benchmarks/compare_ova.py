"""OVA export/import vs downloading/uploading the same disks, same engines, same run.

A VM with two disks holding ``--size`` of data together (random bytes, no
zero blocks) lives on a local engine. Each operation runs as a fresh
``imagetool`` process; we record wall time and the process's peak RSS:

- ``ova export VM x.ova``  vs  ``download --format qcow2 DISK1 DISK2 DIR``
- ``ova import x.ova``     vs  ``upload DIR/*.qcow2`` (into a second engine)

The export includes its temporary snapshot and the checksum comparison
with the engine; ``download``/``upload`` verify too (their default).
Prints a Markdown table with OVA/plain ratios.

    python benchmarks/compare_ova.py [--size 2G] [--dir /var/tmp] [--repeat 1]
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from imagetool.units import format_size, parse_size  # noqa: E402

MiB = 1 << 20
PASSWORD = "bench-secret"


def make_full(path: str, size: int, seed: int) -> None:
    chunk = random.Random(seed).randbytes(8 * MiB)
    with open(path, "wb") as f:
        for i in range(0, size, len(chunk)):
            n = min(len(chunk), size - i)
            f.write(i.to_bytes(8, "little") + chunk[8:n])


def run(env: dict, *argv: str) -> tuple[float, int]:
    """One imagetool process: (seconds, peak RSS in KiB)."""
    start = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "imagetool", *argv], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.monotonic() - start
    out, err = p.stdout.read(), p.stderr.read()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"imagetool {' '.join(argv)} failed: {err.decode()}{out.decode()}")
    return seconds, usage.ru_maxrss


def engine_env(eng, home: str) -> dict:
    pw = os.path.join(home, "pw")
    with open(pw, "w") as f:
        f.write(PASSWORD)
    env = dict(os.environ, PYTHONPATH=ROOT, IMAGETOOL_HOME=home,
               IMAGETOOL_ENGINE_URL=eng.url, IMAGETOOL_USERNAME="admin@internal",
               IMAGETOOL_PASSWORD_FILE=pw, IMAGETOOL_CAFILE=eng.cafile)
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="2G", help="data in the VM's two disks together")
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    size = parse_size(args.size)
    from imagetool.engine import Connection
    from imagetool.server.local import LocalEngine
    from imagetool import upload_disk

    work = tempfile.mkdtemp(prefix="imagetool-bench-ova-", dir=args.dir)
    engines = []
    try:
        src_eng = LocalEngine(os.path.join(work, "engine1"), password=PASSWORD)
        dst_eng = LocalEngine(os.path.join(work, "engine2"), password=PASSWORD)
        for e in (src_eng, dst_eng):
            e.start()
            engines.append(e)
        home = os.path.join(work, "home")
        os.makedirs(home)
        env1, env2 = engine_env(src_eng, home), engine_env(dst_eng, home)
        with Connection(src_eng.url, username="admin@internal", password=PASSWORD,
                        cafile=src_eng.cafile) as conn:
            vm = conn.vms.add(name="bench")
            ids = []
            for i in range(2):
                img = os.path.join(work, f"src{i}.raw")
                make_full(img, size // 2, seed=i)
                d = upload_disk(conn, img, "data", name=f"bench-{i}", disk_format="qcow2")
                conn.vms.attach_disk(vm.id, d.id, bootable=i == 0)
                ids.append(d.id)
                os.unlink(img)
        rows = {k: [] for k in ("export", "download", "import", "upload")}
        for n in range(args.repeat):
            ova = os.path.join(work, "bench.ova")
            dl = os.path.join(work, "dl")
            for p in (ova,):
                if os.path.exists(p):
                    os.unlink(p)
            shutil.rmtree(dl, ignore_errors=True)
            os.makedirs(dl)
            rows["export"].append(run(env1, "ova", "export", "bench", ova))
            rows["download"].append(run(env1, "download", "--format", "qcow2", *ids, dl))
            name = f"bench-copy-{n}"
            rows["import"].append(run(env2, "ova", "import", ova, "--sd", "data",
                                      "--name", name))
            # The next import creates the same disk ids: remove this VM and its disks.
            with Connection(dst_eng.url, username="admin@internal", password=PASSWORD,
                            cafile=dst_eng.cafile) as conn2:
                conn2.vms.remove(conn2.vms.find(name).id)
            files = sorted(glob.glob(os.path.join(dl, "*")))
            rows["upload"].append(run(env2, "upload", "--sd", "data", *files))
        print(f"\nOVA vs plain transfers, {format_size(size)} of data in 2 disks, "
              f"best of {args.repeat}\n")
        print("| operation | seconds | MiB/s | peak RSS MiB | ratio (OVA/plain) |")
        print("|---|---|---|---|---|")
        best = {k: min(v) for k, v in rows.items()}
        for ova_op, plain in (("export", "download"), ("import", "upload")):
            for op in (ova_op, plain):
                s, rss = best[op]
                ratio = f"{best[ova_op][0] / best[plain][0]:.2f}" if op == ova_op else ""
                print(f"| {op} | {s:.2f} | {size / MiB / s:.0f} | {rss / 1024:.1f} | {ratio} |")
        print(f"\nOVA size {format_size(os.path.getsize(ova))}; qcow2 files "
              f"{format_size(sum(os.path.getsize(f) for f in files))}")
    finally:
        for e in engines:
            e.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
