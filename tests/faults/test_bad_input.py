"""Bad input: corrupt qcow2, a backing file, an image larger than its disk,
a destination file system that fills up during a download."""

from __future__ import annotations

import os
import struct
import subprocess

import pytest

from helpers import (MiB, disks_named, make_random_raw, new_phases, qemu_img, qemu_io, run,
                     same_image, wait_settled)


def _l1_and_l2(f) -> tuple[int, int]:
    f.seek(40)
    l1 = struct.unpack(">Q", f.read(8))[0]
    f.seek(l1)
    l2 = struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00
    return l1, l2


@pytest.fixture
def qcow2_image(tmp_path):
    path = str(tmp_path / "img.qcow2")
    qemu_img("create", "-f", "qcow2", path, "4M")
    qemu_io(path, "write -P 1 0 1M", "write -P 2 3M 64k")
    return path


def test_corrupt_header_refused_before_anything(faulty_engine, cli, qcow2_image):
    with open(qcow2_image, "r+b") as f:
        f.seek(40)
        f.write(struct.pack(">Q", 1 << 40))          # L1 table far past EOF
    assert run("qemu-img", "check", qcow2_image, check=False).returncode != 0
    code, out, err = cli("upload", qcow2_image, "--sd", "data", "--name", "corrupt-head")
    assert code == 1, err
    assert err.strip() == (f"imagetool: error: {qcow2_image}: corrupt qcow2 image: "
                           "L1 table beyond end of file")
    assert disks_named(faulty_engine, "corrupt-head") == []
    assert faulty_engine.proxy.stats.requests == {}      # no data-plane request


@pytest.mark.parametrize("disk_format", ["qcow2", "raw"])
def test_corrupt_cluster(faulty_engine, cli, qcow2_image, disk_format):
    """A bad L2 entry passes inspection. For a qcow2 disk, measuring the
    image finds it before anything is created; for a raw disk (no measure)
    copying finds it: the transfer is cancelled and the new disk removed."""
    with open(qcow2_image, "r+b") as f:
        _, l2 = _l1_and_l2(f)
        f.seek(l2)
        f.write(struct.pack(">Q", (1 << 63) | (1 << 36)))   # cluster at 64 GiB
    name = f"corrupt-l2-{disk_format}"
    code, out, err = cli("upload", qcow2_image, "--sd", "data", "--name", name,
                         "--disk-format", disk_format)
    assert code == 1, err
    assert err.strip() == (f"imagetool: error: {qcow2_image}: corrupt qcow2 image: "
                           "data cluster offset 0x1000000000 invalid")
    phases = new_phases(faulty_engine)
    if disk_format == "raw":
        assert phases == ["finished_failure"]
        assert faulty_engine.proxy.stats.requests["OPTIONS"] >= 1
    else:
        assert phases == []
        assert faulty_engine.proxy.stats.requests == {}
    assert disks_named(faulty_engine, name) == []


def test_backing_file_refused(faulty_engine, cli, tmp_path):
    # A chain is uploaded whole, except through a backing file outside the
    # top image's directory (not allowed by default).
    base = str(tmp_path / "base.qcow2")
    (tmp_path / "sub").mkdir()
    top = str(tmp_path / "sub" / "top.qcow2")
    qemu_img("create", "-f", "qcow2", base, "4M")
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    code, out, err = cli("upload", top, "--sd", "data", "--name", "with-backing")
    assert code == 1, err
    assert err.strip() == (
        f"imagetool: error: {top}: backing file {base!r} is outside {tmp_path / 'sub'} "
        "(an absolute or '..' path); allow it explicitly if it is trusted")
    assert disks_named(faulty_engine, "with-backing") == []
    assert faulty_engine.proxy.stats.requests == {}


# --- an image larger than the disk (library: the CLI sizes new disks itself) --

def _new_disk(conn, name: str, size: int, fmt: str):
    from imagetool.engine.wait import wait_for_disk
    d = conn.disks.add(name=name, provisioned_size=size, storage_domain="data", format=fmt,
                       initial_size=4 * MiB if fmt == "cow" else None)
    wait_for_disk(conn, d.id, "ok")
    return d


