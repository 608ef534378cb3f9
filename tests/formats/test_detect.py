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


# --- the registry ---------------------------------------------------------------------

FAKE_MAGIC = b"FAKEDISK"


def _fake_format():
    """A format of 8 magic bytes then raw guest data, made of registry parts."""
    from imagetool.formats import window
    from imagetool.formats.detect import ImageInfo
    from imagetool.formats.registry import Format

    head = len(FAKE_MAGIC)

    def info(path, offset, length):
        return ImageInfo(format="fake", virtual_size=length - head, actual_size=length,
                         filename=path)

    return Format(
        open=lambda p, mode, shallow: window.RawWindow(p, head, os.path.getsize(p) - head),
        inspect=lambda p, content: info(p, 0, os.path.getsize(p)),
        open_window=lambda p, o, n: window.RawWindow(p, o + head, n - head),
        inspect_window=info, magic=lambda data, path: data.startswith(FAKE_MAGIC))


def test_a_registered_format_is_probed_and_opened_through_the_registry(tmp_path):
    guest = os.urandom(64 * 1024)
    p = tmp_path / "disk.fake"
    p.write_bytes(FAKE_MAGIC + guest)
    outer = tmp_path / "outer.bin"       # the same image inside another file (an OVA)
    outer.write_bytes(bytes(512) + FAKE_MAGIC + guest + bytes(512))
    assert probe(p) == ("raw", "data")
    from imagetool.formats.registry import register, unregister
    register("fake", _fake_format())
    try:
        assert probe(p) == ("fake", "data") and detect(p) == "fake"
        info = inspect(p)
        assert (info.format, info.virtual_size) == ("fake", len(guest))
        with open_image(p) as b:
            assert b.read(0, b.size) == guest
        n = len(FAKE_MAGIC) + len(guest)
        assert inspect(outer, offset=512, length=n).format == "fake"
        with open_image(outer, offset=512, length=n) as b:
            assert b.read(0, b.size) == guest
    finally:
        unregister("fake")
    assert detect(p) == "raw"
    with open_image(outer, offset=512, length=n) as b:
        assert b.read(0, 8) == FAKE_MAGIC
