"""tests/support/fault_proxy.py against real upstream servers: a small threaded HTTP
server in this module (GET with Range, PUT with Content-Range into a
bytearray) and the REAL ovirt-imageio daemon."""

from __future__ import annotations

import http.client
import os
import random
import re
import socket
import ssl
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fault_proxy import (
    CutRequestBody, CutResponseBody, Delay, DropConnection, DropResponse, Expire403,
    FaultProxy, ProxyTls, Respond, Rule, expired_ticket_message)
from helpers import MiB, wait_for
from imageio_daemon import server_ssl_context

CONNECTION_ERRORS = (ConnectionError, http.client.RemoteDisconnected,
                     http.client.IncompleteRead, http.client.BadStatusLine)


# --- a small real upstream ---------------------------------------------------

class _Store:
    """What the upstream server holds and saw."""

    def __init__(self, size: int):
        self.data = bytearray(size)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []      # (method, path), at arrival
        self.put_received: list[int] = []              # body bytes read per PUT
        self.peers: set[tuple[str, int]] = set()       # client addresses seen


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # no 40 ms stalls between head and body
    server: "_Upstream"

    def log_message(self, *args) -> None:
        pass

    def _seen(self) -> _Store:
        store = self.server.store
        with store.lock:
            store.requests.append((self.command, self.path))
            store.peers.add(self.client_address)
        return store

    def do_GET(self) -> None:
        store = self._seen()
        size = len(store.data)
        if self.path.endswith("/chunked"):
            # The first 3 MiB as three chunks of 1 MiB.
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for pos in range(0, 3 * MiB, MiB):
                self.wfile.write(b"%x\r\n" % MiB + store.data[pos:pos + MiB] + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else size - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            start, end = 0, size - 1
            self.send_response(200)
        self.send_header("Content-Length", str(end + 1 - start))
        self.end_headers()
        view = memoryview(store.data)
        for pos in range(start, end + 1, MiB):
            self.wfile.write(view[pos:min(pos + MiB, end + 1)])

    def do_PUT(self) -> None:
        store = self._seen()
        length = int(self.headers["Content-Length"])
        m = re.match(r"bytes (\d+)-", self.headers.get("Content-Range", "bytes 0-"))
        offset = int(m.group(1))
        got = 0
        while got < length:
            chunk = self.rfile.read(min(MiB, length - got))
            if not chunk:
                break
            store.data[offset + got:offset + got + len(chunk)] = chunk
            got += len(chunk)
        with store.lock:
            store.put_received.append(got)
        if got < length:
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, size: int, context: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = _Store(size)
        self.context = context

    def get_request(self):
        sock, addr = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True)
        return sock, addr


@pytest.fixture
def upstream():
    server = _Upstream(8 * MiB)
    t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()
    t.join(5)


@pytest.fixture
def proxy(upstream):
    with FaultProxy(upstream=upstream.server_address) as p:
        yield p


def _conn(proxy: FaultProxy, timeout: float = 10.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)


