"""Shared steps of the backup tests: a VM with disks on the local engine,
guest writes through upload transfers, and the engine's checksum of a disk."""

from __future__ import annotations

import os
import uuid

from helpers import MiB

from imagetool.engine.wait import wait_for_backup, wait_for_disk
from imagetool.transfer.session import TransferSession
from imagetool.transfer.disk_checksum import disk_checksum


def write_layer(src, out: str, *, dirty: bool, backing: str | None, workers: int = 4):
    """Write a point's qcow2 file from a data-plane backend outside a
    transfer (an imageio daemon's NBD export with a dirty bitmap, or a
    DirtyView); (stats, extents). ``dirty``: only what the source reports
    dirty (an incremental over ``backing``). The same copy as
    ``backup.fetch.fetch_disk`` makes through ``transfer.disk.receive``: the
    listed extents into ``transfer.urls.write_file``."""
    from imagetool.transfer.disk import ListedExtents
    from imagetool.transfer.urls import write_file

    exts = list(src.extents("dirty" if dirty else "zero"))
    stats = write_file(ListedExtents(src, exts), out, format="qcow2", workers=workers,
                       backing_file=backing, backing_format="qcow2" if backing else None)
    return stats, exts


def make_vm(conn, disks=(("cow", 16 * MiB),), name=None):
    """A VM with empty disks attached; returns (vm, [disk ids])."""
    name = name or f"vm-{uuid.uuid4().hex[:8]}"
    vm = conn.vms.add(name=name)
    ids = []
    for i, (fmt, size) in enumerate(disks):
        d = conn.disks.add(name=f"{name}-d{i}", provisioned_size=size, storage_domain="data",
                           format=fmt, backup="incremental" if fmt == "cow" else None)
        wait_for_disk(conn, d.id, "ok")
        conn.vms.attach_disk(vm.id, d.id, bootable=i == 0)
        ids.append(d.id)
    return vm, ids


def ready_backup(conn, vm_id, disk_ids, from_checkpoint_id=None, timeout=600.0):
    """A VM backup of ``disk_ids`` started and waited for until ``ready``."""
    b = conn.backups.add(vm_id, disk_ids=disk_ids, from_checkpoint_id=from_checkpoint_id,
                         description="t")
    return wait_for_backup(conn, vm_id, b.id, "ready", timeout)


def checkpoint_ids(conn, vm_id):
    """The ids of the VM's checkpoints, oldest first."""
    return [c.id for c in conn.checkpoints.list(vm_id)]


def guest_io(conn, disk_id, writes=(), zeros=(), discards=()):
    """Change a disk as a guest would: ``writes`` [(offset, bytes)],
    ``zeros`` [(offset, length)] written as zero bytes, ``discards``
    [(offset, length)] sent as the data plane's zero operation."""
    s = TransferSession(conn, disk_id=disk_id, direction="upload", format="raw",
                        timeout_policy="cancel")
    with s:
        b = s.open_backend()
        for off, data in writes:
            b.write(off, data)
        for off, length in zeros:
            b.write(off, bytes(length))
        for off, length in discards:
            b.zero(off, length)
        b.flush()


def engine_checksum(conn, disk_id, algorithm):
    return disk_checksum(conn, disk_id, algorithm=algorithm)["checksum"]


def rand(n, seed):
    import random
    r = random.Random(seed)
    return r.randbytes(n)


def files_under(root):
    out = []
    for d, _, fs in os.walk(root):
        out += [os.path.join(d, f) for f in fs]
    return sorted(out)


# --- a repository built without an engine ------------------------------------------

