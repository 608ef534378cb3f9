"""Minimal HTTP/1.1 framing for the data plane: requests in, replies out.

Written on plain sockets rather than ``http.server`` so that request bodies
go from the socket straight into a reused buffer (``recv_into``) and replies
leave from a memoryview (``sendall``) without per-line parsing or copies.
"""

from __future__ import annotations

import json
import mmap
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from http import HTTPStatus

from imagetool.imageio.protocol import parse_uint

MAX_HEADER_BYTES = 64 * 1024
# Bytes requested per recv() while looking for the end of the header block.
_HEADER_CHUNK = 16 * 1024


class HttpError(Exception):
    """An error reply: status, a one-line text body, optional extra headers.

    ``close``: close the connection after sending (403, unread bodies, ...).
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 close: bool = False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.close = close


class PeerClosed(Exception):
    """The client went away (EOF or reset) in the middle of a request."""


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]                    # lower-case names
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.target)
        self.path = urllib.parse.unquote(parts.path)
        self.query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return conn == "keep-alive"
        return conn != "close"

    def content_length(self) -> int:
        """The body length; 400 when missing or invalid; 411 for chunked
        bodies, which this server does not take."""
        if "transfer-encoding" in self.headers:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED,
                            "Chunked transfer encoding is not supported; "
                            "send the body with Content-Length", close=True)
        value = self.headers.get("content-length")
        if value is None:
            raise HttpError(HTTPStatus.BAD_REQUEST, "Content-Length header is required",
                            close=True)
        try:
            return parse_uint(value.strip(" \t"))
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST,
                            f"Invalid Content-Length {value!r}: expecting ASCII digits",
                            close=True) from None


def _head_timeout() -> HttpError:
    return HttpError(HTTPStatus.REQUEST_TIMEOUT,
                     "Request header not received in time", close=True)


class HttpConnection:
    """One client connection: header parsing and body/reply transport."""

    def __init__(self, sock: socket.socket, buffer_size: int):
        self.sock = sock
        self.buffer_size = buffer_size
        self._pending = bytearray()        # bytes received after a header block
        self._buffer: memoryview | None = None
        self._mmap: mmap.mmap | None = None

    @property
    def buffer(self) -> memoryview:
        """The connection's reused I/O buffer (allocated on first use)."""
        if self._buffer is None:
            # Anonymous mmap: page aligned, as O_DIRECT writes need.
            self._mmap = mmap.mmap(-1, self.buffer_size)
            self._buffer = memoryview(self._mmap)
        return self._buffer

    def close(self) -> None:
        """Release the buffer (the socket is the caller's)."""
        try:
            if self._buffer is not None:
                self._buffer.release()
            if self._mmap is not None:
                self._mmap.close()
        except BufferError:
            pass           # a slice still alive somewhere: the GC frees it
        self._buffer = None
        self._mmap = None

    def read_request(self, idle_timeout: float | None = None,
                     head_timeout: float | None = None) -> Request | None:
        """The next request's head, or None when the client closed cleanly.

        ``idle_timeout``: how long to wait for its first byte (socket.timeout
        after that: an idle keep-alive connection). ``head_timeout``: the
        whole head must arrive within this from its first byte, else 408,
        however slowly the bytes keep coming. None: no limit.
        """
        deadline = None
        while True:
            end = self._pending.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._pending) > MAX_HEADER_BYTES:
                raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "Request header too large", close=True)
            if not self._pending.strip():
                if idle_timeout is not None:
                    self.sock.settimeout(idle_timeout)
            elif head_timeout is not None:
                if deadline is None:
                    deadline = time.monotonic() + head_timeout
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _head_timeout()
                self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(_HEADER_CHUNK)
            except socket.timeout:
                if deadline is not None:
                    raise _head_timeout() from None
                raise
            if not chunk:
                if self._pending.strip():
                    raise PeerClosed()
                return None
            self._pending += chunk
        head = bytes(self._pending[:end])
        del self._pending[:end + 4]
        lines = head.decode("latin-1").split("\r\n")
        # Tolerate stray empty lines between requests (RFC 9112 2.2).
        while lines and not lines[0]:
            lines.pop(0)
        try:
            method, target, version = lines[0].split(" ")
        except (ValueError, IndexError):
            raise HttpError(HTTPStatus.BAD_REQUEST, "Invalid request line", close=True)
        if not version.startswith("HTTP/1."):
            raise HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                            f"Unsupported protocol version {version!r}", close=True)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(HTTPStatus.BAD_REQUEST, "Invalid header line", close=True)
            headers[name.lower()] = value.strip()
        return Request(method, target, version, headers)

    def recv_into(self, view: memoryview) -> int:
        """Receive body bytes into ``view`` (buffered bytes first); 0 at EOF."""
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            del self._pending[:n]
            return n
        return self.sock.recv_into(view)

    def read_small_body(self, length: int, limit: int) -> bytes:
        """Read a small body (JSON) whole; 413 when larger than ``limit``."""
        if length > limit:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"Request body too large ({length} > {limit} bytes)",
                            close=True)
        buf = bytearray(length)
        got = 0
        while got < length:
            n = self.recv_into(memoryview(buf)[got:])
            if n == 0:
                raise HttpError(HTTPStatus.BAD_REQUEST, "Short request body", close=True)
            got += n
        return bytes(buf)

    def send_continue(self, req: Request) -> None:
        """The interim 100 a client sending ``Expect: 100-continue`` waits for."""
        if req.headers.get("expect", "").lower() == "100-continue":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def send_head(self, status: int, headers: dict[str, str], close: bool,
                  body: bytes = b"") -> None:
        """Send the status line and headers (Content-Length is the caller's),
        and ``body`` in the same write."""
        phrase = HTTPStatus(status).phrase
        lines = [f"HTTP/1.1 {status} {phrase}", "Server: imagetool"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if close:
            lines.append("Connection: close")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def send_reply(self, status: int, body: bytes = b"",
                   headers: dict[str, str] | None = None,
                   content_type: str | None = None, close: bool = False) -> None:
        """A complete reply with a small body, sent in one write."""
        h = dict(headers or {})
        if content_type:
            h["Content-Type"] = content_type
        h["Content-Length"] = str(len(body))
        self.send_head(status, h, close, body)

    def send_json(self, obj: object, headers: dict[str, str] | None = None,
                  close: bool = False) -> None:
        self.send_reply(200, json.dumps(obj).encode() + b"\n", headers,
                        "application/json", close)

    def send_error(self, error: HttpError, close: bool) -> None:
        self.send_reply(error.status, error.message.encode("utf-8", "replace") + b"\n",
                        error.headers, "text/plain; charset=UTF-8", close)
