"""DataPlaneServer driven by the REAL ovirt_imageio.client (and by our own client)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from imageio_daemon import scratch, scratch_dir, server_ssl_context, tls_files  # noqa: F401
from imagetool.errors import ConnectionFailed
from imagetool.formats.raw import RawBackend
from imagetool.imageio import ImageioClient
from imagetool.server.dataplane import DataPlaneServer
from imagetool.server.tickets import Ticket, TicketRegistry

reference = pytest.importorskip("ovirt_imageio.client")

MiB = 1024 * 1024
SIZE = 8 * MiB


@pytest.fixture(params=["http", "https"])
def server(request, tls_files):
    ctx = server_ssl_context(tls_files) if request.param == "https" else None
    srv = DataPlaneServer(TicketRegistry(), ssl_context=ctx).start()
    srv.cafile = tls_files.ca_file if ctx else None
    yield srv
    srv.stop()
    for t in srv.registry.all():
        srv.registry.remove(t.uuid)


def _add(server, path, size=SIZE, ops=("read", "write"), **kw) -> str:
    ticket = Ticket(uuid=f"ticket-{os.urandom(6).hex()}", size=size, ops=tuple(ops),
                    open_backend=lambda: RawBackend(path, "r+" if "write" in ops else "r"),
                    **kw)
    server.registry.add(ticket)
    return f"{server.url}/images/{ticket.uuid}"


def _sparse_source(directory: str) -> str:
    src = os.path.join(directory, "src.raw")
    with open(src, "wb") as f:
        f.truncate(SIZE)
        f.seek(MiB)
        f.write(os.urandom(2 * MiB + 4096))
        f.seek(6 * MiB + 512)
        f.write(os.urandom(70000))
    return src


def _empty(directory: str, name: str, size: int = SIZE) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _compare(a: str, b: str, fmt_b: str = "raw") -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", fmt_b, a, b],
                          capture_output=True, text=True)


def test_reference_upload_download_round_trip(server, scratch):
    src = _sparse_source(scratch)
    dst = _empty(scratch, "dst.raw")
    url = _add(server, dst)
    reference.upload(src, url, server.cafile, max_workers=4)
    assert _compare(src, dst).returncode == 0
    with open(src, "rb") as a, open(dst, "rb") as b:
        assert a.read() == b.read()
    for fmt in ("raw", "qcow2"):
        back = os.path.join(scratch, f"back.{fmt}")
        reference.download(url, back, server.cafile, fmt=fmt, max_workers=2)
        result = _compare(src, back, fmt)
        assert result.returncode == 0, result.stdout + result.stderr


def test_reference_upload_of_qcow2_source(server, scratch):
    src = _sparse_source(scratch)
    qcow2 = os.path.join(scratch, "src.qcow2")
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", src, qcow2],
                   check=True)
    dst = _empty(scratch, "dst.raw")
    reference.upload(qcow2, _add(server, dst), server.cafile)
    assert _compare(src, dst).returncode == 0


def test_reference_imageio_client_class(server, scratch):
    path = _empty(scratch, "disk.raw")
    url = _add(server, path)
    data = os.urandom(MiB)
    with reference.ImageioClient(url, cafile=server.cafile) as c:
        assert c.size() == SIZE
        assert c.max_writers >= 1 and c.max_readers >= 1
        c.write(4096, data)
        c.zero(4096, 8192)
        c.flush()
        buf = bytearray(MiB)
        c.read(4096, buf)
        exts = list(c.extents())
        assert exts[0].start == 0 and exts[-1].start + exts[-1].length == SIZE
    expected = bytes(8192) + data[8192:]
    assert bytes(buf) == expected
    with open(path, "rb") as f:
        f.seek(4096)
        assert f.read(MiB) == expected


def test_checksum_matches_reference_client(server, scratch):
    pytest.importorskip("imagetool.checksum")
    src = _sparse_source(scratch)
    url = _add(server, src, ops=("read",))
    expected = reference.checksum(src)
    with ImageioClient(url, cafile=server.cafile) as c:
        assert c.checksum() == expected
        assert c.checksum(block_size=MiB)["checksum"] == \
            reference.checksum(src, block_size=MiB)["checksum"]


def test_our_client_round_trip_and_idle_reconnect(server, scratch):
    path = _empty(scratch, "disk.raw")
    url = _add(server, path, inactivity_timeout=0.3)
    data = os.urandom(3 * MiB + 100)
    with ImageioClient(url, cafile=server.cafile) as c:
        assert c.options().features == {"checksum", "extents", "flush", "zero"}
        c.write(MiB, data)
        # The server drops the idle connection; the next request reconnects.
        time.sleep(0.8)
        buf = bytearray(len(data))
        assert c.read_into(MiB, memoryview(buf)) == len(data)
        assert buf == data
        c.zero(MiB, 4096)
        c.flush()
    with open(path, "rb") as f:
        f.seek(MiB)
        assert f.read(len(data)) == bytes(4096) + data[4096:]


def test_expired_ticket_refused_by_reference_client(server, scratch):
    path = _empty(scratch, "disk.raw")
    url = _add(server, path, timeout=0.3)
    time.sleep(0.6)
    with pytest.raises(Exception) as e:
        reference.download(url, os.path.join(scratch, "x.raw"), server.cafile, fmt="raw")
    assert "403" in str(e.value) or "expired" in str(e.value)


def test_stop_closes_connections():
    d = scratch_dir()
    path = _empty(d, "disk.raw", MiB)
    srv = DataPlaneServer(TicketRegistry()).start()
    url = _add(srv, path, size=MiB)
    c = ImageioClient(url)
    c.options()
    assert srv.connection_count == 1
    srv.stop()
    assert srv.connection_count == 0
    with pytest.raises(ConnectionFailed):
        c.extents()
    c.close()
    shutil.rmtree(d, ignore_errors=True)
