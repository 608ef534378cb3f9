"""A fault-injecting HTTP/1.1 proxy for tests (resume, retries, fault handling).

It listens on 127.0.0.1 (ephemeral port) in front of one upstream server and
relays requests and responses byte for byte, understanding just enough of
HTTP/1.1 framing (heads, Content-Length and chunked bodies, keep-alive,
``Expect: 100-continue``) to make a fault hit one precise request::

    from fault_proxy import FaultProxy, Rule, CutRequestBody

    with FaultProxy(upstream=("127.0.0.1", port)) as proxy:
        proxy.add_rule(Rule(method="PUT", path_re=r"^/images/", nth=3,
                            action=CutRequestBody(after=1_000_000)))
        url = proxy.url_for("/images/" + ticket)
        ...
        assert proxy.stats.faults[0].method == "PUT"

Each client connection gets its own thread and its own upstream connection,
opened lazily on the first forwarded request (so a request answered by the
proxy itself never reaches the upstream). Bodies are streamed through one
reused buffer per connection, never held whole in memory.

Rules are checked in the order they were added; every rule counts the
requests it matches (``method`` and ``path_re``, searched in the request
target including its query string), and the first rule that fires decides
the action. Firing is deterministic: ``nth`` (1-based, one number or several),
``every`` (optionally after ``skip`` matches), or ``probability`` drawn from a
``random.Random(seed)`` of the rule's own; ``times`` caps the firings.

``DroppingProxy`` (at the end) works below HTTP: it relays TCP (TLS passes
through) and cuts every connection once a byte budget has passed.
"""

from __future__ import annotations

import http
import random
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

CHUNK = 1 << 20          # relay buffer per connection
_HEAD_READ = 64 * 1024   # recv size while looking for the end of a head
_MAX_HEAD = 256 * 1024   # a longer head is a protocol error
_DRAIN_TIMEOUT = 2.0     # how long a closing connection waits for the client's rest


# --- actions ---------------------------------------------------------------

class Action:
    """Base class of the faults a rule can inject."""


@dataclass(frozen=True)
class CutRequestBody(Action):
    """Forward the request head and the first ``after`` bytes of its body, then
    close both sides. A body no longer than ``after`` goes through whole and the
    connection is closed before any reply (``after=0`` on a GET: the request
    reaches the upstream, the client gets no answer)."""
    after: int


@dataclass(frozen=True)
class CutResponseBody(Action):
    """Forward the request, the response head and the first ``after`` bytes of
    the response body, then close both sides (also when the body is shorter)."""
    after: int


@dataclass(frozen=True)
class Delay(Action):
    """Forward the request, then wait ``seconds`` before relaying the response."""
    seconds: float


@dataclass(frozen=True)
class Respond(Action):
    """Answer from the proxy; the upstream never sees the request.

    With ``close=False`` the request body is read and discarded first so the
    connection stays usable; with ``close=True`` the reply goes out at once
    (an early reply, as servers refusing a body do), the rest of the body is
    drained so the client can read it, and the connection is closed.
    """
    status: int
    body: str | bytes = ""
    close: bool = False
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Expire403(Action):
    """Answer like an imageio server whose ticket is gone: 403 and close."""


@dataclass(frozen=True)
class DropConnection(Action):
    """Close the client connection after reading the request head, forwarding nothing.

    ``reset=True`` closes with a TCP reset instead of a clean FIN.
    """
    reset: bool = False


@dataclass(frozen=True)
class DropResponse(Action):
    """Forward the request, read the whole upstream response, then close the
    client without sending any of it: the request took effect, the reply is lost."""


def expired_ticket_message(target: str) -> str:
    """The 403 body of an imageio server for the ticket named in ``target``."""
    m = re.search(r"/images/([^/?#]+)", target)
    ticket = m.group(1) if m else "-"
    return f"You are not allowed to access this resource: No such ticket {ticket}\n"


# --- rules -----------------------------------------------------------------

