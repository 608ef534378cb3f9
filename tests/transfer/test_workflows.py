"""upload_disk / download_disk / TransferSession end to end.

The engine is a small in-process stand-in (tests/support/fake_transfer_engine.py);
the data plane is the REAL ovirt-imageio daemon with file and NBD tickets.
"""

from __future__ import annotations

import os

import pytest

import imagetool
from helpers import MiB, images_equal, make_raw, qemu_img
from imagetool.errors import ImagetoolError, TransferError, UnsupportedFeature
from imagetool.transfer.download import download_disk
from imagetool.errors import DestinationExists
from imagetool.transfer.upload import upload_disk, upload_disk_result

SIZE = 10 * MiB
DATA = [(0, MiB + 512), (4 * MiB, 128 * 1024), (6 * MiB - 4096, 2 * MiB), (9 * MiB, MiB)]


@pytest.fixture
def raw_file(scratch):
    p = os.path.join(scratch, "disk.raw")
    make_raw(p, SIZE, DATA, seed=3)
    return p


def _qcow2(raw, scratch, *opts):
    out = os.path.join(scratch, "disk.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *opts, raw, out)
    return out


def _no_locked_disks(transfer_engine):
    return all(d.status != "locked" for d in transfer_engine.disks.values())


@pytest.mark.parametrize("workers", [1, 4])
def test_upload_raw_file_to_raw_disk(transfer_engine, raw_file, workers):
    seen = []
    disk = upload_disk(transfer_engine.conn, raw_file, "data", workers=workers,
                       buffer_size=MiB, progress=seen.append)
    assert disk.status == "ok" and disk.format == "raw"
    assert disk.provisioned_size == SIZE and disk.name == "disk.raw"
    assert sum(seen) == SIZE
    assert ("transfer_add", "raw", "upload") in transfer_engine.calls
    assert images_equal(raw_file, transfer_engine.disk_path(disk.id), "raw", "raw")


@pytest.mark.slow
@pytest.mark.parametrize("opts", [(), ("-c",)], ids=["plain", "compressed"])
def test_upload_qcow2_file_to_cow_disk_raw_transfer(transfer_engine, raw_file, scratch, opts):
    src = _qcow2(raw_file, scratch, *opts)
    disk = upload_disk(transfer_engine.conn, src, "data", workers=4, buffer_size=MiB)
    assert disk.format == "cow"
    assert disk.initial_size and disk.initial_size < SIZE
    qemu_img("check", transfer_engine.disk_path(disk.id))
    assert images_equal(raw_file, transfer_engine.disk_path(disk.id), "raw", "qcow2")


@pytest.mark.slow
def test_upload_qcow2_file_to_raw_disk(transfer_engine, raw_file, scratch):
    src = _qcow2(raw_file, scratch, "-c")
    disk = upload_disk(transfer_engine.conn, src, "data", disk_format="raw", workers=2)
    assert disk.format == "raw"
    assert images_equal(raw_file, transfer_engine.disk_path(disk.id), "raw", "raw")


@pytest.mark.slow
def test_upload_raw_file_to_cow_disk_cow_transfer_converts(transfer_engine, raw_file):
    res = upload_disk_result(transfer_engine.conn, raw_file, "data", disk_format="qcow2",
                             transfer_format="cow", workers=1)
    assert ("transfer_add", "cow", "upload") in transfer_engine.calls
    qemu_img("check", transfer_engine.disk_path(res.disk_id))
    assert images_equal(raw_file, transfer_engine.disk_path(res.disk_id), "raw", "qcow2")


@pytest.mark.slow
def test_upload_qcow2_bytes_with_cow_transfer(transfer_engine, raw_file, scratch):
    src = _qcow2(raw_file, scratch)
    disk = upload_disk(transfer_engine.conn, src, "data", transfer_format="cow", workers=1)
    qemu_img("check", transfer_engine.disk_path(disk.id))
    assert images_equal(raw_file, transfer_engine.disk_path(disk.id), "raw", "qcow2")


def test_upload_iso_goes_as_raw_iso(transfer_engine, scratch):
    iso = os.path.join(scratch, "cd.iso")
    make_raw(iso, 2 * MiB, [(0, 4096)], seed=5)
    with open(iso, "r+b") as f:
        f.seek(0x8000)
        f.write(b"\x01CD001\x01\x00")
    disk = upload_disk(transfer_engine.conn, iso, "data", workers=2)
    assert disk.content_type == "iso" and disk.format == "raw"
    assert images_equal(iso, transfer_engine.disk_path(disk.id), "raw", "raw")
    with pytest.raises(ImagetoolError, match="ISO"):
        upload_disk(transfer_engine.conn, iso, "data", disk_format="qcow2")


def test_upload_refuses_backing_file(transfer_engine, raw_file, scratch):
    # A chain is uploaded whole, but a backing file outside the top
    # image's directory is refused unless allowed.
    base = _qcow2(raw_file, scratch)
    os.mkdir(os.path.join(scratch, "sub"))
    top = os.path.join(scratch, "sub", "top.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    with pytest.raises(UnsupportedFeature, match="backing file"):
        upload_disk(transfer_engine.conn, top, "data")
    assert transfer_engine.disks == {}


@pytest.mark.slow
def test_verify_checksum(transfer_engine, raw_file):
    res = upload_disk_result(transfer_engine.conn, raw_file, "data", verify=True)
    assert res.checksum and len(res.checksum) == 64


def test_ctrl_c_during_upload_cancels(transfer_engine, raw_file):
    calls = []

    def progress(n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upload_disk(transfer_engine.conn, raw_file, "data", workers=2, buffer_size=MiB,
                    progress=progress)
    assert [c[0] for c in transfer_engine.calls if c[0] in ("cancel", "finalize")] == ["cancel"]
    assert transfer_engine.disks == {}          # the uploaded disk was removed
    assert _no_locked_disks(transfer_engine)


def test_server_error_mid_upload_cancels(transfer_engine, raw_file, imageio_daemon):
    calls = []

    def progress(n):
        calls.append(n)
        if len(calls) == 1:
            # The host drops the ticket: later requests fail with 403.
            tid = [t for t in transfer_engine.transfers][-1]
            imageio_daemon.remove_ticket(tid)

    with pytest.raises(ImagetoolError) as info:
        upload_disk(transfer_engine.conn, raw_file, "data", workers=2, buffer_size=MiB,
                    progress=progress)
    tid = list(transfer_engine.transfers)[-1]
    assert tid not in str(info.value)    # ticket ids are secrets
    assert ("cancel", tid) in transfer_engine.calls
    assert _no_locked_disks(transfer_engine) and transfer_engine.disks == {}


@pytest.mark.slow
def test_failed_finalize_raises(transfer_engine, raw_file):
    transfer_engine.fail_finalize = True
    with pytest.raises(TransferError, match="finished_failure"):
        upload_disk(transfer_engine.conn, raw_file, "data")
    assert _no_locked_disks(transfer_engine)


@pytest.mark.slow
def test_several_uploads_at_once(transfer_engine, raw_file, scratch):
    from concurrent.futures import ThreadPoolExecutor

    files = []
    for i in range(3):
        p = os.path.join(scratch, f"f{i}.raw")
        make_raw(p, 4 * MiB, [(i * MiB, MiB)], seed=10 + i)
        files.append(p)
    with ThreadPoolExecutor(3) as pool:
        disks = list(pool.map(lambda p: upload_disk(transfer_engine.conn, p, "data",
                                                    workers=2, buffer_size=MiB), files))
    for p, d in zip(files, disks):
        assert images_equal(p, transfer_engine.disk_path(d.id), "raw", "raw")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_download_disk(transfer_engine, raw_file, scratch, fmt):
    src = _qcow2(raw_file, scratch)
    disk = upload_disk(transfer_engine.conn, src, "data")
    out = os.path.join(scratch, f"out.{fmt}")
    res = download_disk(transfer_engine.conn, disk.name, out, format=fmt, workers=3,
                        buffer_size=MiB)
    assert res.bytes == SIZE and res.disk_id == disk.id
    if fmt == "qcow2":
        qemu_img("check", out)
    assert images_equal(raw_file, out, "raw", fmt)
    assert transfer_engine.disks[disk.id].status == "ok"
    with pytest.raises(DestinationExists):
        download_disk(transfer_engine.conn, disk, out)


@pytest.mark.slow
def test_failed_download_leaves_no_file_and_cancels(transfer_engine, raw_file, scratch):
    disk = upload_disk(transfer_engine.conn, raw_file, "data")
    out = os.path.join(scratch, "out.raw")
    before = set(os.listdir(scratch))

    def progress(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_disk(transfer_engine.conn, disk, out, workers=2, buffer_size=MiB,
                      progress=progress)
    assert set(os.listdir(scratch)) == before
    assert transfer_engine.calls[-1][0] == "cancel"
    assert transfer_engine.disks[disk.id].status == "ok"


@pytest.mark.slow
def test_top_level_api(transfer_engine, raw_file, scratch):
    disk = imagetool.upload_disk(transfer_engine.conn, raw_file, "data")
    out = os.path.join(scratch, "top.raw")
    imagetool.download_disk(transfer_engine.conn, disk, out)
    assert images_equal(raw_file, out, "raw", "raw")


def test_500_from_daemon_mid_upload_cancels(transfer_engine, raw_file, fast_backoff):
    calls = []

    def progress(n):
        calls.append(n)
        if len(calls) == 1:
            # The host's NBD server dies: the daemon answers 500.
            tid = list(transfer_engine.transfers)[-1]
            transfer_engine.nbd[tid]._proc.kill()

    with pytest.raises(ImagetoolError) as info:
        upload_disk(transfer_engine.conn, raw_file, "data", workers=2, buffer_size=MiB,
                    progress=progress)
    assert "500" in str(info.value) and "writing destination" in str(info.value)
    tid = list(transfer_engine.transfers)[-1]
    assert ("cancel", tid) in transfer_engine.calls
    assert _no_locked_disks(transfer_engine) and transfer_engine.disks == {}


@pytest.mark.slow
def test_old_engine_forgets_transfer_after_finalize(transfer_engine, raw_file):
    transfer_engine.drop_finished = True
    disk = upload_disk(transfer_engine.conn, raw_file, "data")
    assert disk.status == "ok"
    assert images_equal(raw_file, transfer_engine.disk_path(disk.id), "raw", "raw")


@pytest.mark.slow
def test_legacy_engine_moves_volume_bytes(transfer_engine, raw_file, scratch):
    transfer_engine.conn.legacy = True
    src = _qcow2(raw_file, scratch)
    disk = upload_disk(transfer_engine.conn, src, "data")
    assert ("transfer_add", "cow", "upload") in transfer_engine.calls
    qemu_img("check", transfer_engine.disk_path(disk.id))
    with pytest.raises(ImagetoolError, match="4.1"):
        upload_disk(transfer_engine.conn, raw_file, "data", transfer_format="raw")
    for fmt in ("raw", "qcow2"):
        out = os.path.join(scratch, f"legacy.{fmt}")
        download_disk(transfer_engine.conn, disk, out, format=fmt)
        assert images_equal(raw_file, out, "raw", fmt)
    assert not [f for f in os.listdir(scratch) if ".part" in f or f.endswith(".volume")]


@pytest.mark.slow
def test_keepalive_pings_and_extends(transfer_engine, raw_file, imageio_daemon):
    from imagetool.transfer.session import TransferSession
    import time

    disk = upload_disk(transfer_engine.conn, raw_file, "data")
    with TransferSession(transfer_engine.conn, disk_id=disk.id, direction="download",
                         inactivity_timeout=2, extend=True) as s:
        s.open_backend()
        time.sleep(2.5)
        info = imageio_daemon.ticket_info(s.transfer_id)
        # OPTIONS from the keep-alive thread (idle > 1 s, checked every 0.5 s)
        # kept the ticket busy.
        assert info["idle_time"] < 2.2     # without pings it would be >= 2.5
    assert ("extend", s.transfer_id) in transfer_engine.calls
    assert s.finished


@pytest.mark.slow
def test_system_pause_stops_the_copy(transfer_engine, raw_file):
    import time

    def progress(n):
        with transfer_engine.lock:
            t = list(transfer_engine.transfers.values())[-1]
            t.phase = "paused_system"
        time.sleep(0.2)

    with pytest.raises(TransferError, match="paused_system"):
        upload_disk(transfer_engine.conn, raw_file, "data", workers=1, buffer_size=256 * 1024,
                    inactivity_timeout=2, progress=progress)
    assert _no_locked_disks(transfer_engine)
