"""OVA export/import vs downloading/uploading the same disks, same engines, same run.

A VM with two disks holding ``--size`` of data together (random bytes, no
zero blocks) lives on a local engine. Each operation runs as a fresh
``imagetool`` process:

- ``ova export VM x.ova``  vs  ``download --format qcow2 DISK1 DISK2 DIR``
- ``ova import x.ova``     vs  ``upload DIR/*.qcow2`` (into a second engine)

The export includes its temporary snapshot and the checksum comparison
with the engine; ``download``/``upload`` verify too (their default). Both
sides use the same worker count, the OVA and the qcow2 files are on the
same file system, and what an import or an upload created is removed
before the next run, so every run starts from the same engine state.

Each pair runs alternately (OVA first in odd repeats, plain first in
even ones), so load from other jobs falls on both sides. Recorded per
run: wall time, the client process's CPU time (user+sys, ``os.wait4``),
the CPU time the engines (threads of this process) spent meanwhile, and
the client's peak RSS. On a shared machine wall time is noisy; CPU time
much less so. Prints a Markdown table of medians with OVA/plain ratios.

    python benchmarks/compare_ova.py [--size 2G] [--dir /var/tmp] [--repeat 3]
                                     [--profile DIR]

``--profile DIR`` runs every client under cProfile (slower) and keeps
``DIR/<operation>-<n>.prof``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import shutil
import statistics
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
WORKERS = "4"


def make_full(path: str, size: int, seed: int) -> None:
    chunk = random.Random(seed).randbytes(8 * MiB)
    with open(path, "wb") as f:
        for i in range(0, size, len(chunk)):
            n = min(len(chunk), size - i)
            f.write(i.to_bytes(8, "little") + chunk[8:n])


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def settle(limit: float = 60.0) -> float:
    """Wait until the page cache is written back (``sync``) and the engines
    are idle (this process's CPU time stops growing): work an earlier run
    left behind must not be charged to the next one. Without the sync, the
    run after an export or a download competed with the write-back of the
    gigabytes those just wrote. Returns the seconds waited."""
    start = time.monotonic()
    os.sync()
    while time.monotonic() - start < limit:
        before = _cpu_self()
        time.sleep(0.5)
        if _cpu_self() - before < 0.02:
            break
    return time.monotonic() - start


def run(env: dict, argv: list[str], profile: str | None = None) -> tuple[dict, bytes]:
    """One imagetool process: its figures and its stdout.

    ``client_cpu`` and ``rss_kib`` come from ``os.wait4`` (that process
    only); ``engine_cpu`` is this process's CPU time meanwhile, which is
    the engines' (the main thread only waits).
    """
    pre = ["-m", "cProfile", "-o", profile] if profile else []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        engine0 = _cpu_self()
        start = time.monotonic()
        p = subprocess.Popen([sys.executable, *pre, "-m", "imagetool", *argv], env=env,
                             stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.monotonic() - start
        engine = _cpu_self() - engine0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"imagetool {' '.join(argv)} failed: {stderr.decode()}"
                         f"{stdout.decode()}")
    return {"seconds": seconds, "client_cpu": usage.ru_utime + usage.ru_stime,
            "engine_cpu": engine, "rss_kib": usage.ru_maxrss}, stdout


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
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", metavar="DIR", help="run the clients under cProfile")
    args = ap.parse_args()
    size = parse_size(args.size)
    from imagetool.engine import Connection
    from imagetool.server.local import LocalEngine
    from imagetool import upload_disk

    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
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

        def connect(eng):
            return Connection(eng.url, username="admin@internal", password=PASSWORD,
                              cafile=eng.cafile)

        with connect(src_eng) as conn:
            vm = conn.vms.add(name="bench")
            ids = []
            for i in range(2):
                img = os.path.join(work, f"src{i}.raw")
                make_full(img, size // 2, seed=i)
                d = upload_disk(conn, img, "data", name=f"bench-{i}", disk_format="qcow2")
                conn.vms.attach_disk(vm.id, d.id, bootable=i == 0)
                ids.append(d.id)
                os.unlink(img)
        # Both outputs live in ``work``: one file system for both sides.
        ova = os.path.join(work, "bench.ova")
        dl = os.path.join(work, "dl")
        rows: dict[str, list[dict]] = {k: [] for k in ("export", "download",
                                                        "import", "upload")}

        def timed(op: str, n: int, env: dict, argv: list[str]) -> bytes:
            prof = os.path.join(args.profile, f"{op}-{n}.prof") if args.profile else None
            waited = settle()
            if os.environ.get("BENCH_DEBUG"):
                print(f"{op}-{n}: settled in {waited:.1f} s", file=sys.stderr)
            fig, out = run(env, argv, prof)
            rows[op].append(fig)
            return out

        def export(n: int) -> None:
            if os.path.exists(ova):
                os.unlink(ova)
            timed("export", n, env1, ["ova", "export", "--workers", WORKERS, "bench", ova])

        def download(n: int) -> None:
            shutil.rmtree(dl, ignore_errors=True)
            os.makedirs(dl)
            timed("download", n, env1, ["download", "--workers", WORKERS,
                                        "--format", "qcow2", *ids, dl])

        def import_(n: int) -> None:
            name = f"bench-copy-{n}"
            timed("import", n, env2, ["ova", "import", "--workers", WORKERS, ova,
                                      "--sd", "data", "--name", name])
            # The next import creates the same disk ids: remove the VM and its disks.
            with connect(dst_eng) as conn2:
                conn2.vms.remove(conn2.vms.find(name).id)

        def upload(n: int) -> None:
            files = sorted(glob.glob(os.path.join(dl, "*")))
            out = timed("upload", n, env2, ["upload", "--workers", WORKERS, "--json",
                                            "--sd", "data", *files])
            with connect(dst_eng) as conn2:
                for r in json.loads(out):
                    conn2.disks.remove(r["disk_id"])

        # Export and download first: their outputs feed import and upload.
        for n in range(args.repeat):
            for f in ((export, download) if n % 2 == 0 else (download, export)):
                f(n)
        # An untimed upload, removed like every timed run's disks: each
        # timed import or upload then starts right after a removal. (The
        # engine's storage writes cost more system time right after other
        # large writes than after a removal, which made whichever side ran
        # first after the downloads look slower.)
        upload(-1)
        del rows["upload"][-1]
        for n in range(args.repeat):
            for f in ((import_, upload) if n % 2 == 0 else (upload, import_)):
                f(n)
        files = sorted(glob.glob(os.path.join(dl, "*")))
        print(f"\nOVA vs plain transfers, {format_size(size)} of data in 2 disks, "
              f"{WORKERS} workers, median of {args.repeat}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}"
              f"{', under cProfile' if args.profile else ''}\n")
        print("| operation | wall s | MiB/s | client CPU s | engine CPU s | peak RSS MiB | "
              "ratio wall | ratio client CPU | ratio engine CPU |")
        print("|---|---|---|---|---|---|---|---|---|")
        med = {op: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for op, rs in rows.items()}
        for ova_op, plain in (("export", "download"), ("import", "upload")):
            for op in (ova_op, plain):
                m = med[op]
                if op == ova_op:
                    ratios = " | ".join(f"{m[k] / med[plain][k]:.2f}" for k in
                                        ("seconds", "client_cpu", "engine_cpu"))
                else:
                    ratios = " | | "
                print(f"| {op} | {m['seconds']:.2f} | {size / MiB / m['seconds']:.0f} | "
                      f"{m['client_cpu']:.2f} | {m['engine_cpu']:.2f} | {m['rss_kib'] / 1024:.0f} | "
                      f"{ratios} |")
        print("\nSamples (wall s / client CPU s / engine CPU s):")
        for op, rs in rows.items():
            print(f"- {op}: " + ", ".join(
                f"{r['seconds']:.2f}/{r['client_cpu']:.2f}/{r['engine_cpu']:.2f}"
                for r in rs))
        print(f"\nOVA size {format_size(os.path.getsize(ova))}; qcow2 files "
              f"{format_size(sum(os.path.getsize(f) for f in files))}")
    finally:
        for e in engines:
            e.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