def _wait_for(condition, timeout: float = 5.0) -> None:
    """Poll until ``condition()`` holds (upstream handlers run on their own threads)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _put(conn: http.client.HTTPConnection, offset: int, data: bytes,
         path: str = "/images/t1") -> int:
    conn.request("PUT", path, body=data, headers={
        "Content-Range": f"bytes {offset}-{offset + len(data) - 1}/*"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def _get(conn: http.client.HTTPConnection, offset: int, length: int,
         path: str = "/images/t1") -> bytes:
    conn.request("GET", path, headers={"Range": f"bytes={offset}-{offset + length - 1}"})
    resp = conn.getresponse()
    assert resp.status == 206
    return resp.read()


# --- faithful relaying -------------------------------------------------------

def test_relays_keepalive_exchanges_and_counts_bytes(upstream, proxy):
    data = random.Random(1).randbytes(3 * MiB + 123)
    conn = _conn(proxy)
    assert _put(conn, 0, data[:MiB]) == 200
    assert _put(conn, MiB, data[MiB:]) == 200
    assert _get(conn, 0, len(data)) == data
    assert _get(conn, 5, 10) == data[5:15]
    conn.close()

    assert bytes(upstream.store.data[:len(data)]) == data
    stats = proxy.stats
    assert stats.requests == {"PUT": 2, "GET": 2}
    # One client connection, carried on one upstream connection.
    assert stats.connections == 1 and stats.upstream_connections == 1
    assert len(upstream.store.peers) == 1
    assert stats.body_bytes_up == len(data)
    assert stats.body_bytes_down == len(data) + 10
    assert stats.bytes_up > stats.body_bytes_up and stats.bytes_down > stats.body_bytes_down
    assert stats.faults == []
    assert [m for m, _ in stats.history] == ["PUT", "PUT", "GET", "GET"]


def test_streams_large_bodies_without_buffering(upstream, proxy):
    # 24 MiB up and down must not be held whole: the proxy's peak allocation
    # stays near one relay buffer per direction.
    data = os.urandom(8 * MiB)
    conn = _conn(proxy)
    tracemalloc.start()
    try:
        for i in range(3):
            # Send from a memoryview so the client itself copies nothing big.
            conn.request("PUT", "/images/big", body=memoryview(data), headers={
                "Content-Range": f"bytes 0-{len(data) - 1}/*"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        conn.request("GET", "/images/big")
        resp = conn.getresponse()
        got = bytearray()
        while chunk := resp.read(MiB):
            got += chunk
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    conn.close()
    assert got == data
    # The received copy alone is 8 MiB; a buffering proxy would add 8+ more.
    assert peak < len(data) + 6 * MiB, peak
    assert proxy.stats.body_bytes_up == 3 * len(data)


def test_chunked_response_and_expect_continue(upstream, proxy):
    upstream.store.data[:] = os.urandom(len(upstream.store.data))
    conn = _conn(proxy)
    for _ in range(2):                  # keep-alive holds after a chunked body
        conn.request("GET", "/images/chunked")
        resp = conn.getresponse()
        assert resp.read() == upstream.store.data[:3 * MiB]
    conn.close()
    # A cut in a chunked body counts the bytes as sent, chunk framing included.
    proxy.add_rule(Rule(method="GET", nth=1, action=CutResponseBody(after=MiB + 100)))
    conn = _conn(proxy)
    conn.request("GET", "/images/chunked")
    with pytest.raises(http.client.IncompleteRead):
        conn.getresponse().read()
    conn.close()

    # Expect: 100-continue passes the interim reply on before the body.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        body = b"x" * 1000
        s.sendall(b"PUT /images/e HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                  b"Content-Range: bytes 0-999/*\r\nExpect: 100-continue\r\n\r\n")
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100")
        s.sendall(body)
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")
    assert bytes(upstream.store.data[:1000]) == body


# --- each fault --------------------------------------------------------------

def test_cut_request_body(upstream, proxy):
    proxy.add_rule(Rule(method="PUT", path_re=r"^/images/", nth=2,
                        action=CutRequestBody(after=100_000)))
    data = os.urandom(2 * MiB)
    conn = _conn(proxy)
    assert _put(conn, 0, data[:MiB]) == 200
    with pytest.raises(CONNECTION_ERRORS):
        _put(conn, MiB, data[MiB:])
    conn.close()
    # The upstream handler records its short read on its own thread.
    _wait_for(lambda: len(upstream.store.put_received) == 2)
    assert upstream.store.put_received == [MiB, 100_000]
    assert bytes(upstream.store.data[MiB:MiB + 100_000]) == data[MiB:MiB + 100_000]
    assert upstream.store.data[MiB + 100_000:2 * MiB] == bytes(MiB - 100_000)
    stats = proxy.stats
    assert stats.body_bytes_up == MiB + 100_000
    assert [(f.method, f.path) for f in stats.faults] == [("PUT", "/images/t1")]


def test_cut_after_whole_request_loses_reply(upstream, proxy):
    # A body no longer than the cut point goes through, then the line drops.
    proxy.add_rule(Rule(method="GET", nth=1, action=CutRequestBody(after=0)))
    conn = _conn(proxy)
    with pytest.raises(CONNECTION_ERRORS):
        _get(conn, 0, 10)
    conn.close()
    _wait_for(lambda: upstream.store.requests)
    assert upstream.store.requests == [("GET", "/images/t1")]


def test_cut_response_body(upstream, proxy):
    upstream.store.data[:] = os.urandom(len(upstream.store.data))
    proxy.add_rule(Rule(method="GET", nth=1, action=CutResponseBody(after=300_000)))
    conn = _conn(proxy)
    conn.request("GET", "/images/t1", headers={"Range": f"bytes=0-{MiB - 1}"})
    resp = conn.getresponse()
    assert resp.status == 206           # the head went through whole
    with pytest.raises(http.client.IncompleteRead) as e:
        resp.read()
    assert e.value.partial == bytes(upstream.store.data[:300_000])
    conn.close()
    # The next connection is not cut (nth=1 fired already).
    conn = _conn(proxy)
    assert _get(conn, 0, MiB) == bytes(upstream.store.data[:MiB])
    conn.close()


def test_respond_keeps_connection_and_never_reaches_upstream(upstream, proxy):
    proxy.add_rule(Rule(method="PUT", nth=1,
                        action=Respond(503, body="try later", headers={"Retry-After": "1"})))
    proxy.add_rule(Rule(method="GET", nth=1, action=Respond(500)))
    conn = _conn(proxy)
    data = os.urandom(MiB)
    conn.request("PUT", "/images/t1", body=data,
                 headers={"Content-Range": f"bytes 0-{MiB - 1}/*"})
    resp = conn.getresponse()
    assert (resp.status, resp.read(), resp.getheader("Retry-After")) == \
        (503, b"try later", "1")
    conn.request("GET", "/images/t1", headers={"Range": "bytes=0-9"})
    resp = conn.getresponse()
    assert resp.status == 500
    resp.read()
    assert upstream.store.requests == []
    assert proxy.stats.upstream_connections == 0
    # The same keep-alive connection still works: the PUT body was drained.
    assert _put(conn, 0, data) == 200
    assert _get(conn, 0, MiB) == data
    conn.close()
    assert upstream.store.requests == [("PUT", "/images/t1"), ("GET", "/images/t1")]
    assert proxy.stats.connections == 1


def test_respond_close_early_reply(upstream, proxy):
    proxy.add_rule(Rule(method="PUT", action=Respond(500, "boom", close=True)))
    conn = _conn(proxy)
    conn.request("PUT", "/images/t1", body=os.urandom(4 * MiB),
                 headers={"Content-Range": f"bytes 0-{4 * MiB - 1}/*"})
    resp = conn.getresponse()
    assert (resp.status, resp.read(), resp.getheader("Connection")) == (500, b"boom", "close")
    assert upstream.store.requests == []
    conn.close()


def test_expire403_reads_like_imageio(upstream, proxy):
    proxy.add_rule(Rule(path_re=r"/images/tk-1\b", every=True, skip=1, action=Expire403()))
    conn = _conn(proxy)
    assert _put(conn, 0, b"a" * 4096, path="/images/tk-1?flush=n") == 200
    conn.request("PUT", "/images/tk-1?flush=y", body=b"b" * 4096,
                 headers={"Content-Range": "bytes 0-4095/*"})
    resp = conn.getresponse()
    assert resp.status == 403
    assert resp.read() == b"You are not allowed to access this resource: No such ticket tk-1\n"
    assert resp.getheader("Connection") == "close"
    conn.close()
    assert upstream.store.data[:4096] == b"a" * 4096
    # Every later request is refused too (every=True after skip=1).
    conn = _conn(proxy)
    conn.request("GET", "/images/tk-1", headers={"Range": "bytes=0-1"})
    assert conn.getresponse().status == 403
    conn.close()
    assert len(proxy.stats.faults) == 2


def test_drop_connection(upstream, proxy):
    proxy.add_rule(Rule(method="GET", nth=1, action=DropConnection()))
    proxy.add_rule(Rule(method="GET", nth=2, action=DropConnection(reset=True)))
    for _ in range(2):
        conn = _conn(proxy)
        with pytest.raises(CONNECTION_ERRORS):
            _get(conn, 0, 10)
        conn.close()
    assert upstream.store.requests == []
    conn = _conn(proxy)
    assert _get(conn, 0, 10) == bytes(10)
    conn.close()


def test_drop_response_applies_request_but_loses_reply(upstream, proxy):
    proxy.add_rule(Rule(method="PUT", nth=1, action=DropResponse()))
    conn = _conn(proxy)
    with pytest.raises(CONNECTION_ERRORS):
        _put(conn, 0, b"z" * 5000)
    conn.close()
    assert upstream.store.data[:5000] == b"z" * 5000
    assert upstream.store.put_received == [5000]


@pytest.mark.slow
def test_delay_past_read_timeout(upstream, proxy):
    proxy.add_rule(Rule(method="GET", nth=1, action=Delay(seconds=2.0)))
    proxy.add_rule(Rule(method="GET", nth=2, action=Delay(seconds=0.3)))
    conn = _conn(proxy, timeout=0.5)
    conn.request("GET", "/images/t1", headers={"Range": "bytes=0-9"})
    with pytest.raises(socket.timeout):
        conn.getresponse()
    conn.close()
    # A delay shorter than the timeout only slows the reply down.
    conn = _conn(proxy, timeout=5)
    start = time.monotonic()
    assert _get(conn, 0, 10) == bytes(10)
    assert time.monotonic() - start >= 0.3
    conn.close()


def test_nth_counts_across_keepalive_and_connections(upstream, proxy):
    rule = proxy.add_rule(Rule(method="GET", path_re=r"^/images/t1$", nth=(3, 5),
                               action=Respond(503)))
    conn = _conn(proxy)
    statuses = []
    for path in ["/images/t1", "/images/other", "/images/t1", "/images/t1", "/images/t1"]:
        conn.request("GET", path, headers={"Range": "bytes=0-0"})
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
    conn.close()
    conn = _conn(proxy)                 # counting goes on over a new connection
    for _ in range(2):
        conn.request("GET", "/images/t1", headers={"Range": "bytes=0-0"})
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
    conn.close()
    # Matches are t1 requests only: 1st, (other), 2nd, 3rd, 4th | 5th, 6th.
    assert statuses == [206, 206, 206, 503, 206, 503, 206]
    assert (rule.matched, rule.fired) == (6, 2)
    assert proxy.stats.connections == 2


def test_probability_is_seeded_and_times_caps(upstream, proxy):
    def pattern(seed: int, times: int | None = None) -> list[int]:
        proxy.clear_rules()
        proxy.add_rule(Rule(method="GET", probability=0.3, seed=seed, times=times,
                            action=Respond(503)))
        conn = _conn(proxy)
        out = []
        for _ in range(30):
            conn.request("GET", "/images/t1", headers={"Range": "bytes=0-0"})
            resp = conn.getresponse()
            resp.read()
            out.append(resp.status)
        conn.close()
        return out

    first, again, other = pattern(7), pattern(7), pattern(8)
    assert first == again
    assert first != other
    rnd = random.Random(7)
    assert first == [503 if rnd.random() < 0.3 else 206 for _ in range(30)]
    capped = pattern(7, times=2)
    assert capped.count(503) == 2
    assert capped[:capped.index(503) + 1] == first[:first.index(503) + 1]


def test_set_down_refuses_and_recovers(upstream, proxy):
    idle = _conn(proxy)
    assert _get(idle, 0, 4) == bytes(4)
    port = proxy.port
    proxy.set_down(True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # The open keep-alive connection was cut too.
    with pytest.raises(CONNECTION_ERRORS):
        _get(idle, 0, 4)
    idle.close()
    proxy.set_down(False)
    assert proxy.port == port
    conn = _conn(proxy)
    assert _get(conn, 0, 4) == bytes(4)
    conn.close()


def test_stop_closes_everything(upstream):
    """stop() cuts idle keep-alive connections and a request held by a Delay
    instead of waiting for them: it returns long before the delay ends."""
    proxy = FaultProxy(upstream=upstream.server_address).start()
    proxy.add_rule(Rule(method="GET", nth=4, action=Delay(seconds=600)))
    conns = [_conn(proxy) for _ in range(3)]
    for c in conns:
        assert _get(c, 0, 1) == b"\0"         # three live keep-alive connections
    waiter = _conn(proxy, timeout=120)
    waiter.request("GET", "/images/t1", headers={"Range": "bytes=0-0"})  # delayed
    assert proxy.wait_faults(1)
    stopped = threading.Event()
    threading.Thread(target=lambda: (proxy.stop(), stopped.set()), daemon=True).start()
    # A deadline for a loaded machine, far below the 600 s delay.
    assert stopped.wait(60), "stop() waits for the delayed request"
    # Every proxy thread ends (stop() joins them only up to its own deadline).
    wait_for(lambda: [t.name for t in threading.enumerate()
                      if t.name.startswith(f"fault-proxy-{proxy.port}")],
             lambda names: not names, timeout=60)
    with pytest.raises(CONNECTION_ERRORS):
        waiter.getresponse()
    for c in conns + [waiter]:
        c.close()


def test_tls_termination(tls_files):
    server = _Upstream(MiB, context=server_ssl_context(tls_files))
    t = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        tls = ProxyTls(cert_file=tls_files.cert_file, key_file=tls_files.key_file,
                       upstream_cafile=tls_files.ca_file)
        with FaultProxy(upstream=server.server_address, tls=tls) as proxy:
            proxy.add_rule(Rule(method="PUT", nth=2, action=CutRequestBody(after=1000)))
            assert proxy.url_for("/x") == f"https://127.0.0.1:{proxy.port}/x"
            ctx = ssl.create_default_context(cafile=tls_files.ca_file)
            conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx,
                                               timeout=10)
            data = os.urandom(200_000)
            assert _put(conn, 0, data) == 200
            assert _get(conn, 0, len(data)) == data
            second = os.urandom(200_000)
            with pytest.raises(CONNECTION_ERRORS + (ssl.SSLError,)):
                _put(conn, 0, second)
            conn.close()
            _wait_for(lambda: len(server.store.put_received) == 2)
            assert server.store.put_received == [200_000, 1000]
            assert bytes(server.store.data[:1000]) == second[:1000]
            assert bytes(server.store.data[1000:200_000]) == data[1000:]
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


# --- through the real reference daemon ---------------------------------------

def test_real_imageio_daemon(imageio_daemon, scratch):
    size = 4 * MiB
    image = os.path.join(scratch, "disk.raw")
    with open(image, "wb") as f:
        f.truncate(size)
    url = imageio_daemon.add_ticket(path=image, size=size)
    path = url[len(imageio_daemon.url):]
    data = os.urandom(size)
    with FaultProxy(upstream=("127.0.0.1", imageio_daemon.port)) as proxy:
        conn = _conn(proxy)
        conn.request("OPTIONS", path)
        resp = conn.getresponse()
        assert resp.status == 200 and b"features" in resp.read()
        assert _put(conn, 0, data, path=path + "?flush=y") == 200
        assert _get(conn, 0, size, path=path) == data

        proxy.add_rule(Rule(method="PUT", nth=1, action=CutRequestBody(after=MiB)))
        with pytest.raises(CONNECTION_ERRORS):
            _put(conn, 0, bytes(size), path=path)
        conn.close()
        # Only the forwarded first MiB (at most) reached the disk.
        with open(image, "rb") as f:
            on_disk = f.read()
        assert on_disk[MiB:] == data[MiB:]
        conn = _conn(proxy)
        assert _put(conn, 0, data[:MiB], path=path) == 200   # the daemon still works

        # Expire403 answers exactly like the daemon for a ticket it lacks.
        imageio_daemon.remove_ticket(url.rsplit("/", 1)[1])
        conn.request("GET", path, headers={"Range": "bytes=0-9"})
        real = conn.getresponse()
        real_body = real.read()
        conn.close()
        proxy.add_rule(Rule(method="GET", action=Expire403()))
        conn = _conn(proxy)
        conn.request("GET", path, headers={"Range": "bytes=0-9"})
        fake = conn.getresponse()
        assert (fake.status, fake.read()) == (real.status, real_body)
        for name in ("Content-Type", "Connection"):
            assert fake.getheader(name) == real.getheader(name)
        conn.close()
        assert real_body == expired_ticket_message(path).encode()


@pytest.mark.slow
def test_imagetool_client_through_proxy(imageio_daemon, scratch):
    # The proxy is transparent to the project's own client: every call gives
    # the same answer through it as directly.
    from imagetool.imageio import ImageioClient

    size = 4 * MiB
    image = os.path.join(scratch, "disk.raw")
    with open(image, "wb") as f:
        f.truncate(size)
    url = imageio_daemon.add_ticket(path=image, size=size)
    data = os.urandom(MiB)
    with FaultProxy(upstream=("127.0.0.1", imageio_daemon.port)) as proxy:
        via = ImageioClient(proxy.url_for(url[len(imageio_daemon.url):]))
        direct = ImageioClient(url)
        try:
            assert via.options() == direct.options()
            assert via.size() == size
            via.write(MiB, data)
            via.zero(3 * MiB, MiB)
            via.flush()
            assert via.extents() == direct.extents()
            assert via.checksum() == direct.checksum()
            buf = bytearray(MiB)
            assert via.read_into(MiB, memoryview(buf)) == MiB
            assert buf == data
        finally:
            via.close()
            direct.close()
        assert proxy.stats.connections == 1
        assert {"OPTIONS", "PUT", "PATCH", "GET"} <= set(proxy.stats.requests)
