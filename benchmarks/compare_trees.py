"""Two revisions of imagetool side by side: the same transfers, conversions
and checksums, same engine, same run.

The restructure into one copier and backends that own their I/O was to
change no behaviour and cost no speed. This script checks the speed part:
each revision's own CLI (``python -m imagetool`` with that checkout first
on ``PYTHONPATH``) runs, as a fresh process each time:

- ``upload`` of a qcow2 image (half random data, half holes, in 8 MiB
  runs) to a new qcow2 disk (the disk removed afterwards, untimed);
- ``download --format qcow2`` of one fixed disk holding the same data;
- ``convert`` of the image to raw and to qcow2 (local, no engine);
- ``checksum`` of the image (local).

Both revisions talk to one local engine (this checkout's, in-process, as
in compare_ova.py). In every repeat each operation runs once per revision,
the order swapped every repeat so that drifting load hits both alike, and
each run waits for the page cache to be written back and the engine to be
idle. Outputs are compared once (untimed): the two downloads and the two
conversions of each format must hold the same guest data.

Prints a Markdown table of medians (wall time, client CPU) with the
after/before ratio, and every sample.

    python benchmarks/compare_trees.py [--before 1cafaed] [--after HEAD]
        [--size 1G] [--repeat 5] [--workers 4] [--dir /var/tmp] [--json FILE]
        [--ops upload,download,convert,checksum,backup,ova]

``--ops backup`` adds ``backup create`` (snapshot method, a full point of
a VM holding the downloaded disk) and ``backup restore`` of it; ``--ops
ova`` adds ``ova export`` of that VM and ``ova import --clone`` of the OVA
(the imported VM and its disks removed afterwards, untimed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from compare_ova import PASSWORD, engine_env, run, settle  # noqa: E402
from compare_verify import make_half_data  # noqa: E402
from imagetool.units import format_size, parse_size  # noqa: E402


def checkout(rev: str, where: str) -> str:
    """A detached worktree of ``rev`` at ``where``; returns its path."""
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-f", where, rev],
                   check=True, capture_output=True)
    return where


def which_code(env: dict) -> str:
    return subprocess.run([sys.executable, "-c", "import imagetool; print(imagetool.__file__)"],
                          env=env, cwd=env["IMAGETOOL_HOME"], capture_output=True,
                          text=True, check=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="1cafaed")
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"))
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--ops", default="upload,download,convert,checksum",
                    help="which of upload, download, convert, checksum, backup "
                         "(create of a full point and its restore), ova (export "
                         "and import) to run")
    args = ap.parse_args()

    from imagetool.engine import Connection
    from imagetool.server.local import LocalEngine

    work = tempfile.mkdtemp(prefix="imagetool-bench-trees-", dir=args.dir)
    trees: dict[str, str] = {}
    eng = None
    try:
        for side, rev in (("before", args.before), ("after", args.after)):
            trees[side] = checkout(rev, os.path.join(work, f"tree-{side}"))
        eng = LocalEngine(os.path.join(work, "engine"), password=PASSWORD).start()
        home = os.path.join(work, "home")
        os.makedirs(home)
        envs = {}
        for side, tree in trees.items():
            env = engine_env(eng, home)
            env["PYTHONPATH"] = tree
            envs[side] = env
            code = which_code(env)
            assert code.startswith(tree), code
            print(f"{side}: {args.before if side == 'before' else args.after} "
                  f"runs {code}", file=sys.stderr)

        raw = os.path.join(work, "image.raw")
        make_half_data(raw, args.size)
        image = os.path.join(work, "image.qcow2")
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, image],
                       check=True)
        os.unlink(raw)
        conn = Connection(eng.url, username="admin@internal", password=PASSWORD,
                          cafile=eng.cafile)
        from imagetool import upload_disk
        fixed = upload_disk(conn, image, "data", name="fixed", disk_format="qcow2").id

        rows: dict[str, dict[str, list[dict]]] = {}
        outputs: dict[tuple[str, str], str] = {}

        def timed(op: str, side: str, argv: list[str]) -> bytes:
            settle()
            fig, out = run(envs[side], argv)
            rows.setdefault(op, {"before": [], "after": []})[side].append(fig)
            return out

        def upload(side: str) -> None:
            out = timed("upload", side, ["upload", "--workers", str(args.workers), "--json",
                                         "--sd", "data", "--disk-format", "qcow2", image])
            result = json.loads(out)       # one image: an object (before), a list
            for r in result if isinstance(result, list) else [result]:
                conn.disks.remove(r["disk_id"])

        def download(side: str) -> None:
            dst = os.path.join(work, f"dl-{side}.qcow2")
            timed("download", side, ["download", "--workers", str(args.workers),
                                     "--format", "qcow2", "--force", fixed, dst])
            outputs[("download", side)] = dst

        def convert(fmt: str):
            def go(side: str) -> None:
                dst = os.path.join(work, f"conv-{side}.{fmt}")
                if os.path.exists(dst):
                    os.unlink(dst)
                timed(f"convert to {fmt}", side, ["convert", "-O", fmt, image, dst])
                outputs[(f"convert to {fmt}", side)] = dst
            return go

        def checksum(side: str) -> None:
            out = timed("checksum", side, ["checksum", "--json", image])
            outputs[("checksum", side)] = json.loads(out)["checksum"]

        def backup(side: str) -> None:
            repo = os.path.join(work, f"repo-{side}")
            shutil.rmtree(repo, ignore_errors=True)
            timed("backup create", side, ["backup", "create", "--method", "snapshot",
                                          "--workers", str(args.workers), "bench", repo])
            out = timed("backup restore", side, ["backup", "restore", repo, "bench", "--sd",
                                                 "data", "--name", f"restored-{side}",
                                                 "--workers", str(args.workers), "--json"])
            remove_vm(json.loads(out))

        def remove_vm(result: dict) -> None:
            """Remove a restored or imported VM and its disks (untimed)."""
            conn.vms.remove(result["vm_id"])
            for d in result["disks"]:
                with contextlib.suppress(Exception):
                    conn.disks.remove(d["disk_id"])

        def ova(side: str) -> None:
            path = os.path.join(work, f"bench-{side}.ova")
            if os.path.exists(path):
                os.unlink(path)
            timed("ova export", side, ["ova", "export", "--workers", str(args.workers),
                                       "bench", path])
            out = timed("ova import", side, ["ova", "import", "--workers", str(args.workers),
                                             "--json", "--sd", "data", "--clone",
                                             "--name", f"ova-{side}", path])
            remove_vm(json.loads(out))

        every = {"upload": [upload], "download": [download], "checksum": [checksum],
                 "convert": [convert("raw"), convert("qcow2")], "backup": [backup],
                 "ova": [ova]}
        ops = [op for name in args.ops.split(",") for op in every[name]]
        if "backup" in args.ops or "ova" in args.ops:
            conn.vms.attach_disk(conn.vms.add(name="bench").id, fixed, bootable=True)
        for n in range(args.repeat):
            order = ("before", "after") if n % 2 == 0 else ("after", "before")
            for op in ops:
                for side in order:
                    op(side)
                    print(".", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)

        # Same results from both revisions (untimed).
        for op in {"download", "convert to raw", "convert to qcow2"} & set(rows):
            a, b = outputs[(op, "before")], outputs[(op, "after")]
            subprocess.run(["qemu-img", "compare", "-q", a, b], check=True)
        assert outputs.get(("checksum", "before")) == outputs.get(("checksum", "after"))
        conn.close()

        print(f"\n{args.after} vs {args.before}: image {format_size(args.size)} "
              f"(half data, half holes, qcow2), {args.workers} workers, median of "
              f"{args.repeat}, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}. Outputs of both compared equal.\n")
        print("| operation | wall before s | wall after s | ratio after/before | "
              "client CPU before s | client CPU after s | ratio |")
        print("|---|---|---|---|---|---|---|")
        med = {op: {side: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                    for side, rs in sides.items()} for op, sides in rows.items()}
        for op, m in med.items():
            b, a = m["before"], m["after"]
            print(f"| {op} | {b['seconds']:.2f} | {a['seconds']:.2f} | "
                  f"{a['seconds'] / b['seconds']:.2f} | {b['client_cpu']:.2f} | "
                  f"{a['client_cpu']:.2f} | {a['client_cpu'] / b['client_cpu']:.2f} |")
        print("\nSamples (wall s, before / after):")
        for op, sides in rows.items():
            print(f"- {op}: " + " / ".join(
                ", ".join(f"{r['seconds']:.2f}" for r in sides[s]) for s in ("before", "after")))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"before": args.before, "after": args.after, "size": args.size,
                           "rows": rows}, f, indent=1)
    finally:
        if eng is not None:
            eng.stop()
        for tree in trees.values():
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