@dataclass(eq=False, kw_only=True)
class Rule:
    """Which requests get ``action``.

    ``method``/``path_re`` select requests (None matches any). Then at most
    one of: ``nth`` (1-based index among matching requests, or a collection of
    them), ``every`` (each match after the first ``skip``), ``probability``
    (drawn from ``random.Random(seed)``, after ``skip``). With none of them the
    rule behaves as ``every=True``. ``times`` limits how often it fires.
    """
    action: Action
    method: str | None = None
    path_re: str | None = None
    nth: int | Collection[int] | None = None
    every: bool = False
    probability: float | None = None
    seed: int = 0
    skip: int = 0
    times: int | None = None
    matched: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        modes = (self.nth is not None) + bool(self.every) + (self.probability is not None)
        if modes > 1:
            raise ValueError("give at most one of nth, every, probability")
        if isinstance(self.nth, int):
            self._nths = frozenset((self.nth,))
        else:
            self._nths = frozenset(self.nth or ())
        if any(n < 1 for n in self._nths):
            raise ValueError("nth is 1-based")
        self._pattern = re.compile(self.path_re) if self.path_re else None
        self._random = random.Random(self.seed)

    def _decide(self, method: str, target: str) -> bool:
        """Count a request and say whether the rule fires on it (caller holds the lock)."""
        if self.method is not None and method.upper() != self.method.upper():
            return False
        if self._pattern is not None and not self._pattern.search(target):
            return False
        self.matched += 1
        if self.times is not None and self.fired >= self.times:
            return False
        if self.nth is not None:
            hit = self.matched in self._nths
        elif self.matched <= self.skip:
            hit = False
        elif self.probability is not None:
            hit = self._random.random() < self.probability
        else:
            hit = True
        if hit:
            self.fired += 1
        return hit


class Fault(NamedTuple):
    """One fault fired: the rule, and the request it hit."""
    rule: Rule
    method: str
    path: str


@dataclass
class ProxyStats:
    """A snapshot of the proxy's counters.

    Byte counts are counted as they are handed to the socket, before the send,
    so a client that has seen a byte can rely on it being counted.
    """
    connections: int = 0                  # client connections accepted
    upstream_connections: int = 0         # upstream connections opened
    requests: Counter = field(default_factory=Counter)   # method -> requests read
    bytes_up: int = 0                     # everything sent upstream (heads + bodies)
    bytes_down: int = 0                   # everything sent to clients
    body_bytes_up: int = 0                # request body bytes sent upstream
    body_bytes_down: int = 0              # response body bytes sent to clients
    faults: list[Fault] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)  # (method, target)

    def copy(self) -> "ProxyStats":
        return ProxyStats(self.connections, self.upstream_connections,
                          Counter(self.requests), self.bytes_up, self.bytes_down,
                          self.body_bytes_up, self.body_bytes_down,
                          list(self.faults), list(self.history))


@dataclass(frozen=True)
class ProxyTls:
    """TLS for the proxy.

    ``cert_file``/``key_file``: accept TLS from clients with this certificate
    (None: clients speak plain HTTP). ``upstream_tls``: talk TLS to the
    upstream, verifying it against ``upstream_cafile`` (None: unverified).
    """
    cert_file: str | None = None
    key_file: str | None = None
    upstream_tls: bool = True
    upstream_cafile: str | None = None


# --- HTTP framing ----------------------------------------------------------

class _ProtocolError(Exception):
    pass


class _Closed(Exception):
    """The connection is over (a fault closed it, or a peer went away)."""


@dataclass
class _Head:
    raw: bytes
    first: list[str]               # request line or status line, split in 3
    headers: dict[str, str]        # lower-case name -> last value

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def wants_close(self) -> bool:
        conn = self.header("connection").lower()
        if "close" in conn:
            return True
        return self.first[0 if self._is_response() else 2].upper() == "HTTP/1.0" \
            and "keep-alive" not in conn

    def _is_response(self) -> bool:
        return self.first[0].upper().startswith("HTTP/")

    def chunked(self) -> bool:
        return "chunked" in self.header("transfer-encoding").lower()

    def content_length(self) -> int | None:
        value = self.header("content-length")
        if not value:
            return None
        try:
            n = int(value)
        except ValueError:
            raise _ProtocolError("bad Content-Length") from None
        if n < 0:
            raise _ProtocolError("bad Content-Length")
        return n


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2:
        raise _ProtocolError("bad first line")
    while len(first) < 3:
        first.append("")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _ProtocolError("bad header line")
        headers[name.strip().lower()] = value.strip()
    return _Head(raw, first, headers)


