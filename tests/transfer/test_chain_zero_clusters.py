"""Shallow downloads of a snapshot chain keep the zeros a layer writes.

A layer that zeroes a range of its backing file holds allocated zero
clusters there. Downloaded as one qcow2 layer with a backing file, those
ranges must become zero clusters too: skipped, the base's data shows
through when the chain is read (ovirt-imageio's client download writes
zero extents when there is a backing file: ``zero = backing_file is not
None``). Without a backing file zeros are still skipped (holes read as
zeros). The local engine (the `engine` fixture in tests/conftest.py) holds the chain; the
expected results come from qemu-img, never from our own readers.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from helpers import MiB, qemu_img, wait_for
from imagetool.imageio.client import ImageioClient
from imagetool.transfer.download import download_disk

sdk = pytest.importorskip("ovirtsdk4")
types = sdk.types
client = pytest.importorskip("ovirt_imageio.client")

SIZE = 1 * MiB
KiB = 1024
# The middle layer's own changes over a base of 0xaa everywhere.
ZEROED = (0, 256 * KiB)                 # PATCH zero: allocated zero clusters
ZERO_DATA = (768 * KiB, 64 * KiB)       # PUT of zero bytes: data reading as zeros
DATA = (512 * KiB, 64 * KiB, 0xbb)      # PUT of data


def _wait_phase(connection, tid, phase):
    svc = connection.system_service().image_transfers_service().image_transfer_service(tid)
    return wait_for(svc.get, lambda t: t.phase.value == phase)


def _transfer(connection, disk_id, direction, snapshot=None):
    transfers = connection.system_service().image_transfers_service()
    kw = {"snapshot": types.DiskSnapshot(id=snapshot)} if snapshot else \
        {"disk": types.Disk(id=disk_id)}
    t = transfers.add(types.ImageTransfer(direction=direction,
                                          format=types.DiskFormat.RAW, **kw))
    return _wait_phase(connection, t.id, "transferring")


def _finalize(connection, tid):
    svc = connection.system_service().image_transfers_service().image_transfer_service(tid)
    svc.finalize()
    _wait_phase(connection, tid, "finished_success")


@pytest.fixture(scope="module")
def chain(connection, engine, tmp_path_factory):
    """(disk id, base snapshot id, middle snapshot id)."""
    tmp = tmp_path_factory.mktemp("zchain")
    system = connection.system_service()
    src = str(tmp / "aa.raw")
    with open(src, "wb") as f:
        f.write(b"\xaa" * SIZE)
    disk = system.disks_service().add(types.Disk(
        name="zchain", format=types.DiskFormat.COW, provisioned_size=SIZE,
        storage_domains=[types.StorageDomain(name="data")]))
    disk_service = system.disks_service().disk_service(disk.id)
    _wait_disk_ok(disk_service)
    t = _transfer(connection, disk.id, types.ImageTransferDirection.UPLOAD)
    client.upload(src, t.transfer_url, engine.cafile)
    _finalize(connection, t.id)
    vm = system.vms_service().add(types.Vm(
        name="vm-zchain", cluster=types.Cluster(name="Default"),
        template=types.Template(name="Blank")))
    vm_service = system.vms_service().vm_service(vm.id)
    vm_service.disk_attachments_service().add(types.DiskAttachment(
        disk=types.Disk(id=disk.id), interface=types.DiskInterface.VIRTIO_SCSI,
        bootable=True, active=True))
    vm_service.snapshots_service().add(types.Snapshot(description="s1"))
    _wait_disk_ok(disk_service)

    # The new active layer: zero clusters, zero bytes and data, written
    # through a transfer of that layer (the data plane's PATCH zero and PUT).
    t = _transfer(connection, disk.id, types.ImageTransferDirection.UPLOAD)
    with ImageioClient(t.transfer_url, cafile=engine.cafile) as c:
        c.zero(*ZEROED)
        c.write(ZERO_DATA[0], bytes(ZERO_DATA[1]))
        c.write(DATA[0], bytes([DATA[2]]) * DATA[1])
        c.flush()
    _finalize(connection, t.id)
    vm_service.snapshots_service().add(types.Snapshot(description="s2"))
    _wait_disk_ok(disk_service)
    layers = disk_service.disk_snapshots_service().list()
    by_parent = {s.parent.id if s.parent else None: s for s in layers}
    base = by_parent[None]
    middle = by_parent[base.id]
    yield disk.id, base.id, middle.id
    vm_service.remove()


def _wait_disk_ok(disk_service):
    wait_for(disk_service.get, lambda d: d.status.value == "ok")


def _get_json(url: str, cafile: str):
    """One GET of a data plane URL, its JSON body (200 expected)."""
    import http.client
    import ssl
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    ctx = ssl.create_default_context(cafile=cafile)
    c = http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=30)
    try:
        c.request("GET", parts.path + "?" + parts.query)
        resp = c.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body)
        return json.loads(body)
    finally:
        c.close()


def _compare(a: str, fa: str, b: str, fb: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", "compare", "-f", fa, "-F", fb, a, b],
                          capture_output=True, text=True)


def _check(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", "check", "--output=json", "-f", "qcow2", path],
                          capture_output=True, text=True)


def _map(path: str) -> list[dict]:
    """qemu-img map of a qcow2 file with its backing chain (depth 0: this file)."""
    return json.loads(qemu_img("map", "--output=json", "-f", "qcow2", path))


def _covered(entries: list[dict], start: int, length: int, **want) -> bool:
    """Whether [start, start+length) is covered by entries all matching ``want``."""
    pos = start
    for m in sorted(entries, key=lambda m: m["start"]):
        if m["start"] <= pos < m["start"] + m["length"]:
            if any(m.get(k) != v for k, v in want.items()):
                return False
            pos = m["start"] + m["length"]
            if pos >= start + length:
                return True
    return False


def _layer_bytes() -> bytes:
    """The middle layer alone: its data, zeros everywhere else."""
    out = bytearray(SIZE)
    out[DATA[0]:DATA[0] + DATA[1]] = bytes([DATA[2]]) * DATA[1]
    return bytes(out)


def _raw_of(path: str, tmp_path) -> str:
    raw = str(tmp_path / (os.path.basename(path) + ".raw"))
    qemu_img("convert", "-f", "qcow2", "-O", "raw", path, raw)
    return raw


def _download_chain(conn, disk_id, base, middle, tmp_path, **kw):
    """(base.qcow2, middle.qcow2 on top of it, full raw of the middle snapshot)."""
    bfile, mfile = str(tmp_path / "base.qcow2"), str(tmp_path / "middle.qcow2")
    full = str(tmp_path / "full.raw")
    download_disk(conn, disk_id, bfile, format="qcow2", snapshot=base, shallow=True, **kw)
    download_disk(conn, disk_id, mfile, format="qcow2", snapshot=middle, shallow=True,
                  backing_file="base.qcow2", **kw)
    download_disk(conn, disk_id, full, snapshot=middle, **kw)
    return bfile, mfile, full


@pytest.mark.slow
def test_chain_of_shallow_layers_reads_like_the_full_download(conn, chain, tmp_path):
    disk_id, base, middle = chain
    bfile, mfile, full = _download_chain(conn, disk_id, base, middle, tmp_path)
    # The full download has the layer's zeros over the base's 0xaa.
    with open(full, "rb") as f:
        data = f.read()
    assert data[:ZEROED[1]] == bytes(ZEROED[1])
    assert data[ZERO_DATA[0]:ZERO_DATA[0] + ZERO_DATA[1]] == bytes(ZERO_DATA[1])
    assert data[DATA[0]:DATA[0] + DATA[1]] == bytes([DATA[2]]) * DATA[1]
    assert data[ZEROED[1]:DATA[0]] == b"\xaa" * (DATA[0] - ZEROED[1])

    res = _compare(mfile, "qcow2", full, "raw")
    assert res.returncode == 0, res.stdout + res.stderr
    for path in (bfile, mfile):
        res = _check(path)
        assert res.returncode == 0, res.stdout + res.stderr
        report = json.loads(res.stdout)
        assert report.get("leaks", 0) == 0 and report.get("corruptions", 0) == 0
    assert json.loads(qemu_img("info", "--output=json", mfile))["backing-filename"] \
        == "base.qcow2"
    # The zeroed ranges are zero clusters of the middle layer itself; the
    # rest it did not write stays unallocated there (reads the base).
    m = _map(mfile)
    assert _covered(m, *ZEROED, depth=0, zero=True, data=False)
    assert _covered(m, *ZERO_DATA, depth=0, zero=True, data=False)
    assert _covered(m, DATA[0], DATA[1], depth=0, data=True)
    assert _covered(m, ZEROED[1], DATA[0] - ZEROED[1], depth=1, data=True)
    # qemu reads the chain's zeros from the layer, the rest from the base.
    out = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", f"read -P 0 0 {ZEROED[1]}",
                          "-c", f"read -P 0xaa {ZEROED[1]} {DATA[0] - ZEROED[1]}", mfile],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "Pattern verification failed" not in out.stdout, \
        out.stdout + out.stderr


def test_layer_without_backing_file_keeps_zeros_unallocated(conn, chain, tmp_path):
    """No backing file: the layer's zeros read as zeros from holes, so no
    zero cluster is written and only the layer's data takes space."""
    disk_id, _, middle = chain
    lone = str(tmp_path / "lone.qcow2")
    download_disk(conn, disk_id, lone, format="qcow2", snapshot=middle, shallow=True)
    res = _check(lone)
    assert res.returncode == 0, res.stdout + res.stderr
    present = [(m["start"], m["length"], m["data"])
               for m in _map(lone) if m["present"]]
    assert present == [(DATA[0], DATA[1], True)]
    info = json.loads(qemu_img("info", "--output=json", lone))
    assert "backing-filename" not in info
    # Only the data cluster holds guest bytes in the file.
    assert json.loads(res.stdout)["allocated-clusters"] == DATA[1] // (64 * KiB)
    with open(_raw_of(lone, tmp_path), "rb") as f:
        assert f.read() == _layer_bytes()


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.slow
def test_raw_shallow_download_through_the_journal(conn, chain, tmp_path, resume):
    """A raw shallow download (the journaled path, with or without resume)
    has no backing file: the layer's zeros stay holes and read as zeros."""
    disk_id, _, middle = chain
    dest = str(tmp_path / "layer.raw")
    r = download_disk(conn, disk_id, dest, snapshot=middle, shallow=True, resume=resume)
    assert r.verification.verified
    assert not os.path.exists(dest + ".imagetool-journal")
    with open(dest, "rb") as f:
        assert f.read() == _layer_bytes()
    data = [(m["start"], m["length"]) for m in
            json.loads(qemu_img("map", "--output=json", "-f", "raw", dest)) if m["data"]]
    assert data == [(DATA[0], DATA[1])]


