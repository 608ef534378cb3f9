"""The local engine's data plane under hostile or unlucky clients, over TLS.

Raw sockets against the real engine's data plane: numbers that are digits
only to ``str.isdigit``, a process out of descriptors, more connections
than it serves, and clients that connect and never finish a request head.
Each case asserts the status and reason the client gets (a 4xx/5xx with a
clear reason, never a 500 traceback or a dead data plane).
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from urllib.parse import quote, urlsplit

import pytest

from helpers import MiB, api_json, api_request, wait_for


def _new_transfer(engine, name: str, direction: str) -> str:
    """A transferring image transfer's data-plane path (/images/<ticket>)."""
    body = (f"<disk><name>{name}</name><format>raw</format>"
            f"<provisioned_size>{MiB}</provisioned_size><storage_domains>"
            "<storage_domain><name>data</name></storage_domain></storage_domains></disk>")
    status, _, reply = api_request(engine, "POST", "disks", body,
                                   {"Content-Type": "application/xml"})
    assert status == 201, reply
    disk_id = ET.fromstring(reply).get("id")
    body = (f'<image_transfer><disk id="{disk_id}"/><direction>{direction}</direction>'
            "<format>raw</format></image_transfer>")
    status, _, reply = api_request(engine, "POST", "imagetransfers", body,
                                   {"Content-Type": "application/xml"})
    assert status == 201, reply
    tid = ET.fromstring(reply).get("id")
    t = wait_for(lambda: api_json(engine, "GET", f"imagetransfers/{tid}")[1],
                 lambda t: t.get("phase") == "transferring")
    return urlsplit(t["transfer_url"]).path


def _tls(engine, timeout: float = 10.0) -> ssl.SSLSocket:
    parts = urlsplit(engine.server.dataplane_url())
    ctx = ssl.create_default_context(cafile=engine.cafile)
    raw = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname=parts.hostname)


