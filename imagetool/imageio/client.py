"""HTTP client of one imageio transfer URL (the hot byte path).

One persistent HTTP/1.1 keep-alive connection per client object; ``clone()``
gives worker threads their own connection. ``http.client`` is used rather
than httpx because ranged GETs read with ``readinto`` into a caller's buffer
avoid every intermediate copy (measured faster; see the benchmarks).

Ticket ids are credentials: they never appear in error messages.
"""

from __future__ import annotations

import copy
import http.client
import json
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

from imagetool.errors import ConnectionFailed, ImageioError, ProtocolError
from imagetool.iocore.backend import Closing, Extent
from imagetool.imageio.protocol import (CHECKSUM_AHEAD, DEFAULT_BLOCK_SIZE, EXTENSIONS_KEY,
                                        format_content_range, format_range,
                                        parse_content_range, parse_uint,
                                        set_socket_buffers)

__all__ = ["CHECKSUM_AHEAD", "DEFAULT_BLOCK_SIZE", "ImageioClient", "ImageioOptions"]
# Zeros sent as data (servers without the "zero" feature) go in pieces of this.
_ZERO_CHUNK = 4 * 1024 * 1024
# Error bodies are one line; never slurp a large body into a message.
_MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True)
class ImageioOptions:
    """What ``OPTIONS /images/<ticket>`` says the server can do for this ticket."""

    features: frozenset[str]
    max_readers: int
    max_writers: int
    # imagetool's own data plane: extensions listed apart from "features"
    # (e.g. "checksum-ahead", see imageio/protocol.py).
    extensions: frozenset[str] = frozenset()


# The server closed the connection under us. Over TLS a close without
# close_notify is an SSLEOFError, which would otherwise read as a protocol
# error ("EOF occurred in violation of protocol").
_CLOSED_BY_PEER = (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError)


def _content_range(header: str | None) -> tuple[int | None, int | None, int | None] | None:
    """A Content-Range header parsed, None when absent or invalid."""
    try:
        return parse_content_range(header)
    except ValueError:
        return None


def _uint(text: str | None) -> int | None:
    """A header's non-negative integer, None when absent or not ASCII digits."""
    try:
        return parse_uint(text.strip(" \t") if text else text)
    except ValueError:
        return None


class _Retry(Exception):
    """Internal: a reused keep-alive connection was closed before any reply."""


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str          # /images/<ticket>
    ticket: str


def _parse_url(url: str) -> _Target:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("imageio URL must be http(s)://host:port/images/<ticket>")
    path = parts.path.rstrip("/")
    ticket = path.rsplit("/", 1)[-1]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return _Target(parts.scheme, parts.hostname, port, path, ticket)


