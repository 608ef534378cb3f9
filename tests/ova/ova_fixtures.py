"""Shared by the OVA tests: a VM with a raw and a qcow2 disk, a second engine."""

from __future__ import annotations

import os

from helpers import ENGINE_PASSWORD, MiB, make_raw, qemu_img, qemu_io

SD = "data"


def second_engine(data_dir: str):
    """Another local engine (the import target of a round trip)."""
    from imagetool.server.local import LocalEngine
    eng = LocalEngine(data_dir, password=ENGINE_PASSWORD, finished_ttl=60.0)
    eng.start()
    return eng


def connect(engine):
    from imagetool.engine import Connection
    from imagetool.server.local import LocalEngine
    return Connection(engine.url, username=LocalEngine.username, password=ENGINE_PASSWORD,
                      cafile=engine.cafile)


def make_sources(d: str, size: int = 8 * MiB) -> dict[str, str]:
    """A raw image (data, holes, a zeroed range) and a qcow2 one (data, zero
    clusters, unallocated clusters)."""
    raw = os.path.join(d, "raw.img")
    make_raw(raw, size, [(0, MiB), (3 * MiB, 512 * 1024), (size - 64 * 1024, 64 * 1024)],
             seed=3)
    with open(raw, "r+b") as f:          # an explicitly zeroed (allocated) range
        f.seek(5 * MiB)
        f.write(bytes(MiB))
    qcow = os.path.join(d, "cow.qcow2")
    qemu_img("create", "-f", "qcow2", qcow, str(size + 3 * MiB))
    mb = size // MiB
    qemu_io(qcow, "write -P 0x5a 1M 2M", "write -z 3M 1M", f"write -P 0x11 {mb - 1}M 64k",
            f"write -P 0x22 {mb + 2}M 512k")
    return {"raw": raw, "qcow2": qcow}


def make_vm(conn, sources: dict[str, str], name: str):
    """Upload the sources as disks and attach them to a new VM; (vm, disks)."""
    from imagetool import upload_disk
    disks = {}
    for kind, path in sources.items():
        disks[kind] = upload_disk(conn, path, SD, name=f"{name}-{kind}")
    vm = conn.vms.add(name=name)
    for i, d in enumerate(disks.values()):
        conn.vms.attach_disk(vm.id, d.id, bootable=i == 0)
    return vm, disks
