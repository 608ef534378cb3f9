"""The local engine's imageio data plane: serves tickets' backends over HTTP(S).

A threaded server (one thread per connection) speaking the imageio protocol
(ovirt-imageio docs, "Images API"; the handlers are in ``dataplane_images``).
The control plane adds ``Ticket``s to the registry and hands out
``f"{server.url}/images/{ticket.uuid}"`` as the transfer URL.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
from contextlib import suppress
from http import HTTPStatus

from imagetool import __version__
from imagetool.imageio import protocol
from imagetool.server import dataplane_images as images
from imagetool.server.dataplane_http import HttpConnection, HttpError, PeerClosed, Request
from imagetool.server.tickets import Ticket, TicketRegistry
from imagetool.threads import Worker, wait_all

log = logging.getLogger(__name__)

BUFFER_SIZE = 8 * 1024 * 1024
# Idle timeout before a connection has touched any ticket.
DEFAULT_IDLE_TIMEOUT = 60.0
HANDSHAKE_TIMEOUT = 10.0
# A request head must arrive whole within this once its first byte came: a
# client dripping header bytes cannot hold a thread (and a descriptor) for ever.
HEAD_TIMEOUT = 30.0
# Connections served at once. The ovirt-imageio client opens up to 8 per
# transfer; this leaves room for many transfers and their checksum reads.
MAX_CONNECTIONS = 128
# Beyond MAX_CONNECTIONS this many more are told "503, too many connections"
# (after a short handshake); beyond that, new connections are closed at once.
MAX_OVERFLOW = 16
OVERFLOW_TIMEOUT = 2.0
# accept() failing (EMFILE, ENOBUFS, ...): wait this long, doubling up to the max.
ACCEPT_BACKOFF_MIN = 0.01
ACCEPT_BACKOFF_MAX = 1.0
# After refusing a request body: how long and how much of it to read away.
DISCARD_TIMEOUT = 2.0
DISCARD_LIMIT = 256 * 1024 * 1024


class DataPlaneServer:
    """imageio data plane on ``host:port`` (port 0: ephemeral) for ``registry``.

    ``ssl_context``: a server-side context (HTTPS); None serves plain HTTP.
    """

    def __init__(self, registry: TicketRegistry, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None,
                 buffer_size: int = BUFFER_SIZE,
                 max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 head_timeout: float = HEAD_TIMEOUT):
        self.registry = registry
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.head_timeout = head_timeout
        self._overflow = 0
        self.host = host
        self.ssl_context = ssl_context
        self.buffer_size = buffer_size
        self._requested_port = port
        self._listener: socket.socket | None = None
        self._accept_thread: Worker | None = None
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, Worker] = {}
        self._stopping = threading.Event()
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL, e.g. ``https://127.0.0.1:54322``."""
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> "DataPlaneServer":
        """Bind, listen and serve in background threads."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit the buffer sizes.
        protocol.set_socket_buffers(sock)
        sock.bind((self.host, self._requested_port))
        sock.listen(64)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._stopping.clear()
        self._accept_thread = Worker(self._accept_loop,
                                     name=f"dataplane-accept-{self.port}").start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listening socket and every connection; join the threads.

        Shutting the sockets down wakes every thread at once (accept() and
        recv() return); ``timeout`` only bounds a thread stuck elsewhere.
        The waits are on the threads' events (``imagetool.threads``): a
        Ctrl-C landing in them is raised once the stop is done, never
        leaving a connection thread running unseen.
        """
        interrupted: list[BaseException] = []
        self._stopping.set()
        if self._listener is not None:
            with suppress(OSError):
                # shutdown() wakes a thread blocked in accept(); close() alone does not.
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if self._accept_thread is not None:
            wait_all([self._accept_thread], timeout, on_interrupt=interrupted.append)
            self._accept_thread = None
        with self._lock:
            conns = list(self._connections.items())
        for sock, _ in conns:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        wait_all([w for _, w in conns], timeout, on_interrupt=interrupted.append)
        self._listener = None
        if interrupted:
            raise interrupted[0]

    def __enter__(self) -> "DataPlaneServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def connection_count(self) -> int:
        """Open client connections (for tests and status)."""
        with self._lock:
            return len(self._connections)

    # --- threads -----------------------------------------------------------

    def _accept_loop(self) -> None:
        """Accept until ``stop()``; a failing accept() waits and tries again.

        Running out of descriptors (EMFILE/ENFILE), kernel memory or
        buffers, or a client resetting before we accepted it are
        conditions that pass: giving up would leave the data plane dead
        while the control plane still hands out its URLs. Only a listener
        closed by ``stop()`` ends the loop.
        """
        listener = self._listener
        assert listener is not None
        delay = 0.0
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError as e:
                if self._stopping.is_set() or e.errno in (errno.EBADF, errno.EINVAL):
                    break       # stop() shut the listener down
                delay = min(ACCEPT_BACKOFF_MAX, max(ACCEPT_BACKOFF_MIN, delay * 2))
                log.warning("data plane accept failed (%s); retrying in %.2f s",
                            e.strerror or e, delay)
                self._stopping.wait(delay)
                continue
            delay = 0.0
            if self._stopping.is_set():
                sock.close()
                break
            with self._lock:
                full = len(self._connections) >= self.max_connections
                refuse = full and self._overflow < MAX_OVERFLOW
                if refuse:
                    self._overflow += 1
                elif not full:
                    thread = Worker(self._serve, sock, name="dataplane-conn")
                    self._connections[sock] = thread
            if refuse:
                threading.Thread(target=self._refuse, args=(sock,),
                                 name="dataplane-refuse", daemon=True).start()
            elif full:
                sock.close()
            else:
                thread.start()

    def _refuse(self, raw: socket.socket) -> None:
        """Answer 503 on a connection over the limit, quickly, and close it."""
        try:
            raw.settimeout(OVERFLOW_TIMEOUT)
            sock = raw
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(raw, server_side=True)
            conn = HttpConnection(sock, 0)
            conn.send_error(HttpError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"Too many connections (limit {self.max_connections}); retry later",
                {"Retry-After": "1"}), close=True)
            # Let the reply reach the client before the close (see _discard_body).
            sock.shutdown(socket.SHUT_WR)
            sock.recv(65536)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            with self._lock:
                self._overflow -= 1
            with suppress(OSError):
                raw.close()

    def _serve(self, raw: socket.socket) -> None:
        sock = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                raw.settimeout(HANDSHAKE_TIMEOUT)
                try:
                    sock = self.ssl_context.wrap_socket(raw, server_side=True,
                                                        do_handshake_on_connect=False)
                except (OSError, ssl.SSLError) as e:
                    log.debug("TLS setup failed: %s", e)
                    return
                # The TLS socket took over the descriptor (``raw`` is detached
                # and can no longer be shut down): stop() must find this one.
                with self._lock:
                    worker = self._connections.pop(raw, None)
                    if worker is not None:
                        self._connections[sock] = worker
                if self._stopping.is_set():
                    return
                try:
                    sock.do_handshake()
                except (OSError, ssl.SSLError) as e:
                    log.debug("TLS handshake failed: %s", e)
                    return
            conn = HttpConnection(sock, self.buffer_size)
            try:
                _Session(self, conn).run()
            finally:
                conn.close()
        except Exception:
            log.exception("data plane connection failed")
        finally:
            with self._lock:
                self._connections.pop(raw, None)
                self._connections.pop(sock, None)
            for s in {raw, sock}:
                with suppress(OSError):
                    s.close()