def add_point(repo_dir, vm_id, disks, *, full=False, now=None):
    """Make one point of VM ``vm_id`` in ``repo_dir`` from guest images in
    memory, as ``backup create`` does but without an engine (fast, for
    repository tests). ``disks``: {disk id: (bytes now, bytes at the previous
    point or None)}; a disk whose previous bytes are None, or every disk
    when ``full``, is full, the others hold only the 64 KiB grains that
    changed. Returns the point's name."""
    import tempfile

    from imagetool.backup import digests as dg
    from imagetool.backup.create import point_manifest
    from imagetool.backup.destination import ChainStaged, disk_entry
    from imagetool.backup.engine_ops import VmDisk
    from imagetool.backup.fetch import Fetched
    from imagetool.backup.repo import OVF_FILE, Repository
    from imagetool.formats import open_image
    from imagetool.imageio.protocol import DEFAULT_BLOCK_SIZE
    from imagetool.server.dirty import GRAIN, DirtyView

    repo = Repository(repo_dir, create=True)
    pts = repo.points(vm_id)
    base = pts[-1] if pts and not full else None
    now = now if now is not None else (pts[-1].timestamp + 1 if pts else 1.0e9)
    name = repo.new_point_name(vm_id, now)
    staging = repo.begin(vm_id, name, {})
    with open(os.path.join(staging, OVF_FILE), "w") as f:
        f.write(f"<ovf vm='{vm_id}'/>")
    entries = []
    for disk_id, (data, before) in disks.items():
        incremental = base is not None and before is not None
        with tempfile.NamedTemporaryFile(dir=repo_dir, prefix=".guest-") as raw:
            raw.write(data)
            raw.flush()
            src = open_image(raw.name, "r", format="raw")
            backing = None
            if incremental:
                grains = [[i, i + GRAIN] for i in range(0, len(data), GRAIN)
                          if data[i:i + GRAIN] != before[i:i + GRAIN]]
                src = DirtyView(src, grains)
                backing = f"../{base.name}/{disk_id}.qcow2"
            out = os.path.join(staging, f"{disk_id}.qcow2")
            try:
                stats, _ = write_layer(src, out, dirty=incremental, backing=backing,
                                       workers=1)
            finally:
                src.close()
        with open_image(out, "r", format="qcow2") as chain:
            digests = dg.compute(chain)
        n = dg.block_count(len(data), DEFAULT_BLOCK_SIZE)
        digests = [digests[i] for i in range(n)]
        fetched = Fetched(bytes_copied=stats.bytes_copied, checksum=dg.combine(digests),
                          checksum_source="chain", digests=digests, algorithm="blake2b")
        disk = VmDisk(id=disk_id, name=f"{vm_id}-{disk_id}", format="cow",
                      provisioned_size=len(data), sparse=True, interface="virtio_scsi",
                      bootable=False, backup="incremental")
        entries.append(disk_entry(disk, staging, fetched,
                                  "incremental" if backing else "full", backing))
    manifest = point_manifest(vm_id, "vm", name, now, "snapshot", base, {}, entries,
                              ChainStaged(repo, staging).ovf_info())
    repo.commit(staging, manifest)
    return name


def point_bytes(repo_dir, vm_id, point, disk_id):
    """A point's guest data of a disk, read through its checked chain."""
    from imagetool.backup.repo import Repository

    repo = Repository(repo_dir)
    p = repo.point(vm_id, point)
    with repo.open_disk(p, disk_id) as b:
        buf = bytearray(b.size)
        b.read_into(0, memoryview(buf))
    return bytes(buf)


def kill_create_when(fe, repo, vm_id, method, ready, timeout=60.0):
    """Start ``backup create REPO VM`` against the faulty engine ``fe`` with
    image reads slowed (so the copy lasts long enough to aim a kill) and
    one connection, and ``kill -9`` it once ``ready()`` is true."""
    import signal
    import time

    from fault_proxy import Delay, Rule
    from helpers import cli_process

    fe.proxy.add_rule(Rule(method="GET", path_re=r"^/images/[^/?]+$", every=True,
                           action=Delay(0.3)))
    proc = cli_process(fe.env, "backup", "create", repo, vm_id, "--method", method,
                       "--workers", "1", "--inactivity-timeout", "1")
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the backup never got there"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def create_after_kill(fe, repo, vm_id, method):
    """The run after :func:`kill_create_when`'s: once the engine ended the
    killed run's transfer, ``backup create`` at full speed succeeds and
    says it cleaned up the interrupted backup and started over."""
    from helpers import cli_process, wait_settled

    wait_settled(fe, timeout=30)
    fe.proxy.clear_rules()
    proc = cli_process(fe.env, "backup", "create", repo, vm_id, "--method", method)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"an interrupted backup of VM {vm_id}" in err and "starting over" in err
