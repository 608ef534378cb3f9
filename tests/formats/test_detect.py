"""Format detection: what we read, what we refuse and how we say it."""

from __future__ import annotations

import os

import pytest

from helpers import (MiB, make_raw, qemu_img, qemu_img_create_encrypted, qemu_info,
                     qemu_raw_bytes)
from imagetool.errors import FormatError, UnsupportedFormat
from imagetool.formats import detect, inspect, open_image, probe


def test_raw(tmp_path):
    p = tmp_path / "disk.img"
    make_raw(p, 2 * MiB, [(0, 4096)])
    assert detect(p) == "raw"
    info = inspect(p)
    q = qemu_info(p)
    assert info.format == q["format"] == "raw"
    assert info.virtual_size == q["virtual-size"]
    assert info.actual_size == q["actual-size"]
    assert info.content_type == "data"
    d = info.to_dict()
    assert d["format"] == "raw" and d["virtual_size"] == 2 * MiB
    assert "cluster_size" not in d


def test_empty_file_is_raw(tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    assert detect(p) == "raw"
    assert inspect(p).virtual_size == 0


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_qcow2(tmp_path, compat):
    p = tmp_path / "d.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"compat={compat}", str(p), "1M")
    assert detect(p) == "qcow2"


def test_iso(tmp_path):
    p = tmp_path / "cd.iso"
    data = bytearray(0x8000 + 2048 * 2)
    data[0x8000:0x8008] = b"\x01CD001\x01\x00"
    p.write_bytes(bytes(data))
    assert probe(p) == ("raw", "iso")
    info = inspect(p)
    assert info.format == "raw" and info.content_type == "iso"
    assert info.to_dict()["content_type"] == "iso"


FOREIGN = [
    ("vhd", ["-f", "vpc"]),
    ("vhd", ["-f", "vpc", "-o", "subformat=fixed"]),
    ("vhdx", ["-f", "vhdx"]),
    ("vdi", ["-f", "vdi"]),
    ("qed", ["-f", "qed"]),
]


@pytest.mark.parametrize("name,opts", FOREIGN,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(FOREIGN)])
def test_foreign_formats_refused(tmp_path, name, opts):
    p = tmp_path / f"disk.{name}"
    qemu_img("create", "-q", *opts, str(p), "1M")
    for call in (detect, inspect, open_image):
        with pytest.raises(UnsupportedFormat) as e:
            call(p)
        msg = str(e.value)
        assert name in msg
        assert "qemu-img convert -O qcow2" in msg
        assert str(p) in msg


@pytest.mark.slow
def test_luks_refused(tmp_path):
    p = tmp_path / "secret.luks"
    qemu_img_create_encrypted("-q", "-f", "luks", "--object", "secret,id=s,data=x",
                              "-o", "key-secret=s,iter-time=50", str(p), "1M")
    with pytest.raises(UnsupportedFormat, match="encrypted images are not supported"):
        open_image(p)
    with pytest.raises(UnsupportedFormat, match="LUKS"):
        inspect(p)


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="nope"):
        detect(tmp_path / "nope")
    with pytest.raises(FormatError):
        inspect(tmp_path / "nope")


def test_bad_qcow2_version(tmp_path):
    p = tmp_path / "v9.qcow2"
    p.write_bytes(b"QFI\xfb\x00\x00\x00\x09" + bytes(504))
    with pytest.raises(UnsupportedFormat, match="version 9"):
        detect(p)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "samples")


@pytest.mark.parametrize("name,fmt,content", [
    ("data-holes.raw", "raw", "data"), ("data-holes.qcow2", "qcow2", "data"),
    ("compressed.qcow2", "qcow2", "data"), ("tiny.iso", "raw", "iso")])
def test_samples(tmp_path, name, fmt, content):
    path = os.path.join(SAMPLES, name)
    assert os.path.getsize(path) < 2 * MiB
    info = inspect(path)
    assert (info.format, info.content_type) == (fmt, content)
    q = qemu_info(path)
    assert info.format == q["format"]
    assert info.virtual_size == q["virtual-size"]
    expected = qemu_raw_bytes(path, tmp_path)
    with open_image(path) as b:
        assert b.read(0, b.size) == expected


def test_directory_is_a_clean_error(tmp_path):
    for call in (detect, inspect, open_image):
        with pytest.raises(FormatError):
            call(tmp_path)