class _Session:
    """One connection's request loop and its ticket bookkeeping."""

    def __init__(self, server: DataPlaneServer, conn: HttpConnection):
        self.server = server
        self.conn = conn
        self.ticket: Ticket | None = None      # counted in ticket.connections

    def run(self) -> None:
        try:
            while not self.server._stopping.is_set():
                idle = (self.ticket.inactivity_timeout if self.ticket
                        else self.server.idle_timeout)
                try:
                    req = self.conn.read_request(idle, self.server.head_timeout)
                except HttpError as e:
                    self._send_error(e, close=True)
                    return
                if req is None:
                    return
                # Body reads: the idle timeout per receive, not what the
                # head's deadline left.
                self.conn.sock.settimeout(idle)
                if not self._handle(req):
                    return
        except (socket.timeout, PeerClosed, ConnectionError, ssl.SSLError, OSError):
            # Idle too long, client gone, or the server is stopping.
            return
        finally:
            self._attach(None)

    def _attach(self, ticket: Ticket | None) -> None:
        """Count this connection on ``ticket`` (and off the previous one)."""
        if ticket is self.ticket:
            return
        if self.ticket is not None:
            with self.ticket.lock:
                self.ticket.connections -= 1
        if ticket is not None:
            with ticket.lock:
                ticket.connections += 1
        self.ticket = ticket

    def _send_error(self, e: HttpError, close: bool) -> None:
        with suppress(OSError):
            self.conn.send_error(e, close)

    def _discard_body(self) -> None:
        """Swallow what the client is still sending before we close.

        Closing with unread bytes makes the kernel send a reset, which can
        destroy our error reply in the client's buffers before it reads it.
        """
        sock = self.conn.sock
        with suppress(OSError, ValueError):
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(DISCARD_TIMEOUT)
            left = DISCARD_LIMIT
            buf = self.conn.buffer
            while left > 0:
                n = self.conn.recv_into(buf[:min(len(buf), left)])
                if n == 0:
                    break
                left -= n

    def _handle(self, req: Request) -> bool:
        """Serve one request; False when the connection must close."""
        ctx = images.Context(self.conn, req)
        ctx.close = not req.keep_alive or req.query.get("close") == "y"
        try:
            self._route(ctx)
        except HttpError as e:
            # A body left unread would be parsed as the next request.
            unread = not ctx.body_done and (
                "transfer-encoding" in req.headers
                or req.headers.get("content-length", "0").strip() not in ("", "0"))
            close = ctx.close or e.close or unread
            self._send_error(e, close)
            if unread:
                self._discard_body()
            return not close
        except (PeerClosed, socket.timeout, ConnectionError, ssl.SSLError):
            return False
        except Exception as e:
            log.exception("%s %s failed", req.method, _redacted_path(req.path))
            self._send_error(HttpError(HTTPStatus.INTERNAL_SERVER_ERROR,
                                       f"Internal server error: {e}"), True)
            return False
        return not ctx.close

    def _route(self, ctx: images.Context) -> None:
        req = ctx.req
        path = req.path
        if path in ("/info", "/info/"):
            if req.method != "GET":
                raise _not_allowed(req, "GET")
            self.conn.send_json({"version": __version__}, close=ctx.close)
            return
        if not path.startswith("/images/"):
            raise HttpError(HTTPStatus.NOT_FOUND, f"No handler for {path!r}")
        parts = path[len("/images/"):].split("/")
        ticket_id, rest = parts[0], "/".join(parts[1:])
        if not ticket_id:
            raise HttpError(HTTPStatus.BAD_REQUEST, "Ticket id is required")
        if ticket_id == "*" and not rest:
            if req.method != "OPTIONS":
                raise _not_allowed(req, "OPTIONS")
            images.options_all(ctx)
            return
        handlers = _ROUTES.get(rest)
        if handlers is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"No handler for {_redacted_path(path)!r}")
        entry = handlers.get(req.method)
        if entry is None:
            raise _not_allowed(req, ",".join(handlers))
        op, handler = entry
        ticket = images.authorize(self.server.registry, ticket_id, op)
        self._attach(ticket)
        # Touch before and after: a long request keeps the ticket alive too.
        ticket.touch(0)
        ticket.begin_request()
        try:
            moved = handler(ctx, ticket)
        finally:
            ticket.end_request()
        ticket.touch(moved)


_ROUTES = {
    "": {"OPTIONS": ("read", images.options), "GET": ("read", images.get),
         "PUT": ("write", images.put), "PATCH": ("write", images.patch)},
    "extents": {"GET": ("read", images.extents)},
    "checksum": {"GET": ("read", images.checksum)},
    "checksum/algorithms": {"GET": ("read", images.checksum_algorithms)},
}


def _not_allowed(req: Request, allow: str) -> HttpError:
    return HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"Method {req.method} not allowed",
                     {"Allow": allow})


def _redacted_path(path: str) -> str:
    """A request path without its ticket id (ids are credentials)."""
    if path.startswith("/images/"):
        rest = path[len("/images/"):].partition("/")[2]
        return "/images/<ticket>" + (f"/{rest}" if rest else "")
    return path
