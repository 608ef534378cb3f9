"""upload_disk / download_disk end to end against the local engine (in-process, TLS)."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlsplit, urlunsplit

import pytest

from fault_proxy import DroppingProxy
from helpers import MiB, images_equal, make_raw, qemu_img
from imageio_daemon import scratch_dir
from imagetool.engine import Connection
from imagetool.errors import ImagetoolError
from imagetool.transfer.download import download_disk
from imagetool.transfer.session import TransferSession
from imagetool.transfer.upload import upload_disk, upload_disk_result

SIZE = 12 * MiB
DATA = [(0, MiB), (3 * MiB + 4096, 512 * 1024), (7 * MiB, 3 * MiB)]


@pytest.fixture(scope="module")
def workdir():
    d = scratch_dir("transfer-local-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def conn(workdir):
    from imagetool.server.local import LocalEngine

    with LocalEngine(os.path.join(workdir, "engine")) as eng:
        with Connection(eng.url, username=eng.username, password=eng.password,
                        cafile=eng.cafile) as c:
            yield c


@pytest.fixture(scope="module")
def images(workdir):
    raw = os.path.join(workdir, "src.raw")
    make_raw(raw, SIZE, DATA, seed=21)
    qcow2 = os.path.join(workdir, "src.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, qcow2)
    compressed = os.path.join(workdir, "src-c.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", raw, compressed)
    empty = os.path.join(workdir, "empty.raw")
    make_raw(empty, 64 * MiB, [], seed=0)          # all holes
    return {"raw": raw, "qcow2": qcow2, "compressed": compressed, "empty": empty}


def _locked(conn):
    return [d.name for d in conn.disks.list() if d.status == "locked"]


def _roundtrip(conn, workdir, src_key, images, fmt_out="raw", **kw):
    src = images[src_key]
    disk = upload_disk(conn, src, "data", **kw)
    assert disk.status == "ok"
    out = os.path.join(workdir, f"out-{disk.id}.{fmt_out}")
    download_disk(conn, disk, out, format=fmt_out, workers=kw.get("workers", 4))
    ref = images["empty"] if src_key == "empty" else images["raw"]
    assert images_equal(ref, out, "raw", fmt_out)
    if fmt_out == "qcow2":
        qemu_img("check", out)
    return disk, out


@pytest.mark.slow
@pytest.mark.parametrize("src_key,disk_format,expect", [
    ("raw", None, "raw"), ("qcow2", None, "cow"), ("compressed", None, "cow"),
    ("qcow2", "raw", "raw"), ("raw", "qcow2", "cow")])
def test_upload_download_formats(conn, workdir, images, src_key, disk_format, expect):
    disk, _ = _roundtrip(conn, workdir, src_key, images, disk_format=disk_format)
    assert disk.format == expect and disk.provisioned_size == SIZE
    if expect == "cow":
        assert 0 < disk.initial_size < SIZE


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 8])
def test_workers(conn, workdir, images, workers):
    _roundtrip(conn, workdir, "raw", images, fmt_out="qcow2", workers=workers,
               buffer_size=MiB)


@pytest.mark.slow
def test_cow_transfer_of_qcow2_bytes(conn, workdir, images):
    disk, _ = _roundtrip(conn, workdir, "qcow2", images, transfer_format="cow")
    assert disk.format == "cow"


def test_sparse_image_stays_sparse(conn, workdir, images):
    res = upload_disk_result(conn, images["empty"], "data")
    # Nothing to send: every range was a hole skipped on the new disk.
    assert res.stats.bytes_copied == 0
    out = os.path.join(workdir, "empty-out.raw")
    download_disk(conn, res.disk_id, out)
    assert images_equal(images["empty"], out, "raw", "raw")
    assert os.stat(out).st_blocks == 0


@pytest.mark.slow
def test_iso(conn, workdir):
    iso = os.path.join(workdir, "cd.iso")
    make_raw(iso, 4 * MiB, [(0, 64 * 1024)], seed=9)
    with open(iso, "r+b") as f:
        f.seek(0x8000)
        f.write(b"\x01CD001\x01\x00")
    disk = upload_disk(conn, iso, "data")
    assert disk.content_type == "iso" and disk.format == "raw"
    out = os.path.join(workdir, "cd-out.iso")
    download_disk(conn, disk, out)
    with open(iso, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read()


def test_interrupt_cancels_and_unlocks(conn, images):
    before = {d.id for d in conn.disks.list()}
    n = []

    def progress(k):
        n.append(k)
        if len(n) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upload_disk(conn, images["raw"], "data", workers=2, buffer_size=MiB,
                    progress=progress)
    assert _locked(conn) == []
    # The engine removed the half-uploaded disk.
    assert {d.id for d in conn.disks.list()} == before
    assert not [t for t in conn.transfers.list()
                if t.phase in ("transferring", "initializing")]


def test_dropped_connection_cancels(conn, images, monkeypatch, fast_backoff):
    proxies = []
    pick = TransferSession._pick_urls

    def through_proxy(self, t):
        url, _ = pick(self, t)
        parts = urlsplit(url)
        proxy = DroppingProxy(parts.port, drop_after=3 * MiB)
        proxies.append(proxy)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}")), None

    monkeypatch.setattr(TransferSession, "_pick_urls", through_proxy)
    before = {d.id for d in conn.disks.list()}
    try:
        with pytest.raises(ImagetoolError) as info:
            upload_disk(conn, images["raw"], "data", workers=2, buffer_size=MiB)
    finally:
        for p in proxies:
            p.close()
    assert "writing destination" in str(info.value) or "connect" in str(info.value).lower()
    assert _locked(conn) == []
    assert {d.id for d in conn.disks.list()} == before


@pytest.mark.slow
def test_failed_download_leaves_no_file(conn, workdir, images):
    disk = upload_disk(conn, images["raw"], "data")
    d = os.path.join(workdir, "dl-fail")
    os.mkdir(d)

    def progress(k):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_disk(conn, disk, os.path.join(d, "x.raw"), progress=progress)
    assert os.listdir(d) == []
    assert conn.disks.get(disk.id).status == "ok"
