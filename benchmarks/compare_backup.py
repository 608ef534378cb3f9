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

Each of (a)-(c) runs for both repository formats (``--formats``): the
qcow2 chains (``chain``) and the chunk repository (``chunks``, backup
repository v2, made with the chunk store's ``init``; its incremental's
bytes on disk are what the repository grew by, and the image uploaded
against its restore is the point exported by the library). ``--chunk-size
1,4`` runs the chunk repository once per chunk size (MiB) in the same
samples, to weigh a size's dedup against its speed. The peak
memory (maximum resident set) of every ``backup create`` is recorded.

(d) Dedup (``--dedup-vms``, default 10; 0 skips it): a template disk of
``--dedup-virtual`` (2 GiB) holding ``--dedup-data`` (1 GiB) of random
data, copied by the engine to one disk per VM; each VM then writes
``--dedup-write`` (3%) of the template's data as unique data, in pieces of
``--dedup-piece`` (1 MiB) at random aligned places, as a guest's files
do; all VMs are backed up by one ``backup create`` into one chunk
repository per ``--dedup-chunk`` size (MiB): the repository's size
against the template's data (target <= 1.4x; a qcow2-chain repository
holds every VM's data: about VMs x 1). Scale it down with the flags on a
slow machine.

Every command runs in its own process, timed from outside (process start
included for all alike). Downloads and uploads verify checksums by default,
as backups and restores do. Prints a Markdown table (medians, ratios, every
sample) and optionally JSON.

    python benchmarks/compare_backup.py [--size 1G] [--repeat 3] [--change 0.01]
        [--methods snapshot,checkpoint] [--formats chain,chunks] [--chunk-size 4]
        [--workers 4]
        [--dedup-vms 10] [--dedup-virtual 2G] [--dedup-data 1G] [--dedup-write 0.03]
        [--dedup-piece 1M] [--dedup-chunk 1,4] [--dir /var/tmp] [--json FILE]
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
# Runs argv, then prints its peak memory (KiB) last on stderr; exits as it did.
RSS_PROBE = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[1:])\n"
             "_, status, usage = os.wait4(p.pid, 0)\n"
             "sys.stderr.write(f'maxrss={usage.ru_maxrss}')\n"
             "sys.exit(os.waitstatus_to_exitcode(status))\n")
PIECE = 256 << 10


