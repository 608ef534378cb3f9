"""``download_chain``, ``disk_layers`` and ``upload_disk`` of a qcow2 chain,
against the local engine over TLS.

A VM's disk gets three layers: a base of 0xaa, a middle layer that zeroes
a range (allocated zero clusters), writes zero bytes and data, and a top
layer with more data. Every downloaded chain is judged by qemu-img
(``check``, ``info --backing-chain``, ``compare``) against a full
download of the same point in time, never by our own readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from helpers import MiB, qemu_img
from imagetool import snapshots
from imagetool.engine import Connection
from imagetool.errors import FormatError, ImagetoolError, NotFound
from imagetool.imageio.client import ImageioClient
from imagetool.server.local import LocalEngine
from imagetool.transfer.download import download_disk
from imagetool.transfer.session import TransferSession
from imagetool.transfer.upload import upload_disk
from helpers import ENGINE_PASSWORD as PASSWORD

# Every test here starts engines or CLI processes: out of the quick loop.
pytestmark = pytest.mark.slow

KiB = 1024
SIZE = 1 * MiB
ZEROED = (0, 256 * KiB)              # the middle layer zeroes this (zero clusters)
ZERO_DATA = (768 * KiB, 64 * KiB)    # ... writes zero bytes here
MIDDLE_DATA = (512 * KiB, 64 * KiB, 0xbb)
TOP_DATA = (128 * KiB, 64 * KiB, 0xcc)  # inside the zeroed range: over zero clusters


@pytest.fixture(scope="module")
def mconn(engine):
    with Connection(engine.url, username=LocalEngine.username, password=PASSWORD,
                    cafile=engine.cafile) as c:
        yield c


def _write_layer(conn, cafile, disk_id, ops):
    """Write to the disk's active layer through an upload transfer."""
    with TransferSession(conn, disk_id=disk_id, direction="upload") as s:
        with ImageioClient(s.url, cafile=cafile) as c:
            for op in ops:
                if op[0] == "zero":
                    c.zero(op[1], op[2])
                else:
                    c.write(op[1], bytes([op[3]]) * op[2] if op[3] else bytes(op[2]))
            c.flush()


@pytest.fixture(scope="module")
def chain(mconn, engine, tmp_path_factory):
    """(disk, vm, layer ids base..top) of a three-layer disk of VM ``vm-chain``."""
    tmp = tmp_path_factory.mktemp("chain")
    src = str(tmp / "aa.raw")
    with open(src, "wb") as f:
        f.write(b"\xaa" * SIZE)
    disk = upload_disk(mconn, src, "data", name="chain-disk", disk_format="qcow2")
    vm = mconn.vms.add(name="vm-chain")
    mconn.vms.attach_disk(vm.id, disk.id, bootable=True)
    snapshots.create_snapshot(mconn, vm.id, "s1")
    _write_layer(mconn, engine.cafile, disk.id, [("zero", *ZEROED), ("write", *ZERO_DATA, 0),
                                  ("write", *MIDDLE_DATA)])
    snapshots.create_snapshot(mconn, "vm-chain", "s2")
    _write_layer(mconn, engine.cafile, disk.id, [("write", *TOP_DATA)])
    layers = snapshots.disk_layers(mconn, disk.id)
    yield disk, vm, [x.id for x in layers]
    mconn.vms.remove(vm.id)


def _compare(a, fa, b, fb):
    return subprocess.run(["qemu-img", "compare", "-f", fa, "-F", fb, a, b],
                          capture_output=True, text=True)