class ImageioClient(Closing):
    """Client of one ``http(s)://host:port/images/<ticket>`` transfer URL.

    Falls back to ``proxy_url`` when ``url`` cannot be connected. Not
    thread-safe: give each thread its own ``clone()``.
    """

    def __init__(self, url: str, *, cafile: str | None = None, insecure: bool = False,
                 proxy_url: str | None = None, signed_ticket: str | None = None,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0):
        self.url = url
        self.proxy_url = proxy_url
        self.cafile = cafile
        self.insecure = insecure
        self.signed_ticket = signed_ticket
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._targets = [_parse_url(url)]
        if proxy_url:
            self._targets.append(_parse_url(proxy_url))
        self._target: _Target | None = None     # the one that connected
        self._conn: http.client.HTTPConnection | None = None
        self._fresh = False                      # no request sent on _conn yet
        self._ssl_context: ssl.SSLContext | None = None
        self._options: ImageioOptions | None = None
        self._size: int | None = None

    # --- connection -----------------------------------------------------

    def clone(self) -> "ImageioClient":
        """A new client (own connection) for the same URL, for another thread;
        what this one learnt (the target that connected, the TLS context,
        OPTIONS, the size) is shared."""
        other = copy.copy(self)
        other._conn = None
        other._fresh = False
        return other

    def close(self) -> None:
        """Close the connection (a later request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            if self.insecure:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                ctx = ssl.create_default_context(cafile=self.cafile)
            self._ssl_context = ctx
        return self._ssl_context

    def _open(self, target: _Target) -> http.client.HTTPConnection:
        if target.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                target.host, target.port, timeout=self.connect_timeout,
                context=self._context())
        else:
            conn = http.client.HTTPConnection(
                target.host, target.port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except (OSError, ssl.SSLError) as e:
            conn.close()
            hint = ""
            if isinstance(e, ssl.SSLCertVerificationError):
                hint = (" (pass --cafile with the CA that signed the imageio "
                        "server's certificate, usually the engine CA, or --insecure)")
            raise ConnectionFailed(
                f"cannot connect to imageio at {target.host}:{target.port}: {e}{hint}") from None
        sock = conn.sock
        sock.settimeout(self.read_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_socket_buffers(sock)
        return conn

    def _connection(self) -> http.client.HTTPConnection:
        # http.client drops .sock when the server asked to close; reopen then.
        if self._conn is not None and self._conn.sock is None:
            self._conn.close()
            self._conn = None
        if self._conn is None:
            targets = [self._target] if self._target else self._targets
            for i, target in enumerate(targets):
                try:
                    self._conn = self._open(target)
                    break
                except ConnectionFailed:
                    if i == len(targets) - 1:
                        raise       # the last one's error (the proxy's, if any)
            self._target = target
            self._fresh = True
        return self._conn

    # --- request machinery -------------------------------------------------

    def _redact(self, text: str) -> str:
        for t in self._targets:
            if t.ticket:
                text = text.replace(t.ticket, "<ticket>")
        return text

    def _send(self, method: str, path: str, headers: dict[str, str],
              body: bytes | memoryview | None) -> http.client.HTTPResponse:
        conn = self._connection()
        fresh, self._fresh = self._fresh, False
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            if self.signed_ticket:
                conn.putheader("Authorization", self.signed_ticket)
            for name, value in headers.items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            if body is not None and len(body):
                try:
                    conn.send(body)
                except _CLOSED_BY_PEER:
                    # The server may have refused the body (403, 416, ...) and
                    # stopped reading: its reply says why, if it arrived.
                    resp = self._early_reply(conn)
                    if resp is not None:
                        return resp
                    raise
            return conn.getresponse()
        except (*_CLOSED_BY_PEER, http.client.RemoteDisconnected):
            self.close()
            if not fresh:
                # The server closed an idle keep-alive connection: nothing of
                # the reply arrived, so sending the request again is safe.
                raise _Retry() from None
            raise ConnectionFailed(self._where(method, "connection closed by server"))
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise ConnectionFailed(self._where(method, f"connection failed: {e}")) from None

    @staticmethod
    def _early_reply(conn: http.client.HTTPConnection) -> http.client.HTTPResponse | None:
        """A reply sent before the request body was fully sent, or None."""
        try:
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException):
            return None
        resp.will_close = True      # the connection cannot carry more requests
        return resp

    def _where(self, method: str, what: str) -> str:
        t = self._target or self._targets[0]
        return self._redact(f"imageio {method} {t.host}:{t.port}: {what}")

    def _request(self, method: str, suffix: str = "", query: dict | None = None,
                 headers: dict[str, str] | None = None,
                 body: bytes | memoryview | None = None,
                 root: bool = False) -> http.client.HTTPResponse:
        """Send one request, reconnecting once if the idle connection was closed."""
        headers = headers or {}
        for attempt in (0, 1):
            target = self._target or self._targets[0]
            path = suffix if root else target.path + suffix
            if query:
                path += "?" + urllib.parse.urlencode(query)
            try:
                return self._send(method, path, headers, body)
            except _Retry:
                if attempt:
                    raise ConnectionFailed(
                        self._where(method, "connection closed by server")) from None
        raise AssertionError("unreachable")

    def _fail(self, method: str, what: str, resp: http.client.HTTPResponse) -> ImageioError:
        """Read an error reply and make the exception (closes after 403)."""
        try:
            raw = resp.read(_MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            raw = b""
        text = raw.decode("utf-8", "replace").strip().splitlines()
        line = text[0] if text else resp.reason
        if resp.status == 403 or resp.will_close or len(raw) >= _MAX_ERROR_BODY:
            self.close()
        desc = f"{method} {what}".strip()
        return ImageioError(self._redact(
            f"imageio {desc} failed: {resp.status} {resp.reason}: {line}"), status=resp.status)

    def _json(self, method: str, suffix: str = "", query: dict | None = None,
              what: str = "") -> object:
        resp = self._request(method, suffix, query)
        if resp.status != 200:
            raise self._fail(method, what, resp)
        try:
            return json.loads(resp.read())
        except ValueError as e:
            self.close()
            raise ImageioError(f"imageio {method} {what}: invalid JSON reply: {e}",
                               status=resp.status) from None

    def _expect_empty(self, method: str, what: str, resp: http.client.HTTPResponse) -> None:
        if resp.status not in (200, 204):
            raise self._fail(method, what, resp)
        resp.read()

    def _patch(self, body: bytes, what: str) -> None:
        """A JSON ``PATCH`` answered with an empty 200 or 204."""
        resp = self._request("PATCH", headers={"Content-Type": "application/json"},
                             body=body)
        self._expect_empty("PATCH", what, resp)

    # --- API ------------------------------------------------------------------

    def options(self) -> ImageioOptions:
        """Features and concurrency the server offers for this ticket (cached)."""
        if self._options is None:
            resp = self._request("OPTIONS")
            if resp.status in (405, 204):
                # Old daemon (405) or old proxy (204): no optional features.
                resp.read()
                self._options = ImageioOptions(frozenset(), 1, 1)
            elif resp.status == 200:
                try:
                    data = json.loads(resp.read())
                except ValueError:
                    raise ImageioError("imageio OPTIONS: invalid JSON reply",
                                       status=200) from None
                self._options = _parse_options(data)
            else:
                raise self._fail("OPTIONS", "", resp)
        return self._options

    def size(self) -> int:
        """The image size in bytes (from extents, or a one-byte ranged GET)."""
        if self._size is None:
            if "extents" in self.options().features:
                exts = self.extents()
                self._size = exts[-1].end if exts else 0
            else:
                resp = self._request("GET", headers={"Range": format_range(0, 1)})
                rng = _content_range(resp.getheader("Content-Range"))
                if resp.status == 206:
                    resp.read()
                    if rng is None or rng[:2] != (0, 0) or rng[2] is None:
                        self.close()
                        raise ProtocolError(f"imageio GET range 0-0: server sent "
                                            f"{_header(resp, 'Content-Range')}, "
                                            "expected 'bytes 0-0/<size>'")
                    self._size = rng[2]
                elif resp.status == 200:
                    length = _uint(resp.getheader("Content-Length"))
                    # Whole image sent: we must not keep a half-read reply.
                    self.close()
                    if length is None:
                        raise ImageioError("imageio GET: unknown image size", status=200)
                    self._size = length
                elif resp.status == 416:
                    # An empty image cannot satisfy any range.
                    resp.read()
                    if rng is None or rng[2] != 0:
                        raise self._fail("GET", "range 0-0", resp)
                    self._size = 0
                else:
                    raise self._fail("GET", "range 0-0", resp)
        return self._size

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill all of ``buf`` from ``offset`` with one ranged GET; return len(buf)."""
        length = len(buf)
        if length == 0:
            return 0
        what = f"range {offset}-{offset + length - 1}"
        resp = self._request("GET", headers={"Range": format_range(offset, length)})
        if resp.status != 206:
            if resp.status == 200:
                self.close()     # it is sending the whole image; drop it
                raise ImageioError(f"imageio GET {what}: server ignored Range", status=200)
            raise self._fail("GET", what, resp)
        self._check_range(what, resp, offset, length)
        view = memoryview(buf).cast("B")
        got = 0
        try:
            while got < length:
                try:
                    n = resp.readinto(view[got:])
                except ssl.SSLEOFError:
                    n = 0       # closed without close_notify: the body ends here
                if not n:
                    break
                got += n
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise ConnectionFailed(self._where("GET", f"{what}: {e}")) from None
        if got != length:
            self.close()
            # The connection ended inside the body: a network fault (transient,
            # retried), not an answer of the server.
            raise ConnectionFailed(self._where("GET", f"{what}: short reply "
                                                      f"({got} of {length} bytes)"))
        return got

    def _check_range(self, what: str, resp: http.client.HTTPResponse, offset: int,
                     length: int) -> None:
        """The 206 reply is the range asked for, else close and raise.

        A server answering another range (or another image size) would
        have its bytes written at the wrong place without a word.
        """
        rng = _content_range(resp.getheader("Content-Range"))
        expected = (offset, offset + length - 1)
        total = self._size
        if (rng is None or rng[:2] != expected
                or (rng[2] is not None and total is not None and rng[2] != total)):
            self.close()
            want = f"bytes {offset}-{offset + length - 1}/{'*' if total is None else total}"
            raise ProtocolError(f"imageio GET {what}: server sent "
                                f"{_header(resp, 'Content-Range')}, expected {want!r}")
        if _uint(resp.getheader("Content-Length")) != length:
            self.close()
            raise ProtocolError(f"imageio GET {what}: server sent "
                                f"{_header(resp, 'Content-Length')}, expected {length}")

    def write(self, offset: int, data: bytes | memoryview, flush: bool = False) -> None:
        """Write ``data`` at ``offset`` with one PUT (no copy of ``data``)."""
        view = memoryview(data).cast("B")
        length = len(view)
        if length == 0:
            return
        what = f"range {offset}-{offset + length - 1}"
        resp = self._request(
            "PUT", query={"flush": "y" if flush else "n"},
            headers={"Content-Range": format_content_range(offset, length)},
            body=view)
        self._expect_empty("PUT", what, resp)

    def zero(self, offset: int, length: int, flush: bool = False) -> None:
        """Make ``[offset, offset+length)`` read as zeros (sent as data if the
        server lacks the zero feature)."""
        if length == 0:
            return
        if "zero" in self.options().features:
            body = json.dumps({"op": "zero", "offset": offset, "size": length,
                               "flush": flush}).encode()
            return self._patch(body, f"zero {offset}-{offset + length - 1}")
        zeros = memoryview(bytes(min(length, _ZERO_CHUNK)))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            self.write(offset, zeros[:n], flush=flush and offset + n == end)
            offset += n

    def flush(self) -> None:
        """Ask the server to make written data durable (no-op without the feature)."""
        if "flush" not in self.options().features:
            return
        self._patch(b'{"op": "flush"}', "flush")

    def extents(self, context: str = "zero") -> list[Extent]:
        """The server's allocation map for ``context="zero"``.

        For ``context="dirty"`` extents not dirty are reported with
        ``hole=True`` (nothing to copy) and ``zero`` as the server says.
        """
        what = f"extents {context}"
        data = self._json("GET", "/extents", {"context": context}, what=what)
        try:
            return _parse_extents(data, context, self._size)
        except ProtocolError as e:
            self.close()
            raise ProtocolError(f"imageio GET {what}: server sent {e}") from None

    def checksum(self, algorithm: str = "blake2b",
                 block_size: int = DEFAULT_BLOCK_SIZE) -> dict:
        """The server's block checksum: ``{"algorithm", "block_size", "checksum"}``."""
        data = self._json("GET", "/checksum",
                          {"algorithm": algorithm, "block_size": block_size},
                          what="checksum")
        value = data.get("checksum") if isinstance(data, dict) else None
        if not (isinstance(value, str) and value
                and all(c in "0123456789abcdef" for c in value)):
            raise ProtocolError(f"imageio GET checksum: server sent {_show(data)}, "
                                "expected an object with a hex \"checksum\"")
        return data

    def checksum_ahead(self, algorithm: str,
                       block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        """Announce the checksum this upload will ask for (``checksum-ahead``).

        Only for servers listing the extension in OPTIONS (imagetool's data
        plane): they then hash flushed blocks while the upload runs.
        """
        body = json.dumps({"op": CHECKSUM_AHEAD, "algorithm": algorithm,
                           "block_size": block_size}).encode()
        self._patch(body, CHECKSUM_AHEAD)

    def checksum_algorithms(self) -> list[str]:
        """Algorithm names the server's checksum accepts."""
        data = self._json("GET", "/checksum/algorithms", what="checksum algorithms")
        names = data.get("algorithms") if isinstance(data, dict) else None
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ProtocolError(f"imageio GET checksum algorithms: server sent "
                                f"{_show(data)}, expected {{\"algorithms\": [names]}}")
        return names

    def info(self) -> dict:
        """``GET /info/``: the server's version."""
        # /info/ lives at the server root, not under /images/<ticket>.
        resp = self._request("GET", "/info/", root=True)
        if resp.status != 200:
            raise self._fail("GET", "info", resp)
        return json.loads(resp.read())


# --- reply validation ----------------------------------------------------------

def _show(value: object, limit: int = 80) -> str:
    """A JSON value as the server sent it, cut to one short line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _header(resp: http.client.HTTPResponse, name: str) -> str:
    """``Name 'value'`` or ``no Name``, for messages."""
    value = resp.getheader(name)
    return f"no {name}" if value is None else f"{name} {value!r}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_options(data: object) -> ImageioOptions:
    """OPTIONS' JSON as ImageioOptions; ProtocolError naming what is wrong."""
    def bad(what: str) -> ProtocolError:
        return ProtocolError(f"imageio OPTIONS: server sent {what}")

    if not isinstance(data, dict):
        raise bad(f"{_show(data)}, expected a JSON object")
    lists = {}
    for key in ("features", EXTENSIONS_KEY):
        value = data.get(key, [])
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise bad(f"{key} {_show(value)}, expected a list of names")
        lists[key] = frozenset(value)
    limits = {}
    for key in ("max_readers", "max_writers"):
        value = data.get(key, 1)
        if not _is_int(value) or value < 1:
            raise bad(f"{key} {_show(value)}, expected a positive integer")
        limits[key] = value
    return ImageioOptions(lists["features"], limits["max_readers"], limits["max_writers"],
                          lists[EXTENSIONS_KEY])


def _parse_extents(data: object, context: str, size: int | None) -> list[Extent]:
    """Extents JSON as Extents tiling ``[0, size)`` exactly, in order.

    Raises ProtocolError("<what is wrong>") for anything else: a gap or an
    overlap would leave bytes uncopied or copied twice, and an extent past
    the end would write beyond the image.
    """
    if not isinstance(data, list):
        raise ProtocolError(f"{_show(data)}, expected a list of extents")
    out = []
    pos = 0
    for i, e in enumerate(data):
        if not isinstance(e, dict):
            raise ProtocolError(f"extent {i} {_show(e)}, expected an object")
        for key in ("start", "length"):
            if key not in e:
                raise ProtocolError(f"extent {i} {_show(e)} without {key!r}")
            if not _is_int(e[key]):
                raise ProtocolError(f"extent {i} {key} {_show(e[key])}, expected an integer")
        for key in ("zero", "hole", "dirty"):
            if key in e and not isinstance(e[key], bool):
                raise ProtocolError(f"extent {i} {key} {_show(e[key])}, expected a boolean")
        start, length = e["start"], e["length"]
        if length <= 0:
            raise ProtocolError(f"extent {i} with length {length}, expected > 0")
        if start != pos:
            if i == 0:
                raise ProtocolError(f"extent 0 starting at {start}, expected 0")
            kind = "a gap" if start > pos else "an overlap"
            raise ProtocolError(f"extent {i} starting at {start} after one ending at "
                                f"{pos} ({kind})")
        pos = start + length
        if size is not None and pos > size:
            raise ProtocolError(f"extent {i} ending at {pos}, past the image size {size}")
        hole = not e.get("dirty", True) if context == "dirty" else e.get("hole", False)
        out.append(Extent(start, length, e.get("zero", False), hole))
    if size is not None and pos != size:
        raise ProtocolError(f"extents ending at {pos}, short of the image size {size}")
    return out
