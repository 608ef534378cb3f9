"""DataPlaneServer protocol details and every error path, over raw HTTP."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import threading
import time

import pytest

from fake_backends import MemBackend
from helpers import MiB
from imageio_daemon import scratch_dir
from imagetool.formats.raw import RawBackend
from imagetool.server.dataplane import DataPlaneServer
from imagetool.server.tickets import Ticket, TicketRegistry

SIZE = 2 * MiB
FORBIDDEN = "You are not allowed to access this resource: "


class Env:
    def __init__(self):
        self.dir = scratch_dir()
        self.path = os.path.join(self.dir, "disk.raw")
        self.data = os.urandom(SIZE)
        with open(self.path, "wb") as f:
            f.write(self.data)
        self.server = DataPlaneServer(TicketRegistry()).start()

    def add(self, ops=("read", "write"), **kw) -> Ticket:
        mode = "r+" if "write" in ops else "r"
        ticket = Ticket(uuid=f"t-{os.urandom(6).hex()}", size=SIZE, ops=tuple(ops),
                        open_backend=lambda: RawBackend(self.path, mode), **kw)
        self.server.registry.add(ticket)
        return ticket

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)

    def request(self, method, path, body=None, headers=None, conn=None):
        """(status, headers, body bytes) of one request."""
        c = conn or self.conn()
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r.status, r, data

    def file(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


@pytest.fixture
def env():
    e = Env()
    yield e
    e.server.stop()
    for t in e.server.registry.all():
        e.server.registry.remove(t.uuid)
    shutil.rmtree(e.dir, ignore_errors=True)


def _raw(env, data: bytes, half_close: bool = False) -> bytes:
    """Send raw bytes on a new connection; return everything until EOF."""
    with socket.create_connection(("127.0.0.1", env.server.port), timeout=10) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _eventually(predicate, timeout: float = 5.0) -> bool:
    """The server counts bytes after the reply is out: give it a moment."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _closed_by_server(conn: http.client.HTTPConnection, timeout: float = 5.0) -> bool:
    conn.sock.settimeout(timeout)
    try:
        return conn.sock.recv(1) == b""
    except ConnectionResetError:
        return True


# --- OPTIONS and info ----------------------------------------------------------

def test_options_by_ticket(env):
    rw, ro = env.add(), env.add(ops=("read",))
    status, r, body = env.request("OPTIONS", f"/images/{rw.uuid}")
    assert status == 200
    opts = json.loads(body)
    assert sorted(opts["features"]) == ["checksum", "extents", "flush", "zero"]
    assert opts["max_readers"] >= 1 and opts["max_writers"] >= 1
    assert set(r.getheader("Allow").split(",")) == {"OPTIONS", "GET", "PUT", "PATCH"}
    status, r, body = env.request("OPTIONS", f"/images/{ro.uuid}")
    assert sorted(json.loads(body)["features"]) == ["checksum", "extents"]
    assert set(r.getheader("Allow").split(",")) == {"OPTIONS", "GET"}
    status, _, body = env.request("OPTIONS", "/images/*")
    assert status == 200
    assert sorted(json.loads(body)["features"]) == ["checksum", "extents", "flush", "zero"]
    status, _, body = env.request("GET", "/info/")
    assert status == 200 and json.loads(body)["version"]


@pytest.mark.slow
def test_options_touches_ticket(env):
    t = env.add(timeout=1.5)
    for _ in range(4):     # 2 s in all: only the touches keep it alive
        time.sleep(0.5)
        assert env.request("OPTIONS", f"/images/{t.uuid}")[0] == 200
    assert not t.expired()


# --- 403 -------------------------------------------------------------------------

def test_unknown_ticket_403_and_close(env):
    status, r, body = env.request("GET", "/images/nosuch")
    assert status == 403
    assert body.decode().strip() == f"{FORBIDDEN}No such ticket nosuch"
    assert r.getheader("Content-Type").startswith("text/plain")
    # Two pipelined requests: the server answers the first and closes (EOF).
    req = b"OPTIONS /images/nosuch HTTP/1.1\r\nHost: x\r\n\r\n"
    out = _raw(env, req * 2)
    assert out.count(b"HTTP/1.1 403") == 1


