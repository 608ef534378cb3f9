"""download: --shallow with --resume, and download_disk's ``snapshot=`` keyword.

A local engine (the ``engine`` fixture of tests/conftest.py) holds a VM
disk with two snapshots; the middle layer has data of its own on top of the
base. The expected contents come from qemu-img/qemu-io on the engine's own
volume files, never from our code.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess

import pytest

from helpers import MiB, make_pattern_image, qemu_img, qemu_io, wait_for
from imagetool.transfer.download import download_disk
from imagetool.transfer.journal import JournalError

sdk = pytest.importorskip("ovirtsdk4")
types = sdk.types
client = pytest.importorskip("ovirt_imageio.client")

SIZE = 4 * MiB
# The middle layer's own writes (offset, length, pattern), cluster aligned.
MIDDLE_WRITES = [(1536 * 1024, 64 * 1024, 0x55), (3 * MiB, 256 * 1024, 0x57)]


def _wait_phase(connection, tid, phase):
    svc = connection.system_service().image_transfers_service().image_transfer_service(tid)
    return wait_for(svc.get, lambda t: t.phase.value == phase)


@pytest.fixture(scope="module")
def chain(connection, engine, tmp_path_factory):
    """(disk id, middle snapshot id, middle layer's volume file, base image)."""
    tmp = tmp_path_factory.mktemp("chain")
    system = connection.system_service()
    src = make_pattern_image(str(tmp / "base.qcow2"), "qcow2", SIZE)
    disk = system.disks_service().add(types.Disk(
        name="dlfix", format=types.DiskFormat.COW, provisioned_size=SIZE,
        storage_domains=[types.StorageDomain(name="data")]))
    transfers = system.image_transfers_service()
    t = transfers.add(types.ImageTransfer(disk=types.Disk(id=disk.id),
                                          direction=types.ImageTransferDirection.UPLOAD,
                                          format=types.DiskFormat.RAW))
    t = _wait_phase(connection, t.id, "transferring")
    client.upload(src, t.transfer_url, engine.cafile)
    transfers.image_transfer_service(t.id).finalize()
    _wait_phase(connection, t.id, "finished_success")
    vm = system.vms_service().add(types.Vm(
        name="vm-dlfix", cluster=types.Cluster(name="Default"),
        template=types.Template(name="Blank")))
    vm_service = system.vms_service().vm_service(vm.id)
    vm_service.disk_attachments_service().add(types.DiskAttachment(
        disk=types.Disk(id=disk.id), interface=types.DiskInterface.VIRTIO_SCSI,
        bootable=True, active=True))
    disk_service = system.disks_service().disk_service(disk.id)

    def active_volume():
        d = disk_service.get()
        return os.path.join(engine.data_dir, d.storage_domains[0].id, "images",
                            disk.id, d.image_id)

    vm_service.snapshots_service().add(types.Snapshot(description="s1"))
    qemu_io(active_volume(),
            *[f"write -P {p:#x} {o} {n}" for o, n, p in MIDDLE_WRITES])
    middle_volume = active_volume()
    vm_service.snapshots_service().add(types.Snapshot(description="s2"))
    qemu_io(active_volume(), "write -P 0x66 0 64k")
    layers = disk_service.disk_snapshots_service().list()
    by_parent = {s.parent.id if s.parent else None: s for s in layers}
    middle = by_parent[by_parent[None].id]
    assert os.path.basename(middle_volume) == middle.id
    yield disk.id, middle.id, middle_volume, src
    vm_service.remove()


def _data_ranges(path: str, fmt: str) -> list[tuple[int, int]]:
    """Merged (start, length) of data qemu-img map sees in this file itself."""
    out = []
    for m in json.loads(qemu_img("map", "--output=json", "-f", fmt, path)):
        if not m["data"] or m.get("depth", 0) != 0:
            continue
        if out and out[-1][0] + out[-1][1] == m["start"]:
            out[-1] = (out[-1][0], out[-1][1] + m["length"])
        else:
            out.append((m["start"], m["length"]))
    return out


def _same(a: str, b: str) -> bool:
    res = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", a, b],
                         capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode == 0


def _leftovers(path: str) -> list[str]:
    return [p for p in (path + ".imagetool-journal", path + ".imagetool-part")
            if os.path.exists(p)]


@pytest.mark.slow
def test_shallow_download_same_with_and_without_resume(conn, chain, tmp_path):
    disk_id, middle, layer, _ = chain
    plain, resumed = str(tmp_path / "plain.raw"), str(tmp_path / "resumed.raw")
    download_disk(conn, disk_id, plain, snapshot=middle, shallow=True)
    r = download_disk(conn, disk_id, resumed, snapshot=middle, shallow=True, resume=True)
    assert r.verification.verified
    assert _same(plain, resumed)
    # Only the layer's own clusters hold data, in both files.
    layer_data = _data_ranges(layer, "qcow2")
    assert layer_data == [(o, n) for o, n, _ in MIDDLE_WRITES]
    assert _data_ranges(plain, "raw") == layer_data
    assert _data_ranges(resumed, "raw") == layer_data
    assert not _leftovers(resumed)
    # Without --shallow the base's data comes too (the option matters here).
    full = str(tmp_path / "full.raw")
    download_disk(conn, disk_id, full, snapshot=middle, resume=True)
    assert not _same(full, resumed)


@pytest.mark.slow
def test_cli_shallow_resume(conn, chain, tmp_path, engine_env, cli):
    disk_id, middle, layer, _ = chain
    paths = {}
    for extra in ([], ["--resume"]):
        dest = str(tmp_path / f"cli{len(extra)}.raw")
        code, out, err = cli("download", disk_id, dest, "--snapshot", middle, "--shallow",
                             "--json", *extra)
        assert code == 0, err
        assert json.loads(out)[0]["verified"] is True
        paths[bool(extra)] = dest
    assert _same(paths[False], paths[True])
    assert _data_ranges(paths[True], "raw") == _data_ranges(layer, "qcow2")


@pytest.mark.slow
def test_resume_keeps_the_journals_shallow_setting(conn, chain, tmp_path):
    disk_id, middle, layer, _ = chain
    dest = str(tmp_path / "interrupted.raw")

    def die(_n):
        raise RuntimeError("client died")

    with pytest.raises(RuntimeError, match="client died"):
        download_disk(conn, disk_id, dest, snapshot=middle, shallow=True, resume=True,
                      progress=die)
    jpath, part = dest + ".imagetool-journal", dest + ".imagetool-part"
    with open(jpath) as f:
        assert json.load(f)["shallow"] is True
    assert os.path.exists(part) and not os.path.exists(dest)

    # A different shallow setting is refused and leaves the journal as it was.
    with pytest.raises(JournalError, match="with --shallow") as e:
        download_disk(conn, disk_id, dest, snapshot=middle, resume=True)
    assert jpath in str(e.value) and part in str(e.value)
    assert os.path.exists(jpath) and os.path.exists(part)

    download_disk(conn, disk_id, dest, snapshot=middle, shallow=True, resume=True)
    assert not _leftovers(dest)
    assert _data_ranges(dest, "raw") == _data_ranges(layer, "qcow2")
    ref = str(tmp_path / "ref.raw")
    download_disk(conn, disk_id, ref, snapshot=middle, shallow=True)
    assert _same(dest, ref)


def test_journal_of_a_full_download_refuses_shallow(conn, chain, tmp_path):
    """A journal without the key (older versions) was a full download."""
    disk_id, middle, _, _ = chain
    dest = str(tmp_path / "old.raw")

    def die(_n):
        raise RuntimeError("client died")

    with pytest.raises(RuntimeError):
        download_disk(conn, disk_id, dest, snapshot=middle, resume=True, progress=die)
    jpath = dest + ".imagetool-journal"
    with open(jpath) as f:
        data = json.load(f)
    assert data["shallow"] is False
    del data["shallow"]
    with open(jpath, "w") as f:
        json.dump(data, f)
    with pytest.raises(JournalError, match="without --shallow"):
        download_disk(conn, disk_id, dest, snapshot=middle, shallow=True, resume=True)


@pytest.mark.slow
def test_snapshot_keyword_and_its_alias(conn, chain, tmp_path):
    disk_id, middle, _, base = chain
    # Guest data as of the middle snapshot: the base plus the middle's writes.
    expected = str(tmp_path / "expected.qcow2")
    shutil.copy(base, expected)
    qemu_io(expected, *[f"write -P {p:#x} {o} {n}" for o, n, p in MIDDLE_WRITES])
    a, b, c = (str(tmp_path / f"{n}.raw") for n in "abc")
    download_disk(conn, disk_id, a, snapshot=middle)
    download_disk(conn, disk_id, b, snapshot_id=middle)

    class Snap:
        id = middle
    download_disk(conn, disk_id, c, snapshot=Snap())
    for got in (a, b, c):
        res = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", got,
                              expected], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
    active = str(tmp_path / "active.raw")
    download_disk(conn, disk_id, active)
    assert not _same(a, active)          # the keyword did pick the snapshot
    with pytest.raises(TypeError, match="not two different"):
        download_disk(conn, disk_id, str(tmp_path / "x.raw"), snapshot=middle,
                      snapshot_id=disk_id)
    assert not os.path.exists(tmp_path / "x.raw")


def test_top_level_signature_names_snapshot():
    import imagetool

    params = inspect.signature(imagetool.download_disk).parameters
    assert params["snapshot"].default is None
    assert params["format"].default == "raw"
    assert "snapshot_id" in params