def test_backing_file_with_resume_is_refused(conn, chain, tmp_path):
    """A layer over a backing file is qcow2 output, which the journal cannot
    resume: refused before anything is created."""
    from imagetool.transfer.journal import JournalError

    disk_id, _, middle = chain
    dest = str(tmp_path / "m.qcow2")
    with pytest.raises(JournalError, match="--resume supports raw downloads"):
        download_disk(conn, disk_id, dest, format="qcow2", snapshot=middle, shallow=True,
                      backing_file="base.qcow2", resume=True)
    assert os.listdir(tmp_path) == []


def test_layer_ticket_extents_tell_zero_clusters_from_holes(conn, chain, engine):
    """A shallow ticket reports the layer's zero clusters as zero but not
    hole, and what it leaves unallocated as hole (qemu-nbd with allocation
    depth, as ovirt-imageio serves one layer)."""
    from imagetool.transfer.session import TransferSession

    disk_id, _, middle = chain
    with TransferSession(conn, disk_id=disk_id, snapshot_id=middle, direction="download",
                         format="raw", shallow=True) as s:
        got = _get_json(s.url + "/extents?context=zero", engine.cafile)
    z0, zn = ZEROED
    d0, dn, _ = DATA
    e0, en = ZERO_DATA
    assert got == [
        {"start": z0, "length": zn, "zero": True, "hole": False},
        {"start": zn, "length": d0 - zn, "zero": True, "hole": True},
        {"start": d0, "length": dn, "zero": False, "hole": False},
        {"start": d0 + dn, "length": e0 - d0 - dn, "zero": True, "hole": True},
        {"start": e0, "length": en, "zero": False, "hole": False},
        {"start": e0 + en, "length": SIZE - e0 - en, "zero": True, "hole": True},
    ]