class _Side:
    """One socket plus the bytes read past the last head."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.ahead = bytearray()

    def read_head(self) -> bytes | None:
        """The next head up to its blank line; None on EOF before any byte."""
        start = 0
        while True:
            i = self.ahead.find(b"\r\n\r\n", max(0, start - 3))
            if i >= 0:
                head = bytes(self.ahead[:i + 4])
                del self.ahead[:i + 4]
                return head
            if len(self.ahead) > _MAX_HEAD:
                raise _ProtocolError("head too large")
            start = len(self.ahead)
            data = self.sock.recv(_HEAD_READ)
            if not data:
                if self.ahead:
                    raise _Closed("EOF inside a head")
                return None
            self.ahead += data

    def read_line(self) -> bytes:
        """One CRLF-terminated line (chunk sizes, trailers)."""
        while True:
            i = self.ahead.find(b"\r\n")
            if i >= 0:
                line = bytes(self.ahead[:i + 2])
                del self.ahead[:i + 2]
                return line
            if len(self.ahead) > _MAX_HEAD:
                raise _ProtocolError("line too long")
            data = self.sock.recv(_HEAD_READ)
            if not data:
                raise _Closed("EOF inside a chunked body")
            self.ahead += data

    def read_into(self, buf: memoryview) -> int:
        """Read-ahead bytes first, then straight from the socket; 0 at EOF."""
        if self.ahead:
            n = min(len(buf), len(self.ahead))
            buf[:n] = self.ahead[:n]
            del self.ahead[:n]
            return n
        return self.sock.recv_into(buf)


def _raw_shutdown(sock: socket.socket | None) -> None:
    """Wake a thread blocked on ``sock`` (bypasses SSLSocket's own shutdown)."""
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _close(sock: socket.socket | None, reset: bool = False) -> None:
    if sock is None:
        return
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        sock.close()
    except OSError:
        pass


def _close_listener(sock: socket.socket | None) -> None:
    """Stop listening at once, even while another thread polls the socket."""
    # A plain close() would leave the socket listening until the accept
    # thread's poll returns; shutdown() stops it now (Linux).
    _raw_shutdown(sock)
    _close(sock)


# --- the proxy -------------------------------------------------------------

class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 injecting the faults of its rules.

    ``upstream``: (host, port) of the real server. ``tls``: see ProxyTls;
    None relays plain HTTP both ways. Use as a context manager, or call
    ``start()`` and ``stop()``.
    """

    def __init__(self, upstream: tuple[str, int], tls: ProxyTls | None = None, *,
                 connect_timeout: float = 5.0):
        self.upstream = upstream
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.port = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._rules: list[Rule] = []
        self._stats = ProxyStats()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: dict[int, list[socket.socket | None]] = {}   # id -> [client, upstream]
        self._threads: dict[int, threading.Thread] = {}
        self._next_id = 0
        self._client_ctx: ssl.SSLContext | None = None
        self._upstream_ctx: ssl.SSLContext | None = None
        if tls is not None:
            if tls.cert_file:
                self._client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                self._client_ctx.load_cert_chain(tls.cert_file, tls.key_file)
            if tls.upstream_tls:
                if tls.upstream_cafile:
                    self._upstream_ctx = ssl.create_default_context(cafile=tls.upstream_cafile)
                else:
                    self._upstream_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    self._upstream_ctx.check_hostname = False
                    self._upstream_ctx.verify_mode = ssl.CERT_NONE

    # Life cycle ---------------------------------------------------------

    @property
    def scheme(self) -> str:
        """``https`` when clients must speak TLS to the proxy, else ``http``."""
        return "https" if self._client_ctx is not None else "http"

    def url_for(self, path: str = "") -> str:
        """The proxy's URL for ``path`` (which should start with ``/``)."""
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> "FaultProxy":
        """Bind an ephemeral port and start accepting connections."""
        self._listener = self._bind(0)
        self.port = self._listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"fault-proxy-{self.port}", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Close the listener and every connection; join all threads."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        with self._lock:
            listener, self._listener = self._listener, None
        _close_listener(listener)
        # Once the accept thread is gone no connection can appear any more.
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with self._lock:
            threads = list(self._threads.values())
        self._cut_all()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
            sock.settimeout(0.1)     # the accept loop polls for stop/down
        except OSError:
            sock.close()
            raise
        return sock

    # Control ------------------------------------------------------------

    def add_rule(self, rule: Rule) -> Rule:
        """Add a rule after the existing ones; returns it (its counters are live)."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        """Remove every rule: the proxy relays faithfully again."""
        with self._lock:
            self._rules.clear()

    @property
    def stats(self) -> ProxyStats:
        """A consistent copy of the counters."""
        with self._lock:
            return self._stats.copy()

    def wait_faults(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` faults have fired; False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self._stats.faults) >= count:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def reset_stats(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._stats = ProxyStats()

    def set_down(self, down: bool, *, cut_existing: bool = True) -> None:
        """Simulate an outage: while down, connecting is refused (the listener is
        closed) and, with ``cut_existing``, open connections are cut now.
        ``set_down(False)`` listens again on the same port."""
        if down:
            with self._lock:
                listener, self._listener = self._listener, None
            _close_listener(listener)
            if cut_existing:
                self._cut_all()
        else:
            with self._lock:
                if self._listener is None and not self._stopping.is_set():
                    self._listener = self._bind(self.port)

    def _cut_all(self) -> None:
        with self._lock:
            socks = [s for pair in self._conns.values() for s in pair]
        for s in socks:
            _raw_shutdown(s)

    # Accepting ----------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:
                self._stopping.wait(0.05)
                continue
            try:
                sock, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            if self._stopping.is_set() or self._listener is not listener:
                _close(sock, reset=True)
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._next_id += 1
                cid = self._next_id
                self._conns[cid] = [sock, None]
                self._stats.connections += 1
                t = threading.Thread(target=self._serve, args=(cid, sock),
                                     name=f"fault-proxy-{self.port}-{cid}", daemon=True)
                self._threads[cid] = t
            t.start()

    # One connection -----------------------------------------------------

    def _serve(self, cid: int, sock: socket.socket) -> None:
        upstream: _Side | None = None
        client: _Side | None = None
        buf = memoryview(bytearray(CHUNK))
        try:
            if self._client_ctx is not None:
                sock = self._client_ctx.wrap_socket(sock, server_side=True,
                                                    do_handshake_on_connect=False)
                with self._lock:
                    self._conns[cid][0] = sock
                sock.settimeout(10)
                sock.do_handshake()
                sock.settimeout(None)
            client = _Side(sock)
            while not self._stopping.is_set():
                raw = client.read_head()
                if raw is None:
                    return
                req = _parse_head(raw)
                action = self._on_request(req)
                if isinstance(action, DropConnection):
                    _close(client.sock, reset=action.reset)
                    return
                if isinstance(action, (Respond, Expire403)):
                    if not self._respond(client, req, action, buf):
                        return
                    continue
                if upstream is None:
                    upstream = self._connect(cid)
                if not self._forward(client, upstream, req, action, buf):
                    return
        except (OSError, _ProtocolError, _Closed, ValueError):
            pass
        finally:
            with self._lock:
                pair = self._conns.pop(cid, [None, None])
                self._threads.pop(cid, None)
            _close(pair[0])
            _close(pair[1])

    def _on_request(self, req: _Head) -> Action | None:
        method, target = req.first[0], req.first[1]
        with self._lock:
            self._stats.requests[method] += 1
            self._stats.history.append((method, target))
            chosen = None
            for rule in self._rules:
                if rule._decide(method, target) and chosen is None:
                    chosen = rule
            if chosen is not None:
                self._stats.faults.append(Fault(chosen, method, target))
                return chosen.action
        return None

    def _connect(self, cid: int) -> _Side:
        sock = socket.create_connection(self.upstream, timeout=self.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._upstream_ctx is not None:
            sock = self._upstream_ctx.wrap_socket(sock, server_hostname=self.upstream[0])
        sock.settimeout(None)
        with self._lock:
            if cid in self._conns:
                self._conns[cid][1] = sock
            self._stats.upstream_connections += 1
        if self._stopping.is_set():
            raise _Closed("stopping")
        return _Side(sock)

    def _count(self, up: bool, n: int, body: bool) -> None:
        with self._lock:
            if up:
                self._stats.bytes_up += n
                if body:
                    self._stats.body_bytes_up += n
            else:
                self._stats.bytes_down += n
                if body:
                    self._stats.body_bytes_down += n

    def _send(self, dst: _Side, data: bytes | memoryview, up: bool, body: bool) -> None:
        self._count(up, len(data), body)
        dst.sock.sendall(data)

    def _pump(self, src: _Side, dst: _Side | None, n: int | None, up: bool,
              buf: memoryview, budget: list[int] | None) -> None:
        """Relay ``n`` body bytes (None: until EOF) from src to dst (None: discard).

        ``budget``: a one-item list of bytes still allowed before a cut;
        raises _Closed when it runs out."""
        remaining = n
        while remaining is None or remaining > 0:
            want = CHUNK if remaining is None else min(CHUNK, remaining)
            if budget is not None:
                if budget[0] <= 0:
                    raise _Closed("cut")
                want = min(want, budget[0])
            got = src.read_into(buf[:want])
            if got == 0:
                if remaining is None:
                    return
                raise _Closed("EOF inside a body")
            if budget is not None:
                budget[0] -= got
            if dst is not None:
                self._send(dst, buf[:got], up, body=True)
            if remaining is not None:
                remaining -= got

    def _relay_body(self, src: _Side, dst: _Side | None, head: _Head, up: bool,
                    buf: memoryview, budget: list[int] | None,
                    until_eof: bool = False) -> None:
        """Relay the body that follows ``head`` (Content-Length, chunked, or EOF)."""
        if head.chunked():
            while True:
                line = src.read_line()
                if dst is not None:
                    self._send(dst, line, up, body=False)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise _ProtocolError("bad chunk size") from None
                if size == 0:
                    while True:       # trailers up to the blank line
                        line = src.read_line()
                        if dst is not None:
                            self._send(dst, line, up, body=False)
                        if line == b"\r\n":
                            return
                self._pump(src, dst, size + 2, up, buf, budget)
        length = head.content_length()
        if length is not None:
            self._pump(src, dst, length, up, buf, budget)
        elif until_eof:
            self._pump(src, dst, None, up, buf, budget)

    def _read_response(self, upstream: _Side) -> _Head:
        raw = upstream.read_head()
        if raw is None:
            raise _Closed("upstream closed")
        return _parse_head(raw)

    @staticmethod
    def _has_body(req: _Head, resp: _Head) -> bool:
        status = resp.first[1]
        return not (req.first[0].upper() == "HEAD" or status.startswith("1")
                    or status in ("204", "304"))

    def _forward(self, client: _Side, upstream: _Side, req: _Head,
                 action: Action | None, buf: memoryview) -> bool:
        """Relay one exchange; False when the connection must end."""
        self._send(upstream, req.raw, up=True, body=False)
        resp: _Head | None = None
        if "100-continue" in req.header("expect").lower():
            # The client waits for a 100 before sending its body.
            resp = self._read_response(upstream)
            if resp.first[1] == "100":
                self._send(client, resp.raw, up=False, body=False)
                resp = None
            else:
                # Refused before the body was sent: the client must not send
                # it on this connection any more.
                self._relay_response(client, upstream, req, resp, None, buf)
                return False
        cut = [action.after] if isinstance(action, CutRequestBody) else None
        try:
            self._relay_body(client, upstream, req, True, buf, cut)
        except _Closed:
            if cut is not None:
                return False
            raise
        except OSError:
            # The upstream stopped reading (an early error reply): pass the
            # reply on if it arrived, then end the connection.
            try:
                upstream.sock.settimeout(1.0)
                resp = self._read_response(upstream)
                self._relay_response(client, upstream, req, resp, None, buf)
            except (OSError, _Closed, _ProtocolError):
                pass
            return False
        if cut is not None:
            return False            # the whole body fitted under the cut point
        if isinstance(action, Delay):
            if self._stopping.wait(action.seconds):
                return False
        if isinstance(action, DropResponse):
            while True:
                resp = self._read_response(upstream)
                if not resp.first[1].startswith("1"):
                    break
            if self._has_body(req, resp):
                self._relay_body(upstream, None, resp, False, buf, None, until_eof=True)
            _close(client.sock, reset=True)
            return False
        budget = [action.after] if isinstance(action, CutResponseBody) else None
        while True:
            resp = self._read_response(upstream)
            if not resp.first[1].startswith("1") or resp.first[1] == "101":
                break
            self._send(client, resp.raw, up=False, body=False)   # 1xx interim
        return self._relay_response(client, upstream, req, resp, budget, buf) \
            and not req.wants_close()

    def _relay_response(self, client: _Side, upstream: _Side, req: _Head,
                        resp: _Head, budget: list[int] | None, buf: memoryview) -> bool:
        """Relay a final response; False when the connection must end."""
        self._send(client, resp.raw, up=False, body=False)
        if not self._has_body(req, resp):
            if budget is not None:
                return False
            return not resp.wants_close()
        delimited = resp.chunked() or resp.content_length() is not None
        try:
            self._relay_body(upstream, client, resp, False, buf, budget, until_eof=True)
        except _Closed:
            if budget is not None:
                return False
            raise
        if budget is not None and budget[0] <= 0 and delimited:
            # The cut point was the body's very end: still close, as asked.
            return False
        return delimited and not resp.wants_close()

    def _respond(self, client: _Side, req: _Head, action: Respond | Expire403,
                 buf: memoryview) -> bool:
        """Answer from the proxy; False when the connection must end."""
        if isinstance(action, Expire403):
            action = Respond(403, expired_ticket_message(req.first[1]), close=True)
        body = action.body.encode() if isinstance(action.body, str) else action.body
        if req.first[0].upper() == "HEAD":
            body = b""
        close = action.close or req.wants_close() \
            or "100-continue" in req.header("expect").lower()
        try:
            reason = http.HTTPStatus(action.status).phrase
        except ValueError:
            reason = "Fault"
        lines = [f"HTTP/1.1 {action.status} {reason}",
                 "Content-Type: text/plain; charset=UTF-8",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (action.headers or {}).items()]
        if close:
            lines.append("Connection: close")
        reply = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        if not close:
            self._relay_body(client, None, req, True, buf, None)
            self._send(client, reply, up=False, body=False)
            return True
        self._send(client, reply, up=False, body=False)
        # Read what the client still sends so that closing does not reset the
        # connection and destroy the reply before the client reads it.
        try:
            if not isinstance(client.sock, ssl.SSLSocket):
                socket.socket.shutdown(client.sock, socket.SHUT_WR)
            client.sock.settimeout(_DRAIN_TIMEOUT)
            if "100-continue" not in req.header("expect").lower():
                self._relay_body(client, None, req, True, buf, None)
            while client.sock.recv_into(buf):
                pass
        except (OSError, _Closed, _ProtocolError):
            pass
        return False


# --- a TCP-level proxy: no HTTP, just a byte budget ---------------------------

class DroppingProxy:
    """A TCP proxy on 127.0.0.1 that cuts every connection after N bytes.

    Bytes from the client are counted over all connections; once more than
    ``drop_after`` have passed, every connection is closed abruptly (a
    dropped network connection as the client sees it). TLS passes through.
    """

    def __init__(self, target_port: int, drop_after: int):
        import socket
        self.target_port = target_port
        self.drop_after = drop_after
        self.passed = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.conns += [c, s]
            threading.Thread(target=self._pump, args=(c, s, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c, False), daemon=True).start()

    def _pump(self, a, b, count):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if count:
                    with self.lock:
                        self.passed += len(data)
                        drop = self.passed > self.drop_after
                    if drop:
                        self._drop_all()
                        return
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.close()
                except OSError:
                    pass

    def _drop_all(self):
        import socket
        with self.lock:
            conns = list(self.conns)
        for x in conns:
            try:
                x.shutdown(socket.SHUT_RDWR)
                x.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.sock.close()
        self._drop_all()
