"""Shared steps of the backup tests: a VM with disks on the local engine,
guest writes through upload transfers, and the engine's checksum of a disk."""

from __future__ import annotations

import os
import uuid

from helpers import MiB

from imagetool.engine.wait import wait_for_disk
from imagetool.transfer.session import TransferSession
from imagetool.transfer.disk_checksum import disk_checksum


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
