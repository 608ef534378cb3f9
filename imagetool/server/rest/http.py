"""The REST plane's HTTP/1.1 server: a thread per connection, at most
``max_connections`` of them, each request bounded in time; it frames
requests and replies and hands each to the engine (``admit``, then
``handle``), which routes it (``app.py``)."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from imagetool.server.faults import ApiError

log = logging.getLogger(__name__)

# Connections the REST plane serves at once; one more is closed at once.
MAX_CONNECTIONS = 64
# Seconds a client has to send a whole request (headers and body), counted
# from the connection's start or its previous reply: an idle or slow client
# (one byte now and then) cannot hold a handler thread for ever.
REQUEST_TIMEOUT = 60.0
_CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,18}", re.ASCII)


class HttpServer(ThreadingHTTPServer):
    """Threads per connection, at most ``max_connections`` at once, each
    given ``request_timeout`` seconds to send each whole request."""

    daemon_threads = True
    allow_reuse_address = True
    engine: Any             # app.EngineServer: admit, handle, _fault
    max_connections = MAX_CONNECTIONS
    request_timeout = REQUEST_TIMEOUT

    def setup_limits(self, max_connections: int, request_timeout: float) -> None:
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._deadlines: dict["Handler", float] = {}
        self._deadline_lock = threading.Lock()
        self._stopping = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="engine-http-watchdog",
                                          daemon=True)
        self._watchdog.start()

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("refusing a connection from %s: %d connections already",
                        client_address[0], self.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.disarm_all(request)
            self._slots.release()

    def arm(self, handler: "Handler") -> None:
        """Start the clock for the handler's next request."""
        with self._deadline_lock:
            self._deadlines[handler] = time.monotonic() + self.request_timeout

    def disarm(self, handler: "Handler") -> None:
        with self._deadline_lock:
            self._deadlines.pop(handler, None)

    def disarm_all(self, request) -> None:
        with self._deadline_lock:
            for h in [h for h in self._deadlines if h.request is request]:
                del self._deadlines[h]

    def _watch(self) -> None:
        interval = min(1.0, max(0.05, self.request_timeout / 4))
        while not self._stopping.wait(interval):
            now = time.monotonic()
            with self._deadline_lock:
                late = [h for h, d in self._deadlines.items() if d <= now]
                for h in late:
                    del self._deadlines[h]
            for h in late:
                h.expire()

    def server_close(self) -> None:
        stopping = getattr(self, "_stopping", None)
        if stopping is not None:
            stopping.set()
        super().server_close()

    def handle_error(self, request, client_address) -> None:
        # Failed TLS handshakes and dropped clients are routine.
        log.debug("connection from %s failed", client_address, exc_info=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits
    # for the client's delayed ACK (~40 ms per request on loopback).
    disable_nagle_algorithm = True
    server_version = "imagetool-engine"
    sys_version = ""
    timeout = REQUEST_TIMEOUT

    def setup(self) -> None:
        # The socket timeout bounds each read; the server's watchdog bounds
        # the whole request (a client sending a byte now and then).
        self.timeout = self.server.request_timeout
        self.server.arm(self)
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError):
                self.close_connection = True
                raise

    def expire(self) -> None:
        """Cut a connection that took too long to send its request."""
        log.debug("closing a slow connection from %s", self.client_address[0])
        with suppress(OSError):
            # The plain socket's shutdown: wakes the reading thread with EOF
            # without touching the TLS state another thread is using.
            socket.socket.shutdown(self.connection, socket.SHUT_RDWR)

    def _content_length(self) -> int | None:
        """The Content-Length (0 when absent); None when malformed or repeated."""
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return 0
        if len(set(v.strip() for v in values)) != 1:
            return None
        text = values[0].strip()
        return int(text) if _CONTENT_LENGTH_RE.fullmatch(text) else None

    def _serve(self) -> None:
        engine = self.server.engine
        headers = {k.lower(): v for k, v in self.headers.items()}
        fmt = "json" if "json" in headers.get("accept", "") else "xml"
        if "transfer-encoding" in headers:
            self._refuse(411, "Length Required",
                         "Chunked or other transfer-encoded bodies are not supported: "
                         "send a Content-Length", fmt)
            return
        length = self._content_length()
        if length is None:
            self._refuse(400, "Request syntactically incorrect.",
                         "Invalid Content-Length: expected one decimal number of bytes", fmt)
            return
        peer = self.client_address[0] if self.client_address else ""
        early, user = engine.admit(self.command, self.path, headers, length, peer)
        if early is not None:
            status, out_headers, payload = early
            if length:
                # The body stays unread: answer and drop the connection.
                self.close_connection = True
                out_headers = {**out_headers, "Connection": "close"}
            self._send(status, out_headers, payload)
            return
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            self.close_connection = True
            return
        self.server.disarm(self)
        status, out_headers, payload = engine.handle(
            self.command, self.path, headers, body, peer=peer, user=user)
        self._send(status, out_headers, payload)

    def _refuse(self, status: int, reason: str, detail: str, fmt: str) -> None:
        self.close_connection = True
        status, headers, payload = self.server.engine._fault(ApiError(status, reason, detail),
                                                             fmt)
        self._send(status, {**headers, "Connection": "close"}, payload)

    def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args) -> None:
        # Request lines may carry query strings; keep them out of user output.
        log.debug("%s %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        self.server.arm(self)
        try:
            super().handle_one_request()
        except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
            self.close_connection = True
