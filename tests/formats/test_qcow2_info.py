"""qcow2 header inspection against qemu-img info, and refusals."""

from __future__ import annotations

import os
import struct

import pytest

from helpers import MiB, make_raw, qemu_img, qemu_img_create_encrypted, qemu_info, qemu_io
from imagetool.errors import CorruptImage, FormatError, UnsupportedFeature
from imagetool.formats import inspect, open_image

CASES = {
    "v2": ["-o", "compat=0.10"],
    "v3": [],
    "4k": ["-o", "cluster_size=4k"],
    "2m": ["-o", "cluster_size=2M"],
    "zstd": ["-o", "compression_type=zstd"],
    "extl2": ["-o", "extended_l2=on"],
    "lazy": ["-o", "lazy_refcounts=on"],
    "refcount1": ["-o", "refcount_bits=1"],
    "refcount64": ["-o", "refcount_bits=64"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_info_matches_qemu(tmp_path, name):
    p = tmp_path / f"{name}.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", *CASES[name], str(p), "10M")
    qemu_io(p, "write -P 0x1 0 1M")
    _compare(p)


def _compare(p):
    q = qemu_info(p)
    info = inspect(p)
    data = q["format-specific"]["data"]
    assert info.format == q["format"] == "qcow2"
    assert info.virtual_size == q["virtual-size"]
    assert info.actual_size == q["actual-size"]
    assert info.cluster_size == q["cluster-size"]
    assert info.compat == data["compat"]
    assert info.refcount_bits == data["refcount-bits"]
    assert info.compression_type == data["compression-type"]
    assert info.extended_l2 == data.get("extended-l2", False)
    assert info.lazy_refcounts == data.get("lazy-refcounts", False)
    assert info.corrupt == data.get("corrupt", False)
    assert info.dirty == q.get("dirty-flag", False)
    assert info.backing_file == q.get("backing-filename")
    assert info.backing_file_format == q.get("backing-filename-format")
    assert info.snapshots == len(q.get("snapshots", []))
    assert info.bitmaps == [b["name"] for b in data.get("bitmaps", [])]
    assert info.filename == q["filename"]
    d = info.to_dict()
    assert d["virtual_size"] == q["virtual-size"]
    assert d["compat"] == data["compat"]
    return info


def test_info_backing_snapshots_bitmaps(tmp_path):
    base = tmp_path / "base.raw"
    make_raw(base, 4 * MiB, [(0, MiB)])
    p = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
             str(p), "8M")
    qemu_img("snapshot", "-c", "snap1", str(p))
    qemu_img("snapshot", "-c", "snap2", str(p))
    qemu_img("bitmap", "--add", str(p), "bm-a")
    qemu_img("bitmap", "--add", str(p), "bm-b")
    info = _compare(p)
    assert info.backing_file == "base.raw"
    assert info.backing_file_format == "raw"
    assert info.snapshots == 2
    assert info.bitmaps == ["bm-a", "bm-b"]


@pytest.mark.slow
def test_encrypted_reported_then_refused(tmp_path):
    p = tmp_path / "enc.qcow2"
    qemu_img_create_encrypted(
        "-q", "-f", "qcow2", "--object", "secret,id=s,data=x",
        "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=50",
        str(p), "1M")
    info = inspect(p)
    assert info.encrypted is True
    assert info.to_dict()["encrypted"] is True
    with pytest.raises(UnsupportedFeature, match="encrypted") as e:
        open_image(p)
    assert str(p) in str(e.value)


def test_external_data_file_reported_then_refused(tmp_path):
    p = tmp_path / "ext.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             f"data_file={tmp_path / 'ext.data'}", str(p), "1M")
    info = inspect(p)
    assert info.data_file == str(tmp_path / "ext.data")
    with pytest.raises(UnsupportedFeature, match="external data file"):
        open_image(p)


def _set_incompat(p, bits):
    with open(p, "r+b") as f:
        f.seek(72)
        value = struct.unpack(">Q", f.read(8))[0]
        f.seek(72)
        f.write(struct.pack(">Q", value | bits))


def test_unknown_incompatible_bit_refused(tmp_path):
    p = tmp_path / "future.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(p), "1M")
    _set_incompat(p, 1 << 40)
    # qemu refuses it as well
    with pytest.raises(AssertionError):
        qemu_info(p)
    for call in (inspect, open_image):
        with pytest.raises(UnsupportedFeature, match="bit 40") as e:
            call(p)
        assert str(p) in str(e.value)


def test_corrupt_bit(tmp_path):
    p = tmp_path / "bad.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(p), "1M")
    _set_incompat(p, 2)
    info = _compare(p)
    assert info.corrupt is True
    with pytest.raises(CorruptImage, match="corrupt"):
        open_image(p)


def test_dirty_bit_readable(tmp_path):
    p = tmp_path / "dirty.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(p), "1M")
    qemu_io(p, "write -P 0x7 0 4k")
    _set_incompat(p, 1)
    info = _compare(p)
    assert info.dirty is True
    with open_image(p) as b:
        assert b.read(0, 4096) == b"\x07" * 4096


@pytest.mark.parametrize("keep", [0, 50, 71, 100, 300, 70000, -4096])
def test_truncated(tmp_path, keep):
    p = tmp_path / "t.qcow2"
    raw = tmp_path / "t.raw"
    make_raw(raw, 2 * MiB, [(0, 2 * MiB)])
    qemu_img("convert", "-O", "qcow2", "-o", "cluster_size=4k", str(raw), str(p))
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(keep if keep >= 0 else size + keep)
    if keep == 0:
        assert inspect(p).format == "raw"  # an empty file is raw
        return
    with pytest.raises(FormatError) as e:
        with open_image(p) as b:
            b.read(0, b.size)
            list(b.extents())
    assert str(p) in str(e.value)


def test_unaligned_l2_offset_is_corrupt(tmp_path):
    p = tmp_path / "l1.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(p), "1M")
    qemu_io(p, "write -P 0x1 0 4k")
    with open(p, "rb") as f:
        head = f.read(48)
    l1_off = struct.unpack(">Q", head[40:48])[0]
    with open(p, "r+b") as f:
        f.seek(l1_off)
        entry = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1_off)
        f.write(struct.pack(">Q", entry + 512))
    with pytest.raises(CorruptImage, match="L2 table"):
        with open_image(p) as b:
            b.read(0, 10)
