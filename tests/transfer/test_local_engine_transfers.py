"""upload_disk / download_disk end to end against the local engine (in-process, TLS)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import pytest

from fault_proxy import DroppingProxy
from helpers import (MiB, images_equal, make_raw, qemu_img, sigint_after,
                     sigint_at_thread_start)
from imagetool.errors import ImagetoolError
from imagetool.transfer.download import download_disk
from imagetool.transfer.session import TransferSession
from imagetool.transfer.upload import upload_disk, upload_disk_result

def _locked(own_conn):
    return [d.name for d in own_conn.disks.list() if d.status == "locked"]


def _roundtrip(own_conn, module_dir, src_key, images, fmt_out="raw", **kw):
    src = images[src_key]
    disk = upload_disk(own_conn, src, "data", **kw)
    assert disk.status == "ok"
    out = os.path.join(module_dir, f"out-{disk.id}.{fmt_out}")
    download_disk(own_conn, disk, out, format=fmt_out, workers=kw.get("workers", 4))
    ref = images["empty"] if src_key == "empty" else images["raw"]
    assert images_equal(ref, out, "raw", fmt_out)
    if fmt_out == "qcow2":
        qemu_img("check", out)
    return disk, out


@pytest.mark.slow
@pytest.mark.parametrize("src_key,disk_format,expect", [
    ("raw", None, "raw"), ("qcow2", None, "cow"), ("compressed", None, "cow"),
    ("qcow2", "raw", "raw"), ("raw", "qcow2", "cow")])
def test_upload_download_formats(own_conn, module_dir, images, src_key, disk_format, expect):
    disk, _ = _roundtrip(own_conn, module_dir, src_key, images, disk_format=disk_format)
    assert disk.format == expect and disk.provisioned_size == os.path.getsize(images["raw"])
    if expect == "cow":
        assert 0 < disk.initial_size < disk.provisioned_size


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 8])
def test_workers(own_conn, module_dir, images, workers):
    _roundtrip(own_conn, module_dir, "raw", images, fmt_out="qcow2", workers=workers,
               buffer_size=MiB)


@pytest.mark.slow
def test_cow_transfer_of_qcow2_bytes(own_conn, module_dir, images):
    disk, _ = _roundtrip(own_conn, module_dir, "qcow2", images, transfer_format="cow")
    assert disk.format == "cow"


def test_sparse_image_stays_sparse(own_conn, module_dir, images):
    res = upload_disk_result(own_conn, images["empty"], "data")
    # Nothing to send: every range was a hole skipped on the new disk.
    assert res.stats.bytes_copied == 0
    out = os.path.join(module_dir, "empty-out.raw")
    download_disk(own_conn, res.disk_id, out)
    assert images_equal(images["empty"], out, "raw", "raw")
    assert os.stat(out).st_blocks == 0


@pytest.mark.slow
def test_iso(own_conn, module_dir):
    iso = os.path.join(module_dir, "cd.iso")
    make_raw(iso, 4 * MiB, [(0, 64 * 1024)], seed=9)
    with open(iso, "r+b") as f:
        f.seek(0x8000)
        f.write(b"\x01CD001\x01\x00")
    disk = upload_disk(own_conn, iso, "data")
    assert disk.content_type == "iso" and disk.format == "raw"
    out = os.path.join(module_dir, "cd-out.iso")
    download_disk(own_conn, disk, out)
    with open(iso, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read()


def _interrupted_upload_left_nothing(own_conn, images, home, calls: int = 2) -> None:
    """An upload Ctrl-C'd at its ``calls``-th progress call: KeyboardInterrupt,
    no disk locked, the half-uploaded disk removed, no transfer open, no
    journal left (journals kept in ``home``, which the caller made
    $IMAGETOOL_HOME)."""
    from imagetool.phases import ENDED
    before = {d.id for d in own_conn.disks.list()}
    n = []

    def progress(k):
        n.append(k)
        if len(n) == calls:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upload_disk(own_conn, images["raw"], "data", workers=2, buffer_size=MiB,
                    progress=progress)
    assert _locked(own_conn) == []
    assert {d.id for d in own_conn.disks.list()} == before
    assert not [t.phase for t in own_conn.transfers.list() if t.phase not in ENDED]
    assert not os.listdir(home / "journals")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """$IMAGETOOL_HOME of this test alone: its journals are its own."""
    monkeypatch.setenv("IMAGETOOL_HOME", str(tmp_path))
    return tmp_path


def test_interrupt_cancels_and_unlocks(own_conn, images, home):
    _interrupted_upload_left_nothing(own_conn, images, home)


@pytest.mark.slow
def test_dropped_connection_cancels(own_conn, images, monkeypatch, fast_backoff):
    proxies = []
    pick = TransferSession._pick_urls

    def through_proxy(self, t):
        url, _ = pick(self, t)
        parts = urlsplit(url)
        proxy = DroppingProxy(parts.port, drop_after=3 * MiB)
        proxies.append(proxy)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}")), None

    monkeypatch.setattr(TransferSession, "_pick_urls", through_proxy)
    before = {d.id for d in own_conn.disks.list()}
    try:
        with pytest.raises(ImagetoolError) as info:
            upload_disk(own_conn, images["raw"], "data", workers=2, buffer_size=MiB)
    finally:
        for p in proxies:
            p.close()
    assert "writing destination" in str(info.value) or "connect" in str(info.value).lower()
    assert _locked(own_conn) == []
    assert {d.id for d in own_conn.disks.list()} == before


@pytest.mark.slow
def test_failed_download_leaves_no_file(own_conn, module_dir, images):
    disk = upload_disk(own_conn, images["raw"], "data")
    d = os.path.join(module_dir, "dl-fail")
    os.mkdir(d)

    def progress(k):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_disk(own_conn, disk, os.path.join(d, "x.raw"), progress=progress)
    assert os.listdir(d) == []
    assert own_conn.disks.get(disk.id).status == "ok"


def test_a_second_ctrl_c_during_the_cancel_still_unlocks(own_conn, images, monkeypatch,
                                                         home):
    """Ctrl-C during an upload, then a real SIGINT while its transfer is
    being cancelled: the cancel still ends the transfer and waits for the
    disk, and the interrupt comes after."""
    import signal
    real_cancel = own_conn.transfers.cancel

    def cancel(transfer_id):
        os.kill(os.getpid(), signal.SIGINT)
        real_cancel(transfer_id)
    monkeypatch.setattr(own_conn.transfers, "cancel", cancel)
    _interrupted_upload_left_nothing(own_conn, images, home, calls=1)


@pytest.mark.parametrize("service", ["disks", "transfers"])
def test_ctrl_c_while_an_add_is_in_flight_leaves_nothing(own_conn, images, monkeypatch,
                                                          home, service):
    """A real SIGINT while the upload's disk or transfer is being added: the
    engine made it, the upload never got its id; it goes all the same (the
    transfer cancelled, its disk unlocked and removed)."""
    sigint_after(monkeypatch, getattr(own_conn, service))
    _interrupted_upload_left_nothing(own_conn, images, home, calls=0)



@pytest.mark.slow
def test_ctrl_c_as_each_thread_of_an_upload_starts_leaves_nothing(own_conn, images,
                                                                  monkeypatch, home):
    """A real SIGINT as each thread the upload starts is started, one run
    each: the upload stops and leaves nothing (the disk and transfer adds
    ran in a worker that went on without the interrupted caller, so the
    transfer stayed open and the disk locked: issue 20's hang)."""
    with monkeypatch.context() as m:
        counted = sigint_at_thread_start(m)
        disk = upload_disk(own_conn, images["raw"], "data", workers=2, buffer_size=MiB)
    own_conn.disks.remove(disk.id)
    assert counted, "the upload started no thread: nothing was tried"
    for k in range(1, len(counted) + 1):
        with monkeypatch.context() as m:
            sigint_at_thread_start(m, k)
            _interrupted_upload_left_nothing(own_conn, images, home, calls=0)


def test_ctrl_c_before_the_transfer_is_opened_leaves_no_disk(own_conn, images, monkeypatch,
                                                             home):
    """A Ctrl-C after the disk is made, before its transfer session exists:
    the disk goes."""
    from imagetool.transfer import disk as disk_mod

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(disk_mod, "open_session", interrupted)
    _interrupted_upload_left_nothing(own_conn, images, home, calls=0)