def make_data(path: str, size: int, seed: int = 1) -> None:
    """Random data everywhere: no zero block, no two blocks (nor chunks) equal."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        for i in range(0, size, 8 * MiB):
            f.write(rnd.randbytes(min(8 * MiB, size - i)))


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
        seconds, out, self.last_rss = self.run(*argv)
        return seconds, out

    def run(self, *argv: str) -> tuple[float, dict | list | None, int]:
        """Run ``imagetool ARGV``; (wall seconds, its JSON output if any, its
        peak resident memory in bytes).

        The peak is wait4's ``ru_maxrss`` of the command as started by a
        small Python (``RSS_PROBE``): Linux keeps a process's peak across
        exec, so a child forked straight from this process (grown by the
        images it made) would report this process's size."""
        cmd = [sys.executable, "-S", "-c", RSS_PROBE, sys.executable, "-m", "imagetool", *argv]
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            start = time.monotonic()
            p = subprocess.run(cmd, stdout=out, stderr=err, text=True, env=self.env)
            seconds = time.monotonic() - start
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        stderr, _, rss = stderr.rpartition("maxrss=")
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {stderr[-2000:]}")
        doc = json.loads(stdout) if "--json" in argv and stdout.strip() else None
        return seconds, doc, int(rss) * 1024

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
               n: int, fmt: str = "chain") -> dict:
        repo = os.path.join(self.work, f"repo-{method}-{n}")
        down = os.path.join(self.work, "download.qcow2")
        flat = os.path.join(self.work, "flat.qcow2")
        chunk_mib = 0 if fmt == "chain" else int(fmt[len("chunks-"):-1])   # chunks-<MiB>M
        if chunk_mib:
            init_chunks(repo, chunk_mib * MiB)
        create = ("backup", "create", repo, vm_id, "--method", method,
                  "--workers", self.workers, "--json")
        swap = n % 2 == 1
        r: dict = {"method": method, "format": fmt, "sample": n}

        # (a) full point vs download
        for step in (("full", "download") if swap else ("download", "full")):
            if step == "download":
                r["download_s"], _ = self.cli("download", disk_id, down, "--format", "qcow2",
                                              "--workers", self.workers)
                os.unlink(down)
            else:
                r["full_s"], out = self.cli(*create)
                r["full_rss"] = self.last_rss
                assert out[0]["mode"] == "full", out
                r["full_bytes"] = out[0]["bytes"]

        # (b) incremental after changing a fraction of the disk
        # New data each sample and format: never bytes the disk already holds.
        r["changed"] = self.change(disk_id, size, fraction, seed=1000 + 16 * n + chunk_mib)
        before = tree_size(repo)
        r["inc_s"], out = self.cli(*create)
        r["inc_rss"] = self.last_rss
        inc = out[0]
        assert inc["mode"] == "incremental", inc
        r["inc_moved"] = inc["bytes"]
        if chunk_mib:
            r["inc_on_disk"] = tree_size(repo) - before
        else:
            r["inc_on_disk"] = sum(os.path.getsize(os.path.join(inc["path"], f))
                                   for f in os.listdir(inc["path"]))

        # (c) restore of that point vs upload of the same guest data
        if chunk_mib:
            export_chunks(repo, vm_id, inc["point"], flat)
        else:
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", inc["disks"][0]["path"],
                            flat], check=True)
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

    def forget(self, method: str, vm_id: str, repo: str, remove: bool = True) -> None:
        """Drop the engine-side base of the chain, then the repository."""
        from imagetool.backup import engine_ops as ops
        from imagetool.engine.lifecycle import remove_snapshot
        if method == "snapshot":
            for sid in snapshot_ids(repo, vm_id):
                if sid and ops.snapshot_exists(self.conn, vm_id, sid):
                    remove_snapshot(self.conn, vm_id, sid)
        else:
            for cp in reversed([c.id for c in self.conn.checkpoints.list(vm_id)]):
                ops.remove_checkpoint(self.conn, vm_id, cp)
        if remove:
            shutil.rmtree(repo)


    def dedup(self, a: argparse.Namespace) -> list[dict]:
        """(d): VMs cloned from one template, all backed up into one chunk
        repository per chunk size; the repository's size against the
        template's data, and the create's time and peak memory."""
        src = os.path.join(self.work, "template.raw")
        with open(src, "wb") as f:
            f.truncate(a.dedup_virtual)
        # The data in 8 MiB runs, one every 16 MiB while they fit, then packed.
        if a.dedup_data > a.dedup_virtual:
            raise SystemExit("--dedup-data is larger than --dedup-virtual")
        rnd = random.Random(7)
        with open(src, "r+b") as f:
            placed, i = 0, 0
            while placed < a.dedup_data:
                n = min(8 * MiB, a.dedup_data - placed)
                f.seek(i * 16 * MiB if a.dedup_data * 2 <= a.dedup_virtual else i * 8 * MiB)
                f.write(rnd.randbytes(n))
                placed += n
                i += 1
        _, out = self.cli("upload", src, "--sd", "data", "--disk-format", "qcow2",
                          "--name", "bench-template", "--workers", self.workers, "--json")
        os.unlink(src)
        template = (out[0] if isinstance(out, list) else out)["disk_id"]
        from imagetool.engine.wait import wait_for_disk
        from imagetool.transfer.session import TransferSession
        vms = []
        rnd = random.Random(11)
        pieces = max(1, round(a.dedup_data * a.dedup_write / a.dedup_piece))
        for k in range(a.dedup_vms):
            disk = self.conn.disks.copy(template, "data", name=f"bench-clone-{k}")
            disk_id = disk.id if disk is not None else self.conn.disks.find(
                f"bench-clone-{k}").id
            wait_for_disk(self.conn, disk_id, "ok")
            vm = self.conn.vms.add(name=f"bench-clone-{k}")
            self.conn.vms.attach_disk(vm.id, disk_id, bootable=True)
            s = TransferSession(self.conn, disk_id=disk_id, direction="upload", format="raw",
                                timeout_policy="cancel")
            with s:
                b = s.open_backend()
                for off in rnd.sample(range(a.dedup_virtual // a.dedup_piece), pieces):
                    b.write(off * a.dedup_piece, rnd.randbytes(a.dedup_piece))
                b.flush()
            vms.append(vm.id)
        rows = []
        for cs in a.dedup_chunk:
            repo = os.path.join(self.work, f"dedup-{cs}")
            init_chunks(repo, cs * MiB)
            seconds, _, rss = self.run("backup", "create", repo, *vms, "--method", "snapshot",
                                       "--workers", self.workers, "--json")
            rows.append({"chunk_mib": cs, "vms": len(vms), "seconds": seconds, "rss": rss,
                         "repo_bytes": tree_size(repo), "template_data": a.dedup_data,
                         "unique_writes": pieces * a.dedup_piece * len(vms)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            for vm_id in vms:
                self.forget("snapshot", vm_id, repo, remove=False)
            shutil.rmtree(repo)
        return rows


def init_chunks(repo: str, chunk_size: int = 4 * MiB) -> None:
    from imagetool.backup.store import ChunkStore, open_storage
    ChunkStore.init(open_storage(repo, create=True), chunk_size=chunk_size)


def export_chunks(repo: str, vm_id: str, point: str, out: str) -> None:
    """A chunk repository's point exported as one qcow2 image at ``out`` (untimed)."""
    from imagetool.backup.store import ChunkStore, export_point, load_index, open_storage
    store = ChunkStore.open(open_storage(repo))
    ix = load_index(store, vm_id, point)
    outdir = out + ".d"
    [path] = export_point(store, ix, outdir, "qcow2")
    os.rename(path, out)
    shutil.rmtree(outdir)


def snapshot_ids(repo: str, vm_id: str) -> list[str]:
    """The engine snapshots a repository's points of the VM name."""
    from imagetool.backup.store import ChunkStore, list_points, load_index, open_storage
    if os.path.exists(os.path.join(repo, "config")):
        store = ChunkStore.open(open_storage(repo))
        return [(load_index(store, v, n).manifest.get("engine") or {}).get("snapshot_id")
                for v, n in list_points(store, vm_id)]
    out = []
    for d in os.listdir(os.path.join(repo, vm_id)):
        try:
            with open(os.path.join(repo, vm_id, d, "manifest.json")) as f:
                out.append(json.load(f)["engine"].get("snapshot_id"))
        except (OSError, ValueError):
            continue
    return out


def tree_size(root: str) -> int:
    """Bytes of the files under ``root`` (their lengths)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"),
                    help="data on the disk (its virtual size); the issue's figure is 8G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--change", type=float, default=0.01,
                    help="fraction of the disk rewritten before the incremental")
    ap.add_argument("--methods", default="snapshot,checkpoint")
    ap.add_argument("--formats", default="chain,chunks",
                    help="repository formats: chain (qcow2 chains), chunks (v2)")
    ap.add_argument("--chunk-size", default="4",
                    help="chunk sizes (MiB) of the chunk repository, e.g. 1,4: one "
                         "format per size in every sample")
    ap.add_argument("--dedup-vms", type=int, default=10, help="0: no dedup benchmark")
    ap.add_argument("--dedup-virtual", type=parse_size, default=parse_size("2G"))
    ap.add_argument("--dedup-data", type=parse_size, default=parse_size("1G"))
    ap.add_argument("--dedup-write", type=float, default=0.03)
    ap.add_argument("--dedup-piece", type=parse_size, default=parse_size("1M"))
    ap.add_argument("--dedup-chunk", default="1,4", help="chunk sizes (MiB) to compare")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/var/tmp"),
                    help="directory for the engine, images and repositories")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    methods = a.methods.split(",")
    formats = [f for fmt in a.formats.split(",") for f in (
        [f"chunks-{int(cs)}M" for cs in a.chunk_size.split(",")] if fmt == "chunks" else [fmt])]
    a.dedup_chunk = [int(x) for x in a.dedup_chunk.split(",")]
    dedup: list[dict] = []
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
                for fmt in (formats if n % 2 == 0 else formats[::-1]):
                    r = bench.sample(m, *vms[m], a.size, a.change, n, fmt)
                    rows.append(r)
                    print(json.dumps(r), file=sys.stderr, flush=True)
        if a.dedup_vms:
            dedup = bench.dedup(a)
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
    if dedup:
        print(f"\n(d) dedup: {dedup[0]['vms']} VMs cloned from a template of "
              f"{format_size(a.dedup_virtual)} with {format_size(a.dedup_data)} of data, "
              f"each writing {a.dedup_write:.0%} of it in {format_size(a.dedup_piece)} "
              "pieces, all in one repository\n")
        print(dedup_table(dedup))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"size": a.size, "change": a.change, "repeat": a.repeat,
                       "load": load, "runs": rows, "dedup": dedup}, f, indent=2)


def dedup_table(rows: list[dict]) -> str:
    out = ["| chunk size | repository | / template data | target | unique writes | "
           "create time | peak RSS |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['chunk_mib']} MiB | {format_size(r['repo_bytes'])} | "
                   f"{r['repo_bytes'] / r['template_data']:.2f}x | <= 1.4x | "
                   f"{format_size(r['unique_writes'])} | {r['seconds']:.1f} s | "
                   f"{format_size(r['rss'])} |")
    return "\n".join(out)


def table(rows: list[dict], size: int) -> str:
    """Markdown: per method, each comparison with its target, medians and samples."""
    out = ["| method | comparison | backup side | plain side | ratio | target | samples |",
           "|---|---|---|---|---|---|---|"]
    mib_s = lambda s: f"{size / MiB / s:.0f} MiB/s"  # noqa: E731
    for method, fmt in dict.fromkeys((r["method"], r.get("format", "chain")) for r in rows):
        rs = [r for r in rows if r["method"] == method and r.get("format", "chain") == fmt]
        method = f"{method}, {fmt}"
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
        rss = [max(r["full_rss"], r["inc_rss"]) for r in rs]
        out.append(
            f"| {method} | (e) peak memory of backup create | {format_size(max(rss))} | | | "
            f"< 300 MiB | {', '.join(format_size(x) for x in rss)} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