@pytest.mark.slow
def test_expired_and_canceled_tickets(env):
    t = env.add(transfer_id="xfer-1")
    assert env.request("GET", f"/images/{t.uuid}", headers={"Range": "bytes=0-0"})[0] == 206
    t.extend(0.2)
    time.sleep(0.4)
    status, _, body = env.request("GET", f"/images/{t.uuid}")
    assert status == 403 and body.decode().strip() == f"{FORBIDDEN}Transfer=xfer-1 expired"
    t2 = env.add(transfer_id="xfer-2")
    t2.canceled = True      # as a paused transfer's ticket (TransferTickets.pause)
    status, _, body = env.request("OPTIONS", f"/images/{t2.uuid}")
    assert status == 403 and body.decode().strip() == \
        f"{FORBIDDEN}Transfer=xfer-2 was canceled"


def test_read_only_ticket_refuses_writes(env):
    t = env.add(ops=("read",))
    status, _, body = env.request("PUT", f"/images/{t.uuid}", body=b"x" * 10,
                                  headers={"Content-Range": "bytes 0-9/*"})
    assert status == 403 and b"forbids write" in body
    status, _, body = env.request("PATCH", f"/images/{t.uuid}",
                                  body=b'{"op":"flush"}')
    assert status == 403
    assert env.file() == env.data


# --- GET ---------------------------------------------------------------------------

def test_get_ranges(env):
    t = env.add()
    c = env.conn()
    status, r, body = env.request("GET", f"/images/{t.uuid}",
                                  headers={"Range": "bytes=100-1099"}, conn=c)
    assert status == 206 and body == env.data[100:1100]
    assert r.getheader("Content-Range") == f"bytes 100-1099/{SIZE}"
    status, r, body = env.request("GET", f"/images/{t.uuid}",
                                  headers={"Range": f"bytes={SIZE - 10}-"}, conn=c)
    assert status == 206 and body == env.data[-10:]
    status, r, body = env.request("GET", f"/images/{t.uuid}", conn=c)
    assert status == 200 and body == env.data
    assert int(r.getheader("Content-Length")) == SIZE
    c.close()
    assert _eventually(lambda: t.transferred == 1000 + 10 + SIZE)


@pytest.mark.parametrize("rng", ["bytes=-100", "bytes=0-9,20-29", f"bytes={SIZE}-",
                                 f"bytes=0-{SIZE}", "bytes=10-5", "items=0-1"])
def test_get_unsatisfiable_ranges(env, rng):
    t = env.add()
    c = env.conn()
    status, r, _ = env.request("GET", f"/images/{t.uuid}", headers={"Range": rng}, conn=c)
    assert status == 416
    assert r.getheader("Content-Range") == f"bytes */{SIZE}"
    # The connection stays usable.
    status, _, body = env.request("GET", f"/images/{t.uuid}",
                                  headers={"Range": "bytes=0-3"}, conn=c)
    assert status == 206 and body == env.data[:4]
    c.close()


# --- PUT ---------------------------------------------------------------------------

def test_put_flush_and_keep_alive(env):
    t = env.add()
    c = env.conn()
    for offset, flush in ((0, "n"), (MiB, "y"), (5000, None)):
        q = f"?flush={flush}" if flush else ""
        payload = os.urandom(3000)
        status, _, body = env.request(
            "PUT", f"/images/{t.uuid}{q}", body=payload,
            headers={"Content-Range": f"bytes {offset}-{offset + 2999}/*"}, conn=c)
        assert status == 200 and body == b""
        assert env.file()[offset:offset + 3000] == payload
    c.close()
    assert _eventually(lambda: t.transferred == 9000)


def test_put_errors(env):
    t = env.add()
    p = f"/images/{t.uuid}"
    out = _raw(env, f"PUT {p} HTTP/1.1\r\nHost: x\r\nContent-Range: bytes 0-9/*\r\n\r\n"
               .encode())
    assert out.startswith(b"HTTP/1.1 400") and b"Content-Length header is required" in out
    status, _, body = env.request("PUT", p, body=b"x" * 10,
                                  headers={"Content-Range": "bytes 0-19/*"})
    assert status == 400 and b"does not match Content-Length" in body
    status, _, body = env.request("PUT", p, body=b"x" * 10,
                                  headers={"Content-Range": "bytes zero/*"})
    assert status == 400 and b"Invalid Content-Range" in body
    status, r, _ = env.request("PUT", p, body=b"x" * 10,
                               headers={"Content-Range": f"bytes {SIZE - 5}-{SIZE + 4}/*"})
    assert status == 416 and r.getheader("Content-Range") == f"bytes */{SIZE}"
    status, _, body = env.request("PUT", p + "?flush=maybe", body=b"x",
                                  headers={"Content-Range": "bytes 0-0/*"})
    assert status == 400 and b"flush" in body
    assert env.file() == env.data


