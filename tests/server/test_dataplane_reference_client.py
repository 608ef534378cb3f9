"""DataPlaneServer driven by the REAL ovirt_imageio.client (and by our own client)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from helpers import MiB
from imageio_daemon import scratch_dir, server_ssl_context
from imagetool.checksum import checksum_file
from imagetool.errors import ConnectionFailed
from imagetool.formats.raw import RawBackend
from imagetool.imageio import ImageioClient
from imagetool.server.dataplane import DataPlaneServer
from imagetool.server.tickets import Ticket, TicketRegistry

reference = pytest.importorskip("ovirt_imageio.client")

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


def _add(server, path, size=SIZE, ops=("read", "write"), direct=True, **kw) -> str:
    ticket = Ticket(uuid=f"ticket-{os.urandom(6).hex()}", size=size, ops=tuple(ops),
                    open_backend=lambda: RawBackend(path, "r+" if "write" in ops else "r",
                                                    direct=direct),
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_checksum_matches_reference_client(server, scratch):
    pytest.importorskip("imagetool.checksum")
    src = _sparse_source(scratch)
    url = _add(server, src, ops=("read",))
    expected = reference.checksum(src)
    with ImageioClient(url, cafile=server.cafile) as c:
        assert c.checksum() == expected
        assert c.checksum(block_size=MiB)["checksum"] == \
            reference.checksum(src, block_size=MiB)["checksum"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_expired_ticket_refused_by_reference_client(server, scratch):
    path = _empty(scratch, "disk.raw")
    url = _add(server, path, timeout=0.3)
    time.sleep(0.6)
    with pytest.raises(Exception) as e:
        reference.download(url, os.path.join(scratch, "x.raw"), server.cafile, fmt="raw")
    assert "403" in str(e.value) or "expired" in str(e.value)


@pytest.mark.slow
def test_stop_closes_connections(tls_files):
    """stop() shuts every idle keep-alive connection down, TLS ones too (a
    TLS socket owns the descriptor its plain socket had): when it returns,
    no connection thread is left and the client finds the connection gone."""
    d = scratch_dir()
    try:
        path = _empty(d, "disk.raw", MiB)
        for ctx in (None, server_ssl_context(tls_files)):
            srv = DataPlaneServer(TicketRegistry(), ssl_context=ctx).start()
            url = _add(srv, path, size=MiB)
            c = ImageioClient(url, cafile=tls_files.ca_file if ctx else None)
            c.options()
            assert srv.connection_count == 1
            # Let the connection thread go back to waiting for a request
            # (stopping earlier, it ends on its own and the test shows nothing).
            time.sleep(0.5)
            srv.stop(timeout=30)
            assert srv.connection_count == 0, "a connection thread outlived stop()"
            with pytest.raises(ConnectionFailed):
                c.extents()
            c.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_buffered_path_with_unaligned_size_and_offsets(server, scratch):
    size = SIZE - 1000           # not a multiple of 4096: odd tail
    data = os.urandom(size)
    src = os.path.join(scratch, "src.raw")
    with open(src, "wb") as f:
        f.write(data)
    for direct in (False, True):
        dst = _empty(scratch, f"dst-{direct}.raw", size)
        url = _add(server, dst, size=size, direct=direct)
        with ImageioClient(url, cafile=server.cafile) as c:
            # Pieces with unaligned offsets and lengths, then the odd tail.
            pos = 0
            for n in (1, 4095, 4097, 3 * MiB + 17, size):
                n = min(n, size - pos)
                c.write(pos, memoryview(data)[pos:pos + n])
                pos += n
            c.flush()
            buf = bytearray(size - 3)
            c.read_into(3, memoryview(buf))
            assert buf == data[3:]
            tail = bytearray(777)
            c.read_into(size - 777, memoryview(tail))
            assert tail == data[-777:]
            # The checksum's read-back: O_DIRECT for the aligned part when
            # direct, the odd tail through the page cache.
            assert c.checksum(algorithm="sha256") == checksum_file(src, algorithm="sha256")
        with open(dst, "rb") as f:
            assert f.read() == data
        raw = RawBackend(dst, "r", direct=direct)
        assert raw.direct == direct
        raw.close()


@pytest.mark.slow
def test_qcow2_guest_data_ticket(server, scratch):
    """A read ticket serving a qcow2's guest data (raw-format download of a cow disk)."""
    from imagetool.formats import open_image
    src = _sparse_source(scratch)
    qcow2 = os.path.join(scratch, "disk.qcow2")
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", src, qcow2],
                   check=True)
    ticket = Ticket(uuid="qcow2-guest", size=SIZE, ops=("read",),
                    open_backend=lambda: open_image(qcow2, "r"))
    server.registry.add(ticket)
    url = f"{server.url}/images/{ticket.uuid}"
    back = os.path.join(scratch, "back.raw")
    reference.download(url, back, server.cafile, fmt="raw")
    assert _compare(src, back).returncode == 0
    with ImageioClient(url, cafile=server.cafile) as c:
        assert c.checksum()["checksum"] == reference.checksum(qcow2)["checksum"]
        data = [(e.start, e.length) for e in c.extents() if not e.zero]
    # qemu's own map of the qcow2 says where the data is.
    out = subprocess.run(["qemu-img", "map", "--output=json", qcow2],
                         capture_output=True, text=True, check=True).stdout
    import json
    expected = [(m["start"], m["length"]) for m in json.loads(out) if m["data"]]
    assert data == expected


def test_qcow2_writer_ticket(server, scratch):
    """An upload ticket writing guest data into a qcow2 (raw upload to a cow disk)."""
    from imagetool.formats.qcow2_writer import Qcow2Writer
    src = _sparse_source(scratch)
    qcow2 = os.path.join(scratch, "disk.qcow2")
    ticket = Ticket(uuid="qcow2-writer", size=SIZE, ops=("read", "write"),
                    open_backend=lambda: Qcow2Writer.create(qcow2, SIZE))
    server.registry.add(ticket)
    reference.upload(src, f"{server.url}/images/{ticket.uuid}", server.cafile)
    server.registry.remove(ticket.uuid)           # closes the writer
    check = subprocess.run(["qemu-img", "check", qcow2], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    result = _compare(src, qcow2, "qcow2")
    assert result.returncode == 0, result.stdout + result.stderr


def test_refused_large_put_reports_status(server, scratch):
    """An 8 MiB PUT the server refuses before reading it still gets its status."""
    from imagetool.errors import ImageioError
    path = _empty(scratch, "disk.raw")
    ro = _add(server, path, ops=("read",))
    rw = _add(server, path)
    big = memoryview(os.urandom(8 * MiB))
    with ImageioClient(ro, cafile=server.cafile) as c:
        with pytest.raises(ImageioError) as e:
            c.write(0, big)
        assert e.value.status == 403 and "forbids write" in str(e.value)
    with ImageioClient(rw, cafile=server.cafile) as c:
        with pytest.raises(ImageioError) as e:
            c.write(SIZE - MiB, big)
        assert e.value.status == 416
        # The client reconnects for the next request.
        c.write(0, big[:MiB])
    with open(path, "rb") as f:
        assert f.read(MiB) == big[:MiB]
