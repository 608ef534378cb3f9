"""imagetool info/checksum/measure/convert through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from ovirt_imageio.client import checksum as reference_checksum

from helpers import (MiB, qemu_check, qemu_compare, qemu_img_json, random_image, run,
                     write_raw)
from imagetool.cli.main import main


def imagetool(capsys, *args) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    raw = d / "disk.raw"
    write_raw(raw, random_image(6 * MiB, seed=4))
    qcow = d / "disk.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", raw, qcow)
    top = d / "top.qcow2"
    run("qemu-img", "create", "-f", "qcow2", "-b", qcow.name, "-F", "qcow2", top)
    return {"raw": raw, "qcow2": qcow, "top": top}


@pytest.mark.parametrize("kind", ["raw", "qcow2", "top"])
def test_info_json_matches_qemu(capsys, images, kind):
    code, out, err = imagetool(capsys, "info", "--json", images[kind])
    assert code == 0, err
    got = json.loads(out)
    theirs = qemu_img_json("info", images[kind])
    assert got["format"] == theirs["format"]
    assert got["virtual_size"] == theirs["virtual-size"]
    assert got["content_type"] == "data"
    assert "actual_size" in got
    if kind != "raw":
        assert got["cluster_size"] == theirs["cluster-size"]
        assert got["compat"] == theirs["format-specific"]["data"]["compat"]
        assert got["backing_file"] == theirs.get("backing-filename")


def test_info_text(capsys, images):
    code, out, _ = imagetool(capsys, "info", images["top"])
    assert code == 0
    assert "file format: qcow2" in out
    assert f"virtual size: 6.00 MiB ({6 * MiB} bytes)" in out
    assert "backing file: disk.qcow2" in out
    assert "backing file format: qcow2" in out


@pytest.mark.parametrize("kind", ["raw", "qcow2", "top"])
def test_checksum_json_equals_reference(capsys, images, kind):
    code, out, err = imagetool(capsys, "checksum", "--json", images[kind])
    assert code == 0, err
    got = json.loads(out)
    assert set(got) == {"checksum", "algorithm", "block_size"}
    assert got == reference_checksum(str(images[kind]))


def test_checksum_options_and_text(capsys, images):
    code, out, _ = imagetool(capsys, "checksum", "-a", "sha256", "--block-size", "2M",
                             images["qcow2"])
    assert code == 0
    ref = reference_checksum(str(images["qcow2"]), algorithm="sha256", block_size=2 * MiB)
    assert out == f"{ref['checksum']}  {images['qcow2']}\n"


@pytest.mark.parametrize("args,needle", [
    (["checksum", "--block-size", "3000"], "multiple of 4096"),
    (["checksum", "--block-size", "32M"], "multiple of 4096"),
    (["checksum", "--block-size", "lots"], "invalid size"),
    (["checksum", "--algorithm", "nope"], "nope"),
    (["checksum"], "missing argument FILE"),
    (["convert", "-O", "vmdk"], "vmdk"),
    (["measure", "-O", "vdi"], "vdi"),
    (["measure", "--cluster-size", "3000"], "power of two"),
    (["convert", "-O", "qcow2", "--cluster-size", "4M"], "power of two"),
])
def test_usage_errors_exit_2(capsys, images, args, needle):
    if args != ["checksum"]:
        args = args + [images["raw"]] + (["x.img"] if args[0] == "convert" else [])
    code, out, err = imagetool(capsys, *args)
    assert code == 2
    assert needle in err


def test_compress_needs_qcow2(capsys, images, tmp_path):
    code, _, err = imagetool(capsys, "convert", "-c", "-O", "raw", images["raw"],
                             tmp_path / "x.raw")
    assert code == 2
    assert "--compress needs -O qcow2" in err


def test_measure_json_matches_qemu(capsys, images):
    for fmt in ("qcow2", "raw"):
        code, out, _ = imagetool(capsys, "measure", "--json", "-O", fmt, images["raw"])
        assert code == 0
        theirs = qemu_img_json("measure", "-O", fmt, images["raw"])
        assert json.loads(out) == {"required": theirs["required"],
                                   "fully-allocated": theirs["fully-allocated"]}
    code, out, _ = imagetool(capsys, "measure", images["raw"])
    theirs = qemu_img_json("measure", "-O", "qcow2", images["raw"])
    assert out == (f"required size: {theirs['required']}\n"
                   f"fully allocated size: {theirs['fully-allocated']}\n")


def test_convert_and_overwrite_refusal(capsys, images, tmp_path):
    dst = tmp_path / "out.qcow2"
    code, out, err = imagetool(capsys, "convert", images["top"], dst, "-O", "qcow2")
    assert (code, out, err) == (0, "", "")  # no bar when not on a terminal
    qemu_compare(images["top"], dst)
    qemu_check(dst)
    before = dst.read_bytes()
    code, out, err = imagetool(capsys, "convert", images["raw"], dst, "-O", "raw")
    assert code == 1
    assert err.count("\n") == 1 and str(dst) in err and "--force" in err
    assert dst.read_bytes() == before
    code, _, _ = imagetool(capsys, "convert", "--force", "-c", images["raw"], dst, "-O", "qcow2")
    assert code == 0
    qemu_compare(images["raw"], dst)


def test_convert_json_says_what_was_written(capsys, images, tmp_path):
    dst = tmp_path / "out.raw"
    code, out, err = imagetool(capsys, "convert", "--json", images["top"], dst, "-O", "raw")
    assert code == 0 and err == ""
    got = json.loads(out)
    assert {k: got[k] for k in ("source", "destination", "format", "compressed",
                                "virtual_size")} == {
        "source": str(images["top"]), "destination": str(dst), "format": "raw",
        "compressed": False,
        "virtual_size": qemu_img_json("info", images["top"])["virtual-size"]}
    assert 0 < got["data_bytes"] <= got["virtual_size"] and got["seconds"] >= 0
    qemu_compare(images["top"], dst)


@pytest.mark.parametrize("command", ["info", "checksum", "measure"])
def test_missing_file_one_line_exit_1(capsys, tmp_path, command):
    missing = tmp_path / "missing.img"
    code, out, err = imagetool(capsys, command, missing)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert str(missing) in err and "No such file" in err


def test_unsupported_format_exit_1(capsys, tmp_path):
    vhd = tmp_path / "disk.vhd"
    run("qemu-img", "create", "-f", "vpc", vhd, "1M")
    code, _, err = imagetool(capsys, "checksum", vhd)
    assert code == 1
    assert str(vhd) in err and "vhd" in err.lower()


@pytest.mark.parametrize("command", ["info", "checksum", "measure", "convert"])
def test_help_has_examples(capsys, command):
    code, out, _ = imagetool(capsys, command, "--help")
    assert code == 0
    assert "Examples:" in out and f"imagetool {command}" in out


@pytest.mark.slow
def test_console_script_subprocess(images):
    p = subprocess.run([sys.executable, "-m", "imagetool", "checksum", "--json",
                        str(images["raw"])], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == reference_checksum(str(images["raw"]))


def test_info_iso_content_type(capsys, tmp_path):
    iso = tmp_path / "cd.iso"
    with open(iso, "wb") as f:
        f.truncate(64 * 1024)
        f.seek(0x8000)
        f.write(b"\x01CD001\x01\x00")
    code, out, _ = imagetool(capsys, "info", iso)
    assert code == 0
    assert "file format: raw" in out and "content type: iso" in out
    code, out, _ = imagetool(capsys, "info", "--json", iso)
    assert json.loads(out)["content_type"] == "iso"
