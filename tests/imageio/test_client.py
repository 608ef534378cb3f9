"""imagetool.imageio.ImageioClient / HttpBackend against the REAL ovirt-imageio daemon."""

from __future__ import annotations

import os
import random
import socket
import subprocess

import pytest

from helpers import MiB
from imageio_daemon import QemuNbd
from imagetool.errors import ConnectionFailed, ImageioError
from imagetool.iocore.backend import Extent
from imagetool.imageio import HttpBackend, ImageioClient

SIZE = 8 * MiB


def _image(directory: str, name: str = "disk.raw", size: int = SIZE,
           data: bytes | None = None) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.truncate(size)
        if data:
            f.write(data)
    return path


def _file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_options_writable_and_read_only(imageio_daemon, scratch):
    path = _image(scratch)
    rw = ImageioClient(imageio_daemon.add_ticket(path=path, size=SIZE))
    ro = ImageioClient(imageio_daemon.add_ticket(path=path, size=SIZE, ops=["read"]))
    with rw, ro:
        assert rw.options().features == {"checksum", "extents", "flush", "zero"}
        assert rw.options().max_readers >= 1 and rw.options().max_writers >= 1
        assert ro.options().features == {"checksum", "extents"}
        assert rw.size() == SIZE
        assert ro.info()["version"]


def test_write_read_random_offsets_round_trip(imageio_daemon, scratch):
    path = _image(scratch)
    model = bytearray(SIZE)
    rnd = random.Random(1234)
    with ImageioClient(imageio_daemon.add_ticket(path=path, size=SIZE)) as client:
        for _ in range(12):
            length = rnd.randint(1, 512 * 1024)
            offset = rnd.randrange(0, SIZE - length)
            data = rnd.randbytes(length)
            client.write(offset, memoryview(data))
            model[offset:offset + length] = data
        client.flush()
        # Read back in odd-sized pieces through the same keep-alive connection.
        got = bytearray(SIZE)
        view = memoryview(got)
        pos = 0
        while pos < SIZE:
            n = min(SIZE - pos, rnd.randint(1, 3 * MiB))
            assert client.read_into(pos, view[pos:pos + n]) == n
            pos += n
    assert got == model
    assert _file_bytes(path) == bytes(model)


def test_zero_and_flush(imageio_daemon, scratch):
    data = os.urandom(2 * MiB)
    path = _image(scratch, data=data)
    with ImageioClient(imageio_daemon.add_ticket(path=path, size=SIZE)) as client:
        client.zero(4096, 65536 * 3, flush=False)
        client.write(MiB, b"\xaa" * 100, flush=True)
        client.flush()
        buf = bytearray(2 * MiB)
        client.read_into(0, memoryview(buf))
    expected = bytearray(data)
    expected[4096:4096 + 65536 * 3] = bytes(65536 * 3)
    expected[MiB:MiB + 100] = b"\xaa" * 100
    assert buf == expected
    assert _file_bytes(path)[:2 * MiB] == bytes(expected)


def test_extents_match_written_data_on_nbd_ticket(imageio_daemon, scratch):
    qcow2 = os.path.join(scratch, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow2, str(SIZE)], check=True)
    with QemuNbd(qcow2, "qcow2") as nbd:
        url = imageio_daemon.add_ticket(nbd_socket=nbd.socket_path, size=SIZE)
        with ImageioClient(url) as client:
            assert [(e.start, e.length, e.zero) for e in client.extents()] == [
                (0, SIZE, True)]
            client.write(MiB, os.urandom(MiB))
            client.write(5 * MiB, os.urandom(512 * 1024))
            client.flush()
            exts = client.extents()
            # The daemon reports guest data as it is: data where we wrote.
            data = [(e.start, e.length) for e in exts if not e.zero]
            assert data == [(MiB, MiB), (5 * MiB, 512 * 1024)]
            assert exts[0].start == 0 and exts[-1].end == SIZE
            assert all(a.end == b.start for a, b in zip(exts, exts[1:]))
            client.zero(MiB, MiB)
            client.flush()
            data = [(e.start, e.length) for e in client.extents() if not e.zero]
            assert data == [(5 * MiB, 512 * 1024)]