@pytest.mark.parametrize("overlap", [False, True])
def test_copier_over_backing_zeroes_zero_extents_and_zero_data(tmp_path, overlap):
    """copy(over_backing=True) into a qcow2 layer: the source layer's zero
    clusters and zero data become zero clusters, its holes stay holes;
    checked by qemu-img on a layer made by qemu-io."""
    from imagetool.formats import open_image
    from imagetool.formats.qcow2_writer import Qcow2Writer
    from imagetool.iocore.copier import CopyOptions, copy

    base = str(tmp_path / "base.qcow2")
    layer = str(tmp_path / "layer.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, str(SIZE))
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0xaa 0 {SIZE}", base],
                   check=True, capture_output=True)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", layer)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -z 0 {ZEROED[1]}",
                    "-c", f"write -P 0 {ZERO_DATA[0]} {ZERO_DATA[1]}",
                    "-c", f"write -P {DATA[2]:#x} {DATA[0]} {DATA[1]}", layer],
                   check=True, capture_output=True)
    out = str(tmp_path / "out.qcow2")
    src = open_image(layer, "r", format="qcow2", shallow=True)
    dst = Qcow2Writer.create(out, SIZE, backing_file="base.qcow2", backing_format="qcow2")
    try:
        stats = copy(src, dst, CopyOptions(2, 64 * KiB, dst_is_zero=True, detect_zeroes=True,
                                           overlap=overlap, over_backing=True))
    finally:
        dst.close()
        src.close()
    assert stats.bytes_zeroed == ZEROED[1] + ZERO_DATA[1]
    assert stats.bytes_copied == DATA[1]
    res = _compare(out, "qcow2", layer, "qcow2")
    assert res.returncode == 0, res.stdout + res.stderr
    res = _check(out)
    assert res.returncode == 0, res.stdout + res.stderr
    m = _map(out)
    assert _covered(m, *ZEROED, depth=0, zero=True, data=False)
    assert _covered(m, *ZERO_DATA, depth=0, zero=True, data=False)
    assert _covered(m, ZEROED[1], DATA[0] - ZEROED[1], depth=1, data=True)