def test_guest_data_larger_than_disk(faulty_engine, tmp_path):
    from imagetool.errors import TransferError
    from imagetool.formats import open_image
    from imagetool.iocore.copier import copy
    from imagetool.transfer.session import TransferSession
    image = make_random_raw(str(tmp_path / "big.raw"), 4 * MiB)
    with faulty_engine.connect() as conn:
        disk = _new_disk(conn, "too-small-raw", 2 * MiB, "raw")
        src = open_image(image, "r")
        try:
            with pytest.raises(TransferError,
                               match=r"destination is smaller than the source "
                                     r"\(2097152 < 4194304 bytes\)"):
                with TransferSession(conn, disk_id=disk.id, direction="upload") as s:
                    copy(src, s.open_backend())
        finally:
            src.close()
    assert faulty_engine.proxy.stats.requests["PUT"] == 0
    assert new_phases(faulty_engine) == ["finished_failure"]


def test_data_plane_refuses_writes_past_the_disk(faulty_engine, tmp_path):
    from imagetool.errors import ImagetoolError
    from imagetool.formats import open_image
    from imagetool.iocore.copier import CopyOptions, copy
    from imagetool.transfer.session import TransferSession
    image = make_random_raw(str(tmp_path / "big.raw"), 4 * MiB)
    with faulty_engine.connect() as conn:
        disk = _new_disk(conn, "too-small-plane", 2 * MiB, "raw")
        src = open_image(image, "r")
        try:
            with pytest.raises(ImagetoolError, match=r"416|beyond|past|exceed") as info:
                with TransferSession(conn, disk_id=disk.id, direction="upload") as s:
                    copy(src, s.open_backend(), CopyOptions(request_size=MiB, check_size=False))
        finally:
            src.close()
    assert "2097152" in str(info.value)     # the disk's size is named
    assert new_phases(faulty_engine) == ["finished_failure"]


@pytest.mark.slow
def test_qcow2_virtual_size_larger_than_disk(faulty_engine, tmp_path):
    """Volume bytes (cow transfer) of a 4 MiB qcow2 into a 2 MiB cow disk:
    the engine's finalize check refuses it and the disk is not left locked."""
    from imagetool.errors import TransferError
    from imagetool.formats.raw import RawBackend
    from imagetool.iocore.copier import CopyOptions, copy
    from imagetool.transfer.session import TransferSession
    image = str(tmp_path / "big.qcow2")
    qemu_img("create", "-f", "qcow2", image, "4M")
    with faulty_engine.connect() as conn:
        disk = _new_disk(conn, "too-small-cow", 2 * MiB, "cow")
        src = RawBackend(image, "r")
        try:
            with pytest.raises(TransferError, match="finalizing the upload failed"):
                with TransferSession(conn, disk_id=disk.id, direction="upload",
                                     format="cow") as s:
                    copy(src, s.open_backend(), CopyOptions(check_size=False))
        finally:
            src.close()
    assert new_phases(faulty_engine) == ["finished_failure"]
    assert [d.status for d in disks_named(faulty_engine, "too-small-cow")] in ([], ["ok"])


# --- full disk during a download ------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs (root only)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_full_disk_during_download(faulty_engine, cli, tmp_path, small_fs, fmt):
    image = make_random_raw(str(tmp_path / "eight.raw"), 8 * MiB, seed=9)
    name = f"full-{fmt}"
    code, _, err = cli("upload", image, "--sd", "data", "--name", name)
    assert code == 0, err
    final = os.path.join(small_fs, f"{name}.{fmt}")
    code, out, err = cli("download", name, final, "--format", fmt, "--buffer-size", "1M")
    assert code == 1, err
    assert "No space left on device" in err
    assert f"imagetool: error: {final}: " in err
    assert os.listdir(small_fs) == []                     # no final, no temporary
    assert new_phases(faulty_engine) == ["finished_failure", "finished_success"]
    assert [d.status for d in disks_named(faulty_engine, name)] == ["ok"]


@pytest.mark.slow
def test_full_disk_then_resume_after_freeing_space(faulty_engine, cli, tmp_path, small_fs):
    image = make_random_raw(str(tmp_path / "eight.raw"), 8 * MiB, seed=10)
    code, _, err = cli("upload", image, "--sd", "data", "--name", "full-resume")
    assert code == 0, err
    final = os.path.join(small_fs, "full-resume.raw")
    args = ["download", "full-resume", final, "--buffer-size", "1M", "--resume"]
    code, out, err = cli(*args)
    assert code == 1, err
    assert "No space left on device" in err
    assert not os.path.exists(final)
    wait_settled(faulty_engine)
    subprocess.run(["mount", "-o", "remount,size=16m", small_fs], check=True)
    code, out, err = cli(*args)
    assert code == 0, err
    assert same_image(image, final)
    assert [n for n in os.listdir(small_fs) if n != "full-resume.raw"] == []