def test_checksum_equals_local_checksums(imageio_daemon, scratch):
    from ovirt_imageio import client as reference
    data = os.urandom(3 * MiB + 12345)
    path = _image(scratch, data=data)
    with ImageioClient(imageio_daemon.add_ticket(path=path, size=SIZE, ops=["read"])) as c:
        remote = c.checksum()
        remote_1m = c.checksum(block_size=MiB)
        assert "blake2b" in c.checksum_algorithms()
    assert remote["algorithm"] == "blake2b" and remote["block_size"] == 4 * MiB
    assert remote["checksum"] == reference.checksum(path)["checksum"]
    assert remote_1m["checksum"] == reference.checksum(path, block_size=MiB)["checksum"]
    assert remote_1m["checksum"] != remote["checksum"]
    checksum_mod = pytest.importorskip("imagetool.checksum")
    from imagetool.formats.raw import RawBackend
    with RawBackend(path) as local:
        assert checksum_mod.checksum(local)["checksum"] == remote["checksum"]


def test_unknown_ticket_is_403_without_ticket_id(imageio_daemon):
    secret = "0badc0de-feed-4bad-8bad-123456789abc"
    client = ImageioClient(f"{imageio_daemon.url}/images/{secret}")
    for _ in range(2):   # the server closes after 403: the client reconnects
        with pytest.raises(ImageioError) as e:
            client.options()
        assert e.value.status == 403
        assert "No such ticket" in str(e.value)
        assert secret not in str(e.value)
    with pytest.raises(ImageioError) as e:
        client.read_into(0, memoryview(bytearray(10)))
    assert e.value.status == 403 and secret not in str(e.value)
    assert "GET range 0-9" in str(e.value)


def test_read_past_end_is_416(imageio_daemon, scratch):
    path = _image(scratch)
    with ImageioClient(imageio_daemon.add_ticket(path=path, size=SIZE)) as client:
        with pytest.raises(ImageioError) as e:
            client.read_into(SIZE - 10, memoryview(bytearray(20)))
        assert e.value.status == 416
        # The connection stays usable after an error reply.
        buf = bytearray(10)
        assert client.read_into(SIZE - 10, memoryview(buf)) == 10


def test_write_to_read_only_ticket_is_403(imageio_daemon, scratch):
    path = _image(scratch)
    url = imageio_daemon.add_ticket(path=path, size=SIZE, ops=["read"])
    with ImageioClient(url) as client:
        with pytest.raises(ImageioError) as e:
            client.write(0, b"x" * (8 * MiB))
        assert e.value.status == 403
        assert url.rsplit("/", 1)[1] not in str(e.value)
    assert _file_bytes(path) == bytes(SIZE)


def test_http_backend_and_clone(imageio_daemon, scratch):
    data = os.urandom(SIZE)
    path = _image(scratch, data=data)
    with HttpBackend(ImageioClient(imageio_daemon.add_ticket(path=path, size=SIZE))) as b:
        assert b.size == SIZE
        assert "zero" in b.features and b.max_readers >= 1
        ext = list(b.extents())
        assert ext[0].start == 0 and ext[-1].end == SIZE
        with b.clone() as other:
            assert other.client is not b.client
            buf = bytearray(MiB)
            # Reading across the end returns only what exists.
            assert other.read_into(SIZE - 1000, memoryview(buf)) == 1000
            assert bytes(buf[:1000]) == data[-1000:]
            other.write(0, b"\x01" * 512)
            other.zero(512, 512)
            other.flush()
        got = bytearray(1024)
        b.read_into(0, memoryview(got))
    assert got == b"\x01" * 512 + bytes(512)


