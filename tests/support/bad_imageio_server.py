"""A small imageio server for tests that can be told to misbehave.

It serves one in-memory image at ``/images/<ticket>`` over plain HTTP/1.1
(keep-alive) with the requests the imagetool client uses: OPTIONS, ranged
GET, PUT with Content-Range, PATCH zero/flush, GET extents, checksum and
checksum/algorithms. With no fault it is a correct server; each fault bends
one kind of reply the way a broken or hostile server could::

    with BadImageioServer(data, fault="range-shifted") as srv:
        client = ImageioClient(srv.url)

Faults (``fault`` attribute, may be changed between requests):

- ``range-shifted``: ranged GETs answer the range 4096 bytes further on
  (bytes and Content-Range both of that other range).
- ``range-label``: the right bytes, labelled with another Content-Range.
- ``range-total``: Content-Range total that is not the image size.
- ``range-missing``: a 206 without Content-Range.
- ``short-body``: Content-Length as asked, half the bytes, then close.
- ``content-length``: Content-Length one byte short of the range (and as
  many bytes).
- ``extents-<kind>``: extents JSON replaced by ``EXTENTS[kind](size)``.
- ``options-<kind>``: OPTIONS JSON replaced by ``OPTIONS[kind]``.
- ``flip``: one byte of GET replies flipped; PUTs stored with one byte
  flipped (the checksum is of what is stored).
- ``checksum-<kind>``: the checksum reply replaced by ``CHECKSUMS[kind]``.

``features`` (default all) decides what OPTIONS offers; without
``checksum`` the checksum URLs answer 404 like an old daemon.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from imagetool.checksum import ALGORITHMS
from imagetool.checksum import checksum as block_checksum
from imagetool.iocore.backend import Extent

TICKET = "bad-ticket"
ALL_FEATURES = ("checksum", "extents", "flush", "zero")

EXTENTS = {
    "gap": lambda size: [{"start": 0, "length": 4096, "zero": False, "hole": False},
                         {"start": 8192, "length": size - 8192, "zero": False,
                          "hole": False}],
    "overlap": lambda size: [{"start": 0, "length": 8192, "zero": False, "hole": False},
                             {"start": 4096, "length": size - 4096, "zero": False,
                              "hole": False}],
    "negative": lambda size: [{"start": 0, "length": size, "zero": False, "hole": False},
                              {"start": size, "length": -4096, "zero": True,
                               "hole": True}],
    "past-end": lambda size: [{"start": 0, "length": size + 4096, "zero": False,
                               "hole": False}],
    "dict": lambda size: {"start": 0, "length": size, "zero": False},
    "null": lambda size: None,
    "no-length": lambda size: [{"start": 0, "zero": False, "hole": False}],
    "str-length": lambda size: [{"start": 0, "length": str(size), "zero": False}],
    "bool-start": lambda size: [{"start": False, "length": size, "zero": False}],
    "str-zero": lambda size: [{"start": 0, "length": size, "zero": "no"}],
    "unsorted": lambda size: [{"start": 4096, "length": size - 4096, "zero": False},
                              {"start": 0, "length": 4096, "zero": False}],
}

OPTIONS = {
    "lots": {"features": list(ALL_FEATURES), "max_readers": "lots", "max_writers": 4},
    "negative": {"features": list(ALL_FEATURES), "max_readers": 4, "max_writers": -1},
    "bool": {"features": list(ALL_FEATURES), "max_readers": True, "max_writers": 4},
    "list": ["checksum"],
    "features-str": {"features": "checksum", "max_readers": 4, "max_writers": 4},
}

CHECKSUMS = {
    "missing": {"algorithm": "blake2b", "block_size": 4194304},
    "number": {"algorithm": "blake2b", "block_size": 4194304, "checksum": 42},
    "list": ["deadbeef"],
}


class _Image:
    """The stored bytes as a Backend, for the block checksum."""

    def __init__(self, data: bytearray):
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def extents(self, context: str = "zero"):
        yield Extent(0, len(self.data))

    def read_into(self, offset: int, buf: memoryview) -> int:
        n = max(0, min(len(buf), len(self.data) - offset))
        buf[:n] = self.data[offset:offset + n]
        return n


class _Quiet(ThreadingHTTPServer):
    """No tracebacks on stderr when a client hangs up on a reply (the
    tests read the client's stderr)."""

    def handle_error(self, request, client_address) -> None:
        pass


class BadImageioServer:
    """See the module docstring. ``data``: the image; ``url``: its transfer URL."""

    def __init__(self, data: bytes, fault: str | None = None,
                 features: tuple[str, ...] = ALL_FEATURES):
        self.data = bytearray(data)
        self.fault = fault
        self.features = features
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(_Handler):
            srv = server

        self._httpd = _Quiet(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/images/{TICKET}"

    def start(self) -> "BadImageioServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "BadImageioServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    srv: BadImageioServer

    def log_message(self, *args) -> None:
        pass

    # --- helpers ------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              close: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: object) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _route(self) -> str | None:
        path, _, query = self.path.partition("?")
        self.query = dict(p.partition("=")[::2] for p in query.split("&") if p)
        prefix = f"/images/{TICKET}"
        if not path.startswith(prefix):
            self._send(403, b"No such ticket\n", close=True)
            return None
        self.srv.requests.append((self.command, path[len(prefix):]))
        return path[len(prefix):]

    @property
    def fault(self) -> str:
        return self.srv.fault or ""

    # --- methods ------------------------------------------------------------

    def do_OPTIONS(self) -> None:
        if self._route() is None:
            return
        if self.fault.startswith("options-"):
            self._json(OPTIONS[self.fault[len("options-"):]])
            return
        self._json({"features": list(self.srv.features), "max_readers": 4,
                    "max_writers": 4})

    def do_GET(self) -> None:
        rest = self._route()
        if rest is None:
            return
        if rest == "/extents":
            return self._extents()
        if rest in ("/checksum", "/checksum/algorithms"):
            if "checksum" not in self.srv.features:
                return self._send(404, b"No such resource\n")
            if rest == "/checksum":
                return self._checksum()
            return self._json({"algorithms": sorted(ALGORITHMS)})
        return self._read()

    def _extents(self) -> None:
        size = len(self.srv.data)
        if self.fault.startswith("extents-"):
            return self._json(EXTENTS[self.fault[len("extents-"):]](size))
        self._json([{"start": 0, "length": size, "zero": False, "hole": False}])

    def _checksum(self) -> None:
        if self.fault.startswith("checksum-"):
            return self._json(CHECKSUMS[self.fault[len("checksum-"):]])
        algorithm = self.query.get("algorithm", "blake2b")
        block_size = int(self.query.get("block_size", 4 << 20))
        with self.srv.lock:
            image = _Image(bytearray(self.srv.data))
        self._json(block_checksum(image, algorithm=algorithm, block_size=block_size))

    def _read(self) -> None:
        data = self.srv.data
        size = len(data)
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if not m:
            return self._send(200, bytes(data), {"Content-Type": "application/octet-stream"})
        first, last = int(m.group(1)), min(int(m.group(2)), size - 1)
        label_first, label_last, total = first, last, size
        if self.fault == "range-shifted":
            first, last = first + 4096, last + 4096
            label_first, label_last = first, last
        elif self.fault == "range-label":
            label_first, label_last = first + 4096, last + 4096
        elif self.fault == "range-total":
            total = size * 2
        body = bytes(data[first:last + 1]).ljust(last - first + 1, b"\0")
        if self.fault == "flip" and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Range": f"bytes {label_first}-{label_last}/{total}"}
        if self.fault == "range-missing":
            del headers["Content-Range"]
        if self.fault == "content-length":
            body = body[:-1]
        if self.fault == "short-body":
            headers["Content-Length"] = str(len(body))
            self._send(206, body[:len(body) // 2], headers, close=True)
            return
        self._send(206, body, headers)

    def do_PUT(self) -> None:
        if self._route() is None:
            return
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        m = re.fullmatch(r"bytes (\d+)-(\d+)/.*", self.headers.get("Content-Range", ""))
        offset = int(m.group(1)) if m else 0
        if self.fault == "flip" and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        with self.srv.lock:
            self.srv.data[offset:offset + len(body)] = body
        self._send(200)

    def do_PATCH(self) -> None:
        if self._route() is None:
            return
        msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if msg.get("op") == "zero":
            with self.srv.lock:
                self.srv.data[msg["offset"]:msg["offset"] + msg["size"]] = \
                    bytes(msg["size"])
        self._send(200)