def _checked(path):
    res = subprocess.run(["qemu-img", "check", "--output=json", "-f", "qcow2", path],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0


def _sha(path, fmt, tmp_path):
    raw = str(tmp_path / (os.path.basename(path) + ".sha.raw"))
    qemu_img("convert", "-f", fmt, "-O", "raw", path, raw)
    with open(raw, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.unlink(raw)
    return digest


def _expected(point: str) -> bytes:
    data = bytearray(b"\xaa" * SIZE)
    if point in ("s2", "top"):
        data[ZEROED[0]:ZEROED[0] + ZEROED[1]] = bytes(ZEROED[1])
        data[ZERO_DATA[0]:ZERO_DATA[0] + ZERO_DATA[1]] = bytes(ZERO_DATA[1])
        off, n, b = MIDDLE_DATA
        data[off:off + n] = bytes([b]) * n
    if point == "top":
        off, n, b = TOP_DATA
        data[off:off + n] = bytes([b]) * n
    return bytes(data)


def test_disk_layers_base_first(mconn, chain):
    disk, vm, ids = chain
    layers = snapshots.disk_layers(mconn, "chain-disk")
    assert [x.id for x in layers] == ids and len(ids) == 3
    assert layers[0].parent_id is None
    assert [x.parent_id for x in layers[1:]] == ids[:-1]
    assert ids[-1] == mconn.disks.get(disk.id).image_id     # the active layer on top
    by_desc = {s.id: s.description for s in snapshots.list_snapshots(mconn, vm.id)}
    assert [by_desc.get(x.snapshot_id) for x in layers[:2]] == ["s1", "s2"]


@pytest.mark.parametrize("point, count", [("s1", 1), ("s2", 2), ("top", 3)])
def test_chain_reads_like_the_full_download(mconn, chain, tmp_path, point, count):
    disk, vm, ids = chain
    out = tmp_path / "chain"
    paths = snapshots.download_chain(mconn, disk.id, out,
                                     snapshot=None if point == "top" else point)
    assert [p.name for p in paths] == [f"{i}.qcow2" for i in ids[:count]]
    assert sorted(os.listdir(out)) == sorted(p.name for p in paths)
    for p in paths:
        _checked(str(p))
    info = json.loads(qemu_img("info", "--backing-chain", "--output=json", str(paths[-1])))
    assert [os.path.basename(i["filename"]) for i in info] == \
        [p.name for p in reversed(paths)]
    assert [i.get("backing-filename") for i in info] == \
        [p.name for p in reversed(paths[:-1])] + [None]
    # The same point downloaded whole (not shallow) by the engine.
    full = str(tmp_path / "full.raw")
    download_disk(mconn, disk.id, full, snapshot=None if point == "top" else ids[count - 1])
    res = _compare(str(paths[-1]), "qcow2", full, "raw")
    assert res.returncode == 0, res.stdout + res.stderr
    with open(full, "rb") as f:
        assert f.read() == _expected(point)
    assert _sha(str(paths[-1]), "qcow2", tmp_path) == \
        hashlib.sha256(_expected(point)).hexdigest()


def test_chain_by_layer_id_and_snapshot_id(mconn, chain, tmp_path):
    disk, vm, ids = chain
    s2 = snapshots.find_snapshot(mconn, vm.id, "s2")
    a = snapshots.download_chain(mconn, disk.id, tmp_path / "a", snapshot=ids[1])
    b = snapshots.download_chain(mconn, disk.id, tmp_path / "b", snapshot=s2.id)
    assert [p.name for p in a] == [p.name for p in b] == [f"{i}.qcow2" for i in ids[:2]]
    res = _compare(str(a[-1]), "qcow2", str(b[-1]), "qcow2")
    assert res.returncode == 0, res.stdout + res.stderr


def test_chain_directory_moves_with_its_files(mconn, chain, tmp_path):
    disk, vm, ids = chain
    paths = snapshots.download_chain(mconn, disk.id, tmp_path / "here")
    os.rename(tmp_path / "here", tmp_path / "there")
    top = tmp_path / "there" / paths[-1].name
    res = _compare(str(top), "qcow2", str(paths[-1]).replace("here", "there"), "qcow2")
    assert res.returncode == 0
    assert _sha(str(top), "qcow2", tmp_path) == hashlib.sha256(_expected("top")).hexdigest()


def test_chain_into_a_directory_with_files_is_refused(mconn, chain, tmp_path):
    disk, vm, ids = chain
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ImagetoolError) as e:
        snapshots.download_chain(mconn, disk.id, tmp_path / "full")
    assert str(e.value) == (f"{tmp_path / 'full'}: already holds files; a chain is "
                            f"downloaded into an empty or new directory")
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    assert mconn.disks.get(disk.id).status == "ok"


def test_unknown_snapshot_creates_nothing(mconn, chain, tmp_path):
    disk, vm, ids = chain
    with pytest.raises(NotFound) as e:
        snapshots.download_chain(mconn, disk.id, tmp_path / "new", snapshot="nope")
    assert str(e.value) == ("VM vm-chain has no snapshot with id or description 'nope'")
    assert not (tmp_path / "new").exists()


def test_failure_mid_chain_leaves_no_files(mconn, chain, tmp_path, monkeypatch):
    disk, vm, ids = chain
    import imagetool.transfer.download as dl
    real = dl.download_disk
    calls = []

    def second_fails(*a, **kw):
        calls.append(kw.get("snapshot"))
        if len(calls) == 2:
            raise ImagetoolError("network gone")
        return real(*a, **kw)

    monkeypatch.setattr(dl, "download_disk", second_fails)
    with pytest.raises(ImagetoolError, match="network gone"):
        snapshots.download_chain(mconn, disk.id, tmp_path / "partial")
    assert calls == ids[:2]
    assert not (tmp_path / "partial").exists()      # made here, so removed
    (tmp_path / "mine").mkdir()
    calls.clear()
    with pytest.raises(ImagetoolError, match="network gone"):
        snapshots.download_chain(mconn, disk.id, tmp_path / "mine")
    assert os.listdir(tmp_path / "mine") == []      # the caller's directory stays, empty
    assert mconn.disks.get(disk.id).status == "ok"
    assert [t for t in mconn.transfers.list() if t.phase == "transferring"] == []


# --- upload of a qcow2 chain ------------------------------------------------------

def test_upload_of_a_chain_sends_its_guest_view(mconn, chain, tmp_path):
    disk, vm, ids = chain
    paths = snapshots.download_chain(mconn, disk.id, tmp_path / "c")
    up = upload_disk(mconn, str(paths[-1]), "data", name="from-chain")
    try:
        assert up.format == "cow"
        back = str(tmp_path / "back.raw")
        download_disk(mconn, up.id, back)
        res = _compare(str(paths[-1]), "qcow2", back, "raw")
        assert res.returncode == 0, res.stdout + res.stderr
        with open(back, "rb") as f:
            assert f.read() == _expected("top")
    finally:
        mconn.disks.remove(up.id)


def test_upload_refuses_a_chain_with_a_missing_layer(mconn, tmp_path):
    base = str(tmp_path / "base.qcow2")
    top = str(tmp_path / "top.qcow2")
    qemu_img("create", "-f", "qcow2", base, "1M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
    os.unlink(base)
    before = {d.id for d in mconn.disks.list()}
    with pytest.raises(FormatError) as e:
        upload_disk(mconn, top, "data", name="broken-chain")
    assert str(e.value) == f"{top}: backing file 'base.qcow2' not found"
    assert {d.id for d in mconn.disks.list()} == before


def test_upload_refuses_a_backing_file_outside_unless_allowed(mconn, tmp_path):
    base = str(tmp_path / "base.raw")
    with open(base, "wb") as f:
        f.write(b"\x5a" * SIZE)
    (tmp_path / "img").mkdir()
    top = str(tmp_path / "img" / "top.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", "../base.raw", "-F", "raw", top)
    before = {d.id for d in mconn.disks.list()}
    with pytest.raises(FormatError) as e:
        upload_disk(mconn, top, "data", name="outside")
    assert str(e.value) == (f"{top}: backing file '../base.raw' is outside "
                            f"{tmp_path / 'img'} (an absolute or '..' path); allow it "
                            f"explicitly if it is trusted")
    assert {d.id for d in mconn.disks.list()} == before
    from imagetool.transfer.upload import upload_disk_result
    res = upload_disk_result(mconn, top, "data", name="outside", allow_outside_backing=True)
    try:
        back = str(tmp_path / "back.raw")
        download_disk(mconn, res.disk_id, back)
        with open(back, "rb") as f:
            assert f.read() == b"\x5a" * SIZE
    finally:
        mconn.disks.remove(res.disk_id)


def test_upload_refuses_a_protocol_backing_name(mconn, tmp_path):
    top = str(tmp_path / "nbd.qcow2")
    qemu_img("create", "-f", "qcow2", "-u", "-b", "nbd://127.0.0.1:1/x", "-F", "raw",
             top, "1M")
    with pytest.raises(FormatError) as e:
        upload_disk(mconn, top, "data", name="nbd")
    assert str(e.value) == f"{top}: backing file 'nbd://127.0.0.1:1/x' is not a local file"