def _reply(sock: ssl.SSLSocket) -> tuple[int, str, dict, bytes]:
    """(status, reason, headers, body) of one reply read from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a reply: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    _, status, reason = lines[0].split(" ", 2)
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the reply body"
        body += chunk
    return int(status), reason, headers, body[:length]


def _exchange(engine, request: bytes) -> tuple[int, str, dict, bytes]:
    with _tls(engine) as s:
        s.sendall(request)
        return _reply(s)


@pytest.fixture(scope="module")
def upload_path(engine):
    return _new_transfer(engine, "hostile-up", "upload")


@pytest.fixture(scope="module")
def download_path(engine):
    return _new_transfer(engine, "hostile-down", "download")


@pytest.fixture
def dataplane(engine):
    return engine.server.dataplane


# --- numbers that only str.isdigit takes for digits (issue item 5) ------------

def test_content_length_superscript_digit_is_400(engine, upload_path):
    # b"\xb2" is '²' in latin-1, the head's encoding: isdigit() but not int().
    status, reason, _, body = _exchange(
        engine, f"PUT {upload_path} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Content-Length: \xb2\r\n\r\n")
    assert (status, reason) == (400, "Bad Request")
    assert body == b"Invalid Content-Length '\xc2\xb2': expecting ASCII digits\n"


def test_content_length_with_sign_is_400(engine, upload_path):
    status, reason, _, body = _exchange(
        engine, f"PUT {upload_path} HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\n"
        "abcd".encode())
    assert (status, reason) == (400, "Bad Request")
    assert body == b"Invalid Content-Length '+4': expecting ASCII digits\n"


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "\uff11" * 7])
def test_checksum_block_size_non_ascii_digits_is_400(engine, download_path, value):
    status, reason, _, body = _exchange(
        engine, f"GET {download_path}/checksum?block_size={quote(value)} HTTP/1.1\r\n"
        "Host: x\r\n\r\n".encode())
    assert (status, reason) == (400, "Bad Request")
    assert body.decode() == f"Invalid block size: {value!r}: expecting ASCII digits\n"


def test_range_with_non_ascii_digits_is_416(engine, download_path):
    # A latin-1 superscript in Range: not a range this server can satisfy.
    status, reason, headers, _ = _exchange(
        engine, f"GET {download_path} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Range: bytes=0-\xb9\r\n\r\n")
    assert (status, reason) == (416, "Requested Range Not Satisfiable")
    assert headers["content-range"] == f"bytes */{MiB}"


# --- accept() failures pass (issue item 4) -----------------------------------

@pytest.mark.slow
def test_accept_goes_on_after_running_out_of_descriptors(engine, download_path,
                                                         dataplane, monkeypatch):
    """EMFILE/ENFILE/ENOBUFS from accept() wait and retry; the data plane lives."""
    thread_name = f"dataplane-accept-{dataplane.port}"
    real_accept = socket.socket.accept
    failures = [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                errno.ECONNABORTED]
    failed = threading.Event()

    def accept(self):
        if threading.current_thread().name == thread_name and failures:
            code = failures.pop(0)
            failed.set()
            raise OSError(code, f"injected {errno.errorcode[code]}")
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "accept", accept)
    # The accept thread is inside the real accept(): one connection gets it
    # out; its next accept() calls fail.
    assert _exchange(engine, b"GET /info/ HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
    assert failed.wait(10), "accept() was not called again"
    # Served only once accept() went on after the failures.
    status, reason, _, body = _exchange(
        engine, f"GET {download_path} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n"
        .encode())
    assert (status, reason, len(body)) == (206, "Partial Content", 10)


@pytest.mark.slow
def test_accept_with_too_few_descriptors_in_a_subprocess(tmp_path):
    """A real EMFILE (RLIMIT_NOFILE lowered): later connections are served."""
    import subprocess
    import sys
    script = tmp_path / "emfile.py"
    script.write_text('''
import os, resource, socket, sys, time
from imagetool.server.dataplane import DataPlaneServer
from imagetool.server.tickets import TicketRegistry

resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
srv = DataPlaneServer(TicketRegistry()).start()
# Use up every descriptor, then connect twice. The accept() already waiting
# holds the descriptor it reserved and takes the first connection; the next
# accept() has none left (EMFILE).
first, c = socket.socket(), socket.socket()
c.settimeout(10)
hog = []
try:
    while True:
        hog.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
first.connect(("127.0.0.1", srv.port))
c.connect(("127.0.0.1", srv.port))
time.sleep(0.5)         # accept() keeps failing with EMFILE meanwhile
for fd in hog:
    os.close(fd)
c.sendall(b"GET /info/ HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
data = b""
while True:
    chunk = c.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.split(b"\\r\\n")[0].decode())
''')
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "HTTP/1.1 200 OK", out.stderr[-2000:]


# --- bounded resources before authentication (issue item 3) -------------------

def test_connections_over_the_limit_get_503(engine, dataplane, monkeypatch):
    # Earlier tests' connections may still be closing: one that ends during
    # the test would leave room for the connection meant to be refused.
    open_now = wait_for(lambda: dataplane.connection_count, lambda n: n == 0, 10)
    monkeypatch.setattr(dataplane, "max_connections", open_now + 2)
    held = [_tls(engine), _tls(engine)]
    try:
        for s in held:      # served: each answers on its keep-alive connection
            s.sendall(b"GET /info/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _reply(s)[0] == 200
        status, reason, headers, body = _exchange(
            engine, b"GET /info/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, reason) == (503, "Service Unavailable")
        assert body == f"Too many connections (limit {open_now + 2}); retry later\n".encode()
        assert headers["retry-after"] == "1" and headers["connection"] == "close"
    finally:
        for s in held:
            s.close()
    assert wait_for(lambda: dataplane.connection_count, lambda n: n <= open_now, 10) <= open_now
    assert _exchange(engine, b"GET /info/ HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


@pytest.mark.slow
def test_request_head_dripped_slowly_gets_408(engine, dataplane, monkeypatch):
    """A head arriving byte by byte, each in time, still has one deadline."""
    monkeypatch.setattr(dataplane, "head_timeout", 0.5)
    with _tls(engine) as s:
        s.sendall(b"GET /info/ HTTP/1.1\r\n")
        s.settimeout(0.1)
        deadline = time.monotonic() + 20
        got = b""
        while time.monotonic() < deadline:
            try:
                s.sendall(b"X")
            except OSError:
                break
            try:
                got = s.recv(65536)
                break
            except socket.timeout:
                continue
        s.settimeout(10)
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            assert chunk, f"closed without a reply: {got!r}"
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout"
    assert body == b"Request header not received in time\n"


@pytest.mark.slow
def test_idle_connection_before_any_request_is_closed(engine, dataplane, monkeypatch):
    monkeypatch.setattr(dataplane, "idle_timeout", 0.3)
    with _tls(engine, timeout=20) as s:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            data = b""
    assert data == b""
    assert _exchange(engine, b"GET /info/ HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


@pytest.mark.slow
def test_tls_hello_dripped_slowly_is_closed(engine, monkeypatch):
    """The handshake has one deadline, not one per received byte (ssl's
    do_handshake keeps one deadline for the whole handshake: a guard)."""
    from imagetool.server import dataplane
    monkeypatch.setattr(dataplane, "HANDSHAKE_TIMEOUT", 0.5)
    parts = urlsplit(engine.server.dataplane_url())
    # A TLS record header announcing a 512-byte handshake message, then its
    # body one byte at a time, each well within a per-receive timeout.
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00")
        s.settimeout(0.1)
        deadline = time.monotonic() + 20
        closed = False
        while not closed and time.monotonic() < deadline:
            try:
                s.sendall(b"\x01")
                closed = s.recv(65536) == b""
            except socket.timeout:
                continue
            except OSError:         # reset: closed too
                closed = True
    assert closed
