"""VM backups against plain transfers of the same disk, same engine, same run.

A local engine (``imagetool serve`` on loopback, TLS) holds, per backup
method (``snapshot``, ``checkpoint``), a VM with one qcow2 disk whose
whole virtual size (default 1 GiB; ``--size 8G`` for the issue's figure)
is random data, uploaded with ``imagetool upload``. Each sample, methods
alternating, and within a pair the order swapped every sample so drifting
load hits both alike:

(a) ``imagetool backup create`` into an empty repository (a full point)
    against ``imagetool download DISK --format qcow2`` of the same disk;
(b) ``--change`` (default 1%) of the disk rewritten with new random data
    in 256 KiB pieces spread evenly, then ``backup create`` again (an
    incremental point): the data it moved and the bytes the point takes on
    disk (qcow2 layer, manifest, digests, OVF) against the changed bytes,
    and its time against the full point's;
(c) ``imagetool backup restore`` of that incremental point (a new disk
    and VM, checksums compared with the manifest) against ``imagetool
    upload`` of the same guest data (the chain flattened to one qcow2 with
    ``qemu-img convert``, untimed) to a qcow2 disk.

Every command runs in its own process, timed from outside (process start
included for all alike). Downloads and uploads verify checksums by default,
as backups and restores do. Prints a Markdown table (medians, ratios, every
sample) and optionally JSON.

    python benchmarks/compare_backup.py [--size 1G] [--repeat 3] [--change 0.01]
        [--methods snapshot,checkpoint] [--workers 4] [--dir /var/tmp] [--json FILE]
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
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from compare_verify import start_engine  # noqa: E402
from imagetool.units import format_size, parse_size  # noqa: E402

MiB = 1 << 20
PIECE = 256 << 10


def make_data(path: str, size: int) -> None:
    """Random-looking data everywhere (no zero block, no two blocks equal)."""
    chunk = random.Random(1).randbytes(8 * MiB)
    with open(path, "wb") as f:
        for i in range(0, size, len(chunk)):
            n = min(len(chunk), size - i)
            f.write((i // len(chunk)).to_bytes(8, "little") + chunk[8:n])


class Bench:
    def __init__(self, info: dict, work: str, workers: int):
        self.info = info
        self.work = work
        self.workers = str(workers)
        self.env = dict(os.environ, PYTHONPATH=ROOT, IMAGETOOL_ENGINE_URL=info["url"],
                        IMAGETOOL_USERNAME=info.get("username", "admin@internal"),
                        IMAGETOOL_PASSWORD=info["password"],
                        IMAGETOOL_CAFILE=info.get("cafile") or "",
                        IMAGETOOL_HOME=os.path.join(work, "home"))
        for name in ("IMAGETOOL_CONFIG", "IMAGETOOL_PASSWORD_FILE", "IMAGETOOL_INSECURE"):
            self.env.pop(name, None)
        from imagetool.engine import Connection
        self.conn = Connection(info["url"], username=self.env["IMAGETOOL_USERNAME"],
                               password=info["password"], cafile=info.get("cafile"))

    def cli(self, *argv: str) -> tuple[float, dict | list | None]:
        """Run ``imagetool ARGV``; (wall seconds, its JSON output if any)."""
        cmd = [sys.executable, "-m", "imagetool", *argv]
        start = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        seconds = time.monotonic() - start
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {p.stderr[-2000:]}")
        out = json.loads(p.stdout) if "--json" in argv and p.stdout.strip() else None
        return seconds, out

    def make_vm(self, method: str, src: str) -> tuple[str, str]:
        _, out = self.cli("upload", src, "--sd", "data", "--disk-format", "qcow2",
                          "--name", f"bench-{method}", "--workers", self.workers, "--json")
        disk_id = (out[0] if isinstance(out, list) else out)["disk_id"]
        vm = self.conn.vms.add(name=f"bench-{method}")
        self.conn.vms.attach_disk(vm.id, disk_id, bootable=True)
        return vm.id, disk_id

    def change(self, disk_id: str, size: int, fraction: float, seed: int) -> int:
        """Rewrite ``fraction`` of the disk as a guest would; return the bytes."""
        from imagetool.transfer.session import TransferSession
        pieces = max(1, round(size * fraction / PIECE))
        step = size // pieces // PIECE * PIECE
        rnd = random.Random(seed)
        s = TransferSession(self.conn, disk_id=disk_id, direction="upload", format="raw",
                            timeout_policy="cancel")
        with s:
            b = s.open_backend()
            for i in range(pieces):
                b.write(i * step, rnd.randbytes(PIECE))
            b.flush()
        return pieces * PIECE

    def sample(self, method: str, vm_id: str, disk_id: str, size: int, fraction: float,
               n: int) -> dict:
        repo = os.path.join(self.work, f"repo-{method}-{n}")
        down = os.path.join(self.work, "download.qcow2")
        flat = os.path.join(self.work, "flat.qcow2")
        create = ("backup", "create", vm_id, repo, "--method", method,
                  "--workers", self.workers, "--json")
        swap = n % 2 == 1
        r: dict = {"method": method, "sample": n}

        # (a) full point vs download
        for step in (("full", "download") if swap else ("download", "full")):
            if step == "download":
                r["download_s"], _ = self.cli("download", disk_id, down, "--format", "qcow2",
                                              "--workers", self.workers)
                os.unlink(down)
            else:
                r["full_s"], out = self.cli(*create)
                assert out[0]["mode"] == "full", out
                r["full_bytes"] = out[0]["bytes"]

        # (b) incremental after changing a fraction of the disk
        r["changed"] = self.change(disk_id, size, fraction, seed=1000 + n)
        r["inc_s"], out = self.cli(*create)
        inc = out[0]
        assert inc["mode"] == "incremental", inc
        r["inc_moved"] = inc["bytes"]
        r["inc_on_disk"] = sum(os.path.getsize(os.path.join(inc["path"], f))
                               for f in os.listdir(inc["path"]))

        # (c) restore of that point vs upload of the same guest data
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", inc["disks"][0]["path"], flat],
                       check=True)
        for step in (("upload", "restore") if swap else ("restore", "upload")):
            if step == "upload":
                r["upload_s"], out = self.cli("upload", flat, "--sd", "data", "--disk-format",
                                              "qcow2", "--name", f"bench-up-{n}",
                                              "--workers", self.workers, "--json")
                # verified against the file by the upload itself (exit 1 if not)
                up = out[0] if isinstance(out, list) else out
                self.conn.disks.remove(up["disk_id"])
            else:
                r["restore_s"], out = self.cli("backup", "restore", repo, vm_id, "--sd", "data",
                                               "--name", f"bench-restored-{n}",
                                               "--workers", self.workers, "--json")
                self.conn.vms.remove(out["vm_id"])
                for d in out["disks"]:
                    try:
                        self.conn.disks.remove(d["disk_id"])
                    except Exception:
                        pass
        os.unlink(flat)
        self.forget(method, vm_id, repo)
        return r

    def forget(self, method: str, vm_id: str, repo: str) -> None:
        """Drop the engine-side base of the chain, then the repository."""
        from imagetool.backup import engine_ops as ops
        if method == "snapshot":
            for d in os.listdir(os.path.join(repo, vm_id)):
                try:
                    with open(os.path.join(repo, vm_id, d, "manifest.json")) as f:
                        sid = json.load(f)["engine"].get("snapshot_id")
                except (OSError, ValueError):
                    continue
                if sid and ops.snapshot_exists(self.conn, vm_id, sid):
                    ops.remove_snapshot(self.conn, vm_id, sid)
        else:
            for cp in ops.checkpoint_ids(self.conn, vm_id):
                self.conn.request("DELETE", f"vms/{vm_id}/checkpoints/{cp}")
        shutil.rmtree(repo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"),
                    help="data on the disk (its virtual size); the issue's figure is 8G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--change", type=float, default=0.01,
                    help="fraction of the disk rewritten before the incremental")
    ap.add_argument("--methods", default="snapshot,checkpoint")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"),
                    help="directory for the engine, images and repositories")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    methods = a.methods.split(",")
    work = tempfile.mkdtemp(prefix="imagetool-bench-backup-", dir=a.dir)
    proc = None
    rows: list[dict] = []
    try:
        src = os.path.join(work, "data.raw")
        make_data(src, a.size)
        proc, info = start_engine(os.path.join(work, "engine"))
        bench = Bench(info, work, a.workers)
        vms = {m: bench.make_vm(m, src) for m in methods}
        os.unlink(src)
        for n in range(a.repeat):
            for m in (methods if n % 2 == 0 else methods[::-1]):
                r = bench.sample(m, *vms[m], a.size, a.change, n)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
        bench.conn.close()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(f"Disk of {format_size(a.size)} of data, {a.change:.0%} changed, "
          f"{a.workers} workers, median of {a.repeat}, {os.cpu_count()} CPUs, "
          f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    print(table(rows, a.size))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"size": a.size, "change": a.change, "repeat": a.repeat,
                       "load": load, "runs": rows}, f, indent=2)


def table(rows: list[dict], size: int) -> str:
    """Markdown: per method, each comparison with its target, medians and samples."""
    out = ["| method | comparison | backup side | plain side | ratio | target | samples |",
           "|---|---|---|---|---|---|---|"]
    mib_s = lambda s: f"{size / MiB / s:.0f} MiB/s"  # noqa: E731
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        full = [r["download_s"] / r["full_s"] for r in rs]
        out.append(
            f"| {method} | (a) full point vs download (qcow2) | {med('full_s'):.2f} s "
            f"({mib_s(med('full_s'))}) | {med('download_s'):.2f} s "
            f"({mib_s(med('download_s'))}) | {statistics.median(full):.2f}x speed | >= 0.9x | "
            f"{', '.join(f'{x:.2f}' for x in full)} |")
        moved = [r["inc_moved"] / r["changed"] for r in rs]
        disk = [r["inc_on_disk"] / r["changed"] for r in rs]
        out.append(
            f"| {method} | (b) incremental bytes vs changed | moved {format_size(med('inc_moved'))}"
            f", point on disk {format_size(med('inc_on_disk'))} | changed "
            f"{format_size(med('changed'))} | {statistics.median(moved):.3f}x moved, "
            f"{statistics.median(disk):.3f}x on disk | <= 1.1x | "
            f"{', '.join(f'{x:.3f}' for x in disk)} |")
        inc = [r["inc_s"] / r["full_s"] for r in rs]
        out.append(
            f"| {method} | (b) incremental time vs full point | {med('inc_s'):.2f} s | "
            f"{med('full_s'):.2f} s | {statistics.median(inc):.3f}x time | < 0.2x | "
            f"{', '.join(f'{x:.3f}' for x in inc)} |")
        rest = [r["upload_s"] / r["restore_s"] for r in rs]
        out.append(
            f"| {method} | (c) restore vs upload (qcow2) | {med('restore_s'):.2f} s "
            f"({mib_s(med('restore_s'))}) | {med('upload_s'):.2f} s "
            f"({mib_s(med('upload_s'))}) | {statistics.median(rest):.2f}x speed | >= 0.9x | "
            f"{', '.join(f'{x:.2f}' for x in rest)} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