def test_connection_refused_and_proxy_fallback(imageio_daemon, scratch):
    path = _image(scratch)
    url = imageio_daemon.add_ticket(path=path, size=SIZE)
    dead = f"http://127.0.0.1:{_free_port()}/images/{url.rsplit('/', 1)[1]}"
    with pytest.raises(ConnectionFailed) as e:
        ImageioClient(dead, connect_timeout=2).options()
    assert url.rsplit("/", 1)[1] not in str(e.value)
    with ImageioClient(dead, proxy_url=url, signed_ticket="signed") as client:
        client.write(0, b"via proxy")
        buf = bytearray(9)
        client.read_into(0, memoryview(buf))
        assert buf == b"via proxy"


def test_tls_verification(imageio_daemon_tls, tls_files, scratch):
    path = _image(scratch)
    url = imageio_daemon_tls.add_ticket(path=path, size=SIZE)
    assert url.startswith("https://")
    with ImageioClient(url, cafile=tls_files.ca_file) as client:
        client.write(0, b"secure")
        buf = bytearray(6)
        client.read_into(0, memoryview(buf))
        assert buf == b"secure"
        assert client.clone().size() == SIZE
    # Without our CA the system store does not trust the daemon.
    with pytest.raises(ConnectionFailed):
        ImageioClient(url).options()
    with ImageioClient(url, insecure=True) as client:
        assert "zero" in client.options().features


class _OldDaemon:
    """A stand-in for a pre-OPTIONS imageio (405 on OPTIONS, no PATCH):
    only GET with Range and PUT with Content-Range, on an in-memory image."""

    def __init__(self, size: int, options_status: int = 405):
        import http.server
        import threading
        self.image = bytearray(size)
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_OPTIONS(self):
                owner.requests.append("OPTIONS")
                self._reply(options_status)

            def do_PATCH(self):
                owner.requests.append("PATCH")
                self._reply(405)

            def do_GET(self):
                owner.requests.append("GET")
                first, last = self.headers["Range"][len("bytes="):].split("-")
                first, last = int(first), int(last)
                self._reply(206, bytes(owner.image[first:last + 1]),
                            [("Content-Range", f"bytes {first}-{last}/{size}")])

            def do_PUT(self):
                owner.requests.append("PUT")
                first = int(self.headers["Content-Range"].split()[1].split("-")[0])
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.image[first:first + len(body)] = body
                self._reply(200)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/images/old-ticket"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
@pytest.mark.parametrize("options_status", [405, 204])
def test_server_without_features(options_status):
    old = _OldDaemon(MiB, options_status)
    try:
        old.image[:] = os.urandom(MiB)
        old.image[999] = old.image[1000 + 300 * 1024] = 0xFF
        with HttpBackend(ImageioClient(old.url)) as b:
            assert b.features == frozenset()
            assert b.size == MiB                       # from Content-Range
            assert list(b.extents()) == [(Extent(0, MiB))]
            b.zero(1000, 300 * 1024)                   # sent as data
            b.flush()                                  # nothing to send
        assert "PATCH" not in old.requests
        assert old.requests.count("PUT") >= 1
        assert old.image[1000:1000 + 300 * 1024] == bytes(300 * 1024)
        assert old.image[999] == old.image[1000 + 300 * 1024] == 0xFF
    finally:
        old.stop()


@pytest.mark.slow
def test_tls_eof_while_sending_reads_as_connection_closed(monkeypatch):
    """A TLS peer closing without close_notify surfaces as SSLEOFError ("EOF
    occurred in violation of protocol"): it is a closed connection, and the
    message says so, like a reset or a broken pipe."""
    import http.client
    import ssl

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)          # the kernel completes the handshake; nobody answers
    port = listener.getsockname()[1]
    real_send = http.client.HTTPConnection.send

    def send(self, data):
        if len(data) > 10000:   # the body, not the request line and headers
            raise ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)")
        return real_send(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", send)
    client = ImageioClient(f"http://127.0.0.1:{port}/images/7f3c2a90-ticket", read_timeout=0.5)
    try:
        with pytest.raises(ConnectionFailed) as e:
            client.write(0, b"x" * 65536)
        assert "connection closed by server" in str(e.value)
        assert "violation of protocol" not in str(e.value)
    finally:
        client.close()
        listener.close()