def test_put_short_body(env):
    t = env.add()
    out = _raw(env, (f"PUT /images/{t.uuid} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                     "Content-Range: bytes 0-99/*\r\n\r\n").encode() + b"y" * 40,
               half_close=True)
    assert out.startswith(b"HTTP/1.1 400") and b"Short request body" in out


def test_put_chunked_refused(env):
    t = env.add()
    out = _raw(env, (f"PUT /images/{t.uuid} HTTP/1.1\r\nHost: x\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode())
    assert out.startswith(b"HTTP/1.1 411") and b"Chunked transfer encoding" in out
    assert env.file() == env.data


def test_expect_100_continue(env):
    t = env.add()
    with socket.create_connection(("127.0.0.1", env.server.port), timeout=10) as s:
        s.sendall((f"PUT /images/{t.uuid} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                   "Content-Range: bytes 0-4/*\r\nExpect: 100-continue\r\n\r\n").encode())
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"hello")
        assert s.recv(1000).startswith(b"HTTP/1.1 200 OK")
    assert env.file()[:5] == b"hello"


def test_close_query(env):
    t = env.add()
    status, r, _ = env.request("GET", f"/images/{t.uuid}?close=y",
                               headers={"Range": "bytes=0-0"})
    assert status == 206 and r.getheader("Connection") == "close"
    req = f"GET /images/{t.uuid}?close=y HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\n"
    out = _raw(env, req.encode() * 2)     # returns at EOF: the server closed
    assert out.count(b"HTTP/1.1 206") == 1


# --- PATCH ---------------------------------------------------------------------------

def _patch(env, t, msg) -> tuple[int, str]:
    body = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
    status, _, out = env.request("PATCH", f"/images/{t.uuid}", body=body,
                                 headers={"Content-Type": "application/json"})
    return status, out.decode().strip()


def test_patch_zero_and_flush(env):
    t = env.add()
    assert _patch(env, t, {"op": "zero", "offset": 4096, "size": 8192}) == (200, "")
    assert _patch(env, t, {"op": "zero", "offset": 0, "size": 10, "flush": True})[0] == 200
    assert _patch(env, t, {"op": "flush"}) == (200, "")
    expected = bytes(10) + env.data[10:4096] + bytes(8192) + env.data[4096 + 8192:]
    assert env.file() == expected


@pytest.mark.parametrize("msg,text", [
    ({"op": "zero", "offset": 0}, "Missing required value for 'size'"),
    ({"op": "zero", "size": 1}, "Missing required value for 'offset'"),
    ({"offset": 0, "size": 1}, "Missing required value for 'op'"),
    ({"op": "trim", "offset": 0, "size": 1}, "Unsupported value 'trim' for 'op'"),
    ({"op": "zero", "offset": "0", "size": 1}, "Integer required for 'offset'"),
    ({"op": "zero", "offset": 0, "size": 1, "flush": "y"}, "Boolean required for 'flush'"),
    (b"{not json", "Invalid JSON message"),
])
def test_patch_errors(env, msg, text):
    t = env.add()
    status, out = _patch(env, t, msg)
    assert status == 400 and out.startswith(text)
    assert env.file() == env.data


def test_patch_zero_past_end(env):
    t = env.add()
    assert _patch(env, t, {"op": "zero", "offset": SIZE - 1, "size": 2})[0] == 416


# --- extents and checksum -------------------------------------------------------------

def test_extents(env):
    t = env.add()
    with open(env.path, "r+b") as f:
        f.truncate(0)
        f.truncate(SIZE)
        f.seek(MiB)
        f.write(b"x" * 4096)
    status, _, body = env.request("GET", f"/images/{t.uuid}/extents?context=zero")
    assert status == 200
    exts = json.loads(body)
    assert exts[0]["start"] == 0 and exts[-1]["start"] + exts[-1]["length"] == SIZE
    assert all(a["start"] + a["length"] == b["start"] for a, b in zip(exts, exts[1:]))
    data = [(e["start"], e["length"]) for e in exts if not e["zero"]]
    # Allocation granularity is the file system's: data covers what we wrote.
    assert len(data) == 1 and data[0][0] <= MiB and sum(data[0]) >= MiB + 4096
    status, _, body = env.request("GET", f"/images/{t.uuid}/extents?context=dirty")
    assert status == 404 and body.decode().strip() == "Ticket does not support dirty extents"
    status, _, _ = env.request("GET", f"/images/{t.uuid}/extents?context=bogus")
    assert status == 400


def test_checksum_errors_and_algorithms(env):
    t = env.add(ops=("read",))
    p = f"/images/{t.uuid}/checksum"
    status, _, body = env.request("GET", p + "/algorithms")
    assert status == 200 and "blake2b" in json.loads(body)["algorithms"]
    for query, text in (("?block_size=1000", b"Block size out of allowed range"),
                        ("?block_size=1049088", b"not aligned to 4096"),
                        ("?block_size=abc", b"Invalid block size"),
                        ("?algorithm=nosuch", b"Unsupported value 'nosuch'")):
        status, _, body = env.request("GET", p + query)
        assert status == 400 and text in body, query
    status, _, body = env.request("GET", p + "?algorithm=sha1&block_size=1048576")
    assert status == 200
    reply = json.loads(body)
    assert reply["algorithm"] == "sha1" and reply["block_size"] == MiB


def test_unknown_paths_and_methods(env):
    t = env.add()
    assert env.request("GET", "/nothing")[0] == 404
    assert env.request("GET", f"/images/{t.uuid}/nothing")[0] == 404
    status, r, _ = env.request("DELETE", f"/images/{t.uuid}")
    assert status == 405 and "GET" in r.getheader("Allow")


# --- connections -----------------------------------------------------------------------

@pytest.mark.slow
def test_inactivity_drop_and_connection_count(env):
    t = env.add(inactivity_timeout=0.3)
    c = env.conn()
    assert env.request("OPTIONS", f"/images/{t.uuid}", conn=c)[0] == 200
    assert t.connections == 1 and t.active()
    # Closed by the ticket's 0.3 s inactivity timeout: the deadline is
    # generous for a loaded machine yet shorter than the 60 s idle timeout
    # of a connection without a ticket, so that one cannot pass for it.
    assert _closed_by_server(c, timeout=30)
    assert _eventually(lambda: t.connections == 0, timeout=30)
    c.close()


# --- stopping ----------------------------------------------------------------------

class _GatedMem(MemBackend):
    """A backend in memory whose reads wait for ``gate``; counts reads in
    progress (not a RawBackend, which the data plane serves by sendfile)."""

    gate = None
    in_flight = 0

    def read_into(self, offset, buf):
        type(self).in_flight += 1
        try:
            self.gate.wait(30)
            return super().read_into(offset, buf)
        finally:
            type(self).in_flight -= 1


@pytest.mark.slow
def test_ctrl_c_during_stop_waits_for_connections_then_raises(env):
    # On Python 3.11 a Ctrl-C landing in Thread.join marks the running
    # connection thread as ended: stop() returned (raising) with a request
    # still reading the ticket's volume.
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")

    class Gated(_GatedMem):
        gate = threading.Event()

    ticket = Ticket(uuid=f"t-{os.urandom(6).hex()}", size=SIZE, ops=("read",),
                    open_backend=lambda: Gated(env.data))
    env.server.registry.add(ticket)
    client = threading.Thread(target=lambda: suppress_errors(
        env.request, "GET", f"/images/{ticket.uuid}"))
    client.start()
    assert _eventually(lambda: Gated.in_flight == 1)

    stopping = threading.Event()    # a SIGINT outside stop() would end the whole run

    def interrupt():
        try:
            time.sleep(0.3)         # stop() waits for the connection thread
            if stopping.is_set():
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                time.sleep(1.0)
        finally:
            Gated.gate.set()

    helper = threading.Thread(target=interrupt)
    helper.start()
    at_raise = None
    try:
        with pytest.raises(KeyboardInterrupt):
            stopping.set()
            try:
                env.server.stop(timeout=20)
            finally:
                stopping.clear()
        at_raise = Gated.in_flight
    finally:
        stopping.clear()
        Gated.gate.set()
        helper.join()
        client.join()
    assert at_raise == 0
    assert env.server.connection_count == 0


def suppress_errors(fn, *args):
    try:
        fn(*args)
    except (OSError, http.client.HTTPException):
        pass
