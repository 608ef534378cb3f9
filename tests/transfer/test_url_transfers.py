"""upload_url / download_url / url_checksum / url_info against the REAL daemon."""

from __future__ import annotations

import os
import shutil

import pytest

from helpers import MiB, images_equal, make_raw, qemu_img
from imageio_daemon import QemuNbd
from imagetool.errors import ImagetoolError
from imagetool.errors import DestinationExists
from imagetool.transfer.urls import download_url, upload_url, url_checksum, url_info

SIZE = 12 * MiB
DATA = [(0, MiB + 4096), (3 * MiB, 64 * 1024), (6 * MiB - 4096, 2 * MiB + 8192),
        (11 * MiB, MiB)]


def _need_qcow2_reader():
    pytest.importorskip("imagetool.formats.qcow2_reader")


def _need_qcow2_writer():
    pytest.importorskip("imagetool.formats.qcow2_writer")


@pytest.fixture
def src_raw(scratch):
    p = os.path.join(scratch, "src.raw")
    make_raw(p, SIZE, DATA, seed=7)
    return p


@pytest.mark.parametrize("workers", [1, 4])
def test_upload_raw_to_file_ticket(imageio_daemon, scratch, src_raw, workers):
    target = os.path.join(scratch, "target.raw")
    with open(target, "wb") as f:
        f.write(b"\xee" * SIZE)      # garbage: zero ranges must be zeroed
    url = imageio_daemon.add_ticket(path=target, size=SIZE)
    seen = []
    res = upload_url(src_raw, url, workers=workers, request_size=MiB,
                     progress=seen.append)
    assert sum(seen) == SIZE and res.bytes == SIZE
    assert images_equal(src_raw, target, "raw", "raw")


@pytest.mark.slow
def test_upload_qcow2_to_nbd_ticket(imageio_daemon, scratch, src_raw):
    _need_qcow2_reader()
    src_qcow2 = os.path.join(scratch, "src.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", src_raw, src_qcow2)
    target = os.path.join(scratch, "target.qcow2")
    qemu_img("create", "-f", "qcow2", target, str(SIZE))
    with QemuNbd(target, "qcow2") as nbd:
        url = imageio_daemon.add_ticket(nbd_socket=nbd.socket_path, size=SIZE)
        upload_url(src_qcow2, url, workers=4, request_size=MiB, dst_is_zero=True)
    assert images_equal(src_raw, target, "raw", "qcow2")
    qemu_img("check", target)


@pytest.mark.parametrize("workers", [1, 3])
def test_download_file_ticket_to_raw(imageio_daemon, scratch, src_raw, workers):
    url = imageio_daemon.add_ticket(path=src_raw, size=SIZE, ops=["read"])
    out = os.path.join(scratch, "out.raw")
    # The daemon's file backend reports no holes: zero data must be detected.
    res = download_url(url, out, workers=workers, request_size=256 * 1024)
    assert res.bytes == SIZE
    with open(out, "rb") as a, open(src_raw, "rb") as b:
        assert a.read() == b.read()
    # Holes stay holes: far less allocated than the virtual size.
    assert os.stat(out).st_blocks * 512 < SIZE // 2


def test_download_nbd_ticket_to_qcow2(imageio_daemon, scratch, src_raw):
    _need_qcow2_writer()
    src_qcow2 = os.path.join(scratch, "src.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", src_raw, src_qcow2)
    out = os.path.join(scratch, "out.qcow2")
    with QemuNbd(src_qcow2, "qcow2") as nbd:
        url = imageio_daemon.add_ticket(nbd_socket=nbd.socket_path, size=SIZE,
                                        ops=["read"])
        download_url(url, out, format="qcow2", workers=4, request_size=MiB)
    qemu_img("check", out)
    assert images_equal(src_raw, out, "raw", "qcow2")


def test_download_refuses_existing_file(imageio_daemon, scratch, src_raw):
    url = imageio_daemon.add_ticket(path=src_raw, size=SIZE, ops=["read"])
    out = os.path.join(scratch, "exists.raw")
    with open(out, "wb") as f:
        f.write(b"keep me")
    with pytest.raises(DestinationExists):
        download_url(url, out)
    with open(out, "rb") as f:
        assert f.read() == b"keep me"
    download_url(url, out, force=True)
    assert images_equal(src_raw, out, "raw", "raw")


def test_failed_download_leaves_no_file(imageio_daemon, scratch, src_raw):
    ticket = "t-fail-download"
    url = imageio_daemon.add_ticket(path=src_raw, size=SIZE, ops=["read"],
                                    ticket_id=ticket)
    out = os.path.join(scratch, "never.raw")
    calls = []

    def progress(n):
        calls.append(n)
        if len(calls) == 2:
            # The ticket disappears mid-transfer: the next requests get 403.
            imageio_daemon.remove_ticket(ticket)

    with pytest.raises(ImagetoolError) as info:
        download_url(url, out, workers=2, request_size=MiB, progress=progress)
    assert ticket not in str(info.value)
    assert os.listdir(scratch) == ["src.raw"]


def test_interrupted_download_leaves_no_file(imageio_daemon, scratch, src_raw):
    url = imageio_daemon.add_ticket(path=src_raw, size=SIZE, ops=["read"])
    out = os.path.join(scratch, "never.raw")

    def progress(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_url(url, out, workers=2, request_size=MiB, progress=progress)
    assert os.listdir(scratch) == ["src.raw"]


def test_checksum_and_info(imageio_daemon, scratch, src_raw):
    copy_path = os.path.join(scratch, "copy.raw")
    shutil.copyfile(src_raw, copy_path)
    other = os.path.join(scratch, "other.raw")
    make_raw(other, SIZE, DATA, seed=8)
    urls = [imageio_daemon.add_ticket(path=p, size=SIZE, ops=["read"])
            for p in (src_raw, copy_path, other)]
    sums = [url_checksum(u)["checksum"] for u in urls]
    assert sums[0] == sums[1] != sums[2]
    info = url_info(urls[0])
    assert info["size"] == SIZE
    assert "extents" in info["features"] and "zero" not in info["features"]
    assert info["data_bytes"] + info["zero_bytes"] == SIZE
    assert "/images/***" in info["url"]


@pytest.mark.slow
def test_workers_use_at_most_n_connections(imageio_daemon, scratch, src_raw):
    # qemu-nbd --shared=8 serves 8 clients: a 9th connection would hang.
    target = os.path.join(scratch, "target.raw")
    with open(target, "wb") as f:
        f.truncate(SIZE)
    seen = []
    with QemuNbd(target, "raw") as nbd:
        tid = "t-conn-count"
        url = imageio_daemon.add_ticket(nbd_socket=nbd.socket_path, size=SIZE,
                                        ticket_id=tid)

        def progress(n):
            seen.append(imageio_daemon.ticket_info(tid)["connections"])

        upload_url(src_raw, url, workers=8, request_size=256 * 1024, progress=progress)
    assert 1 <= max(seen) <= 8
    assert images_equal(src_raw, target, "raw", "raw")
