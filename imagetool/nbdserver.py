"""A read-only NBD server on a unix socket, in pure Python.

It serves Backends (a backup point's disks: ``backup serve``) to any NBD
client: ``qemu-img``, ``qemu-nbd --connect``, ``nbdfuse``, ``guestfish
--format=raw -a nbd://...``. The protocol is the one the NBD project
documents (``doc/proto.md``, "The NBD protocol"):

- handshake: fixed newstyle only, with ``NBD_FLAG_NO_ZEROES``; options
  ``NBD_OPT_EXPORT_NAME``, ``NBD_OPT_GO``, ``NBD_OPT_INFO`` (export size,
  flags, block sizes), ``NBD_OPT_LIST``, ``NBD_OPT_ABORT``,
  ``NBD_OPT_STRUCTURED_REPLY`` and ``NBD_OPT_{LIST,SET}_META_CONTEXT``
  (``base:allocation`` only); any other option is answered
  ``NBD_REP_ERR_UNSUP`` (``NBD_OPT_STARTTLS`` included: the socket is
  local and owner-only);
- transmission: ``NBD_CMD_READ`` (simple replies, or structured ones
  where zero extents are sent as holes), ``NBD_CMD_BLOCK_STATUS``
  (``base:allocation``: a backend's zero extents are ``HOLE|ZERO``) and
  ``NBD_CMD_DISC``. Exports are read-only (``NBD_FLAG_READ_ONLY``):
  writes, trims and zeroing get ``EPERM``; flush and cache, not offered,
  ``EINVAL``.

Everything a client sends is checked at the door: option and name lengths
are bounded (an option longer than ``MAX_OPTION`` ends the connection,
since skipping it would mean reading what the client chooses), a read
longer than ``MAX_REQUEST`` or reaching past the end of the export gets
``EINVAL``/``EOVERFLOW`` and the connection goes on; a bad request magic
means the stream is out of step, so that connection is closed. No client
can stop the server or others' connections, and memory stays bounded:
at most ``MAX_CONNECTIONS`` connections, each reading one request at a
time in pieces of at most ``PIECE`` bytes.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import threading
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Callable

from imagetool.errors import ImagetoolError

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
CLIENT_FLAGS = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10

REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_CAN_MULTI_CONN = 1 << 8
TRANSMISSION_FLAGS = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
CMD_FLAG_REQ_ONE = 1 << 3

REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE = 0, 1, 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1

STATE_HOLE, STATE_ZERO = 1, 2
ALLOCATION = "base:allocation"
META_CONTEXT_ID = 1

EPERM, EIO, EINVAL, EOVERFLOW = 1, 5, 22, 75

MAX_OPTION = 64 << 10          # an option's data: a name and a few queries
MAX_NAME = 4096                # NBD's limit on export names
MAX_QUERIES = 64
MAX_REQUEST = 32 << 20         # the request size every client may send
PIECE = 4 << 20                # read and sent at a time
MAX_DESCRIPTORS = 4096         # per block status reply
MAX_CONNECTIONS = 16
HANDSHAKE_TIMEOUT = 60.0


class NbdError(ImagetoolError):
    """The NBD server cannot start (socket path taken, no exports)."""


class _Closed(Exception):
    """The client went away, or must be disconnected."""


@dataclass
class Export:
    """One export: its name, a description and the backend it reads."""

    name: str
    backend: Any
    description: str = ""
    _zero: list = field(default_factory=list, repr=False)      # sorted (start, end, zero)
    _starts: list = field(default_factory=list, repr=False)

    @property
    def size(self) -> int:
        return self.backend.size

    def prepare(self) -> None:
        """Read the extents once: block status answers from them."""
        runs: list[tuple[int, int, bool]] = []
        for e in self.backend.extents():
            zero = bool(e.zero or e.hole)
            if runs and runs[-1][2] == zero and runs[-1][1] == e.start:
                runs[-1] = (runs[-1][0], e.end, zero)
            else:
                runs.append((e.start, e.end, zero))
        self._zero = runs
        self._starts = [r[0] for r in runs]

    def runs(self, offset: int, length: int, limit: int) -> list[tuple[int, bool]]:
        """``(length, zero)`` runs covering ``[offset, offset+length)``, at most
        ``limit`` of them (then they cover less), each at least one byte."""
        out: list[tuple[int, bool]] = []
        end = offset + length
        i = max(0, bisect_right(self._starts, offset) - 1)
        pos = offset
        while pos < end and i < len(self._zero) and len(out) < limit:
            start, stop, zero = self._zero[i]
            if stop > pos:
                n = min(stop, end) - pos
                out.append((n, zero))
                pos += n
            i += 1
        if pos < end and len(out) < limit:
            out.append((end - pos, False))      # not covered: data, to be safe
        return out


class NbdServer:
    """Serves ``exports`` read-only on the unix socket ``path``.

    ``exports[0]`` is also the default export (the empty name that
    ``nbd+unix:///?socket=PATH`` asks for). ``serve_forever`` returns after
    ``shutdown()`` (or raises KeyboardInterrupt on Ctrl-C); either way
    ``close()`` closes every connection and removes the socket file.
    """

    def __init__(self, path: str, exports: list[Export],
                 log: Callable[[str], None] | None = None) -> None:
        if not exports:
            raise NbdError("nothing to serve")
        self.path = path
        self.exports = exports
        self.by_name = {e.name: e for e in exports}
        self.log = log or (lambda text: None)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        for e in exports:
            e.prepare()
        if os.path.lexists(path):
            try:
                is_socket = stat.S_ISSOCK(os.lstat(path).st_mode)
            except OSError:
                is_socket = False
            if not is_socket or _in_use(path):
                raise NbdError(f"{path}: exists; give a new socket path")
            os.unlink(path)     # a socket a killed server left
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)   # 0600: only the owner may connect (the VM's data)
        try:
            self.sock.bind(path)
        except OSError as e:
            self.sock.close()
            raise NbdError(f"{path}: cannot listen: {e.strerror}") from None
        finally:
            os.umask(old)
        self.sock.listen(MAX_CONNECTIONS)
        self.sock.settimeout(0.2)

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            if not self._slots.acquire(blocking=False):
                self.log(f"refused a connection: {MAX_CONNECTIONS} already open")
                conn.close()
                continue
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve_client, args=(conn,), daemon=True,
                             name="nbd-client").start()

    def shutdown(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "NbdServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- one client -------------------------------------------------------------

    def _serve_client(self, conn: socket.socket) -> None:
        try:
            _Client(self, conn).run()
        except _Closed:
            pass
        except OSError:
            pass        # the client went away mid-reply
        except Exception as e:      # a bug must not take the server down
            self.log(f"connection closed: {type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            self._slots.release()


def _in_use(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


class _Client:
    def __init__(self, server: NbdServer, conn: socket.socket) -> None:
        self.server = server
        self.conn = conn
        self.structured = False
        self.allocation = False     # base:allocation negotiated
        self.export: Export | None = None
        self.backend: Any = None

    # --- raw I/O ---------------------------------------------------------------

    def recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.conn.recv_into(view[got:])
            if not k:
                raise _Closed()
            got += k
        return bytes(buf)

    def send(self, *parts: bytes | memoryview) -> None:
        for p in parts:
            self.conn.sendall(p)

    # --- handshake -------------------------------------------------------------

    def run(self) -> None:
        self.conn.settimeout(HANDSHAKE_TIMEOUT)
        self.send(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (flags,) = struct.unpack(">I", self.recv(4))
        if flags & ~CLIENT_FLAGS or not flags & FLAG_FIXED_NEWSTYLE:
            raise _Closed()     # the spec: unknown client flags end the connection
        no_zeroes = bool(flags & FLAG_NO_ZEROES)
        while self.export is None:
            magic, opt, length = struct.unpack(">QII", self.recv(16))
            if magic != IHAVEOPT or length > MAX_OPTION:
                raise _Closed()
            data = self.recv(length)
            self.option(opt, data, no_zeroes)
        self.conn.settimeout(None)
        self.backend = self.export.backend.clone()
        try:
            self.transmission()
        finally:
            self.backend.close()

    def reply(self, opt: int, kind: int, data: bytes = b"") -> None:
        self.send(struct.pack(">QIII", REPLY_MAGIC, opt, kind, len(data)), data)

    def error(self, opt: int, kind: int, message: str) -> None:
        self.reply(opt, kind, message.encode()[:1024])

    def option(self, opt: int, data: bytes, no_zeroes: bool) -> None:
        if opt == OPT_EXPORT_NAME:
            export = self.find(data)
            if export is None:
                raise _Closed()         # the only answer EXPORT_NAME allows
            self.send(struct.pack(">QH", export.size, TRANSMISSION_FLAGS),
                      b"" if no_zeroes else bytes(124))
            self.export = export
        elif opt == OPT_ABORT:
            self.reply(opt, REP_ACK)
            raise _Closed()
        elif opt == OPT_LIST:
            if data:
                return self.error(opt, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
            for e in self.server.exports:
                name = e.name.encode()
                self.reply(opt, REP_SERVER,
                           struct.pack(">I", len(name)) + name + e.description.encode())
            self.reply(opt, REP_ACK)
        elif opt in (OPT_INFO, OPT_GO):
            self.info_or_go(opt, data)
        elif opt == OPT_STRUCTURED_REPLY:
            if data:
                return self.error(opt, REP_ERR_INVALID, "takes no data")
            self.structured = True
            self.reply(opt, REP_ACK)
        elif opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
            self.meta_context(opt, data)
        else:
            self.error(opt, REP_ERR_UNSUP, f"option {opt} is not supported")

    def find(self, name: bytes) -> Export | None:
        try:
            text = name.decode()
        except UnicodeDecodeError:
            return None
        if text == "":
            return self.server.exports[0]
        return self.server.by_name.get(text)

    def _name(self, data: bytes, pos: int = 0) -> tuple[bytes, int] | None:
        """A 32-bit length-prefixed string of ``data`` at ``pos``, and the
        position after it; None when it does not fit."""
        if len(data) < pos + 4:
            return None
        (n,) = struct.unpack_from(">I", data, pos)
        if n > MAX_NAME or len(data) < pos + 4 + n:
            return None
        return data[pos + 4:pos + 4 + n], pos + 4 + n

    def info_or_go(self, opt: int, data: bytes) -> None:
        got = self._name(data)
        if got is None or len(data) < got[1] + 2:
            return self.error(opt, REP_ERR_INVALID, "malformed request")
        name, pos = got
        (nreq,) = struct.unpack_from(">H", data, pos)
        if len(data) != pos + 2 + 2 * nreq:
            return self.error(opt, REP_ERR_INVALID, "malformed information requests")
        requests = set(struct.unpack_from(f">{nreq}H", data, pos + 2))
        export = self.find(name)
        if export is None:
            return self.error(opt, REP_ERR_UNKNOWN, "no such export (NBD_OPT_LIST lists them)")
        self.reply(opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, export.size,
                                              TRANSMISSION_FLAGS))
        if INFO_NAME in requests:
            self.reply(opt, REP_INFO, struct.pack(">H", INFO_NAME) + export.name.encode())
        if INFO_DESCRIPTION in requests and export.description:
            self.reply(opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION)
                       + export.description.encode())
        self.reply(opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, MAX_REQUEST))
        self.reply(opt, REP_ACK)
        if opt == OPT_GO:
            self.export = export

    def meta_context(self, opt: int, data: bytes) -> None:
        got = self._name(data)
        if got is None or len(data) < got[1] + 4:
            return self.error(opt, REP_ERR_INVALID, "malformed request")
        name, pos = got
        (nq,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if nq > MAX_QUERIES:
            return self.error(opt, REP_ERR_TOO_BIG, f"more than {MAX_QUERIES} queries")
        queries = []
        for _ in range(nq):
            q = self._name(data, pos)
            if q is None:
                return self.error(opt, REP_ERR_INVALID, "malformed query")
            queries.append(q[0])
            pos = q[1]
        if pos != len(data):
            return self.error(opt, REP_ERR_INVALID, "trailing data")
        if opt == OPT_SET_META_CONTEXT and not self.structured:
            return self.error(opt, REP_ERR_INVALID, "negotiate structured replies first")
        if self.find(name) is None:
            return self.error(opt, REP_ERR_UNKNOWN, "no such export")
        wanted = [ALLOCATION.encode()]
        if opt == OPT_LIST_META_CONTEXT and nq:
            wanted = [q for q in queries if q in (b"base:", ALLOCATION.encode())]
            wanted = [ALLOCATION.encode()] if wanted else []
        elif opt == OPT_SET_META_CONTEXT:
            wanted = [ALLOCATION.encode()] if ALLOCATION.encode() in queries else []
            self.allocation = bool(wanted)
        for w in wanted:
            self.reply(opt, REP_META_CONTEXT, struct.pack(">I", META_CONTEXT_ID) + w)
        self.reply(opt, REP_ACK)

    # --- transmission ----------------------------------------------------------

    def transmission(self) -> None:
        assert self.export is not None
        size = self.export.size
        while True:
            magic, flags, cmd, handle, offset, length = struct.unpack(">IHHQQI",
                                                                      self.recv(28))
            if magic != REQUEST_MAGIC:
                raise _Closed()     # out of step: nothing after can be trusted
            if cmd == CMD_DISC:
                raise _Closed()
            if cmd == CMD_WRITE:
                # The payload follows: read it to stay in step, then refuse.
                if length > MAX_REQUEST:
                    raise _Closed()
                self.recv(length)
                self.fail(handle, EPERM, "the export is read-only")
                continue
            if cmd in (CMD_TRIM, CMD_WRITE_ZEROES):
                self.fail(handle, EPERM, "the export is read-only")
                continue
            if cmd not in (CMD_READ, CMD_BLOCK_STATUS):
                self.fail(handle, EINVAL, f"command {cmd} is not supported")
                continue
            if cmd == CMD_BLOCK_STATUS and not self.allocation:
                self.fail(handle, EINVAL, "no metadata context negotiated")
                continue
            if length == 0 or offset > size or length > size - offset:
                self.fail(handle, EINVAL, f"{length} bytes at offset {offset} are outside "
                                          f"the export's {size} bytes")
                continue
            if cmd == CMD_READ and length > MAX_REQUEST:
                self.fail(handle, EOVERFLOW, f"reads are at most {MAX_REQUEST} bytes")
                continue
            if cmd == CMD_READ:
                self.read(handle, offset, length)
            else:
                self.block_status(handle, offset, length, flags & CMD_FLAG_REQ_ONE)

    def fail(self, handle: int, err: int, message: str) -> None:
        if self.structured:
            msg = message.encode()[:4096]
            payload = struct.pack(">IH", err, len(msg)) + msg
            self.send(struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                  REPLY_TYPE_ERROR, handle, len(payload)), payload)
        else:
            self.send(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, err, handle))

    def _fill(self, offset: int, view: memoryview) -> str | None:
        """Read guest bytes into ``view``; an error's text, or None."""
        try:
            n = self.backend.read_into(offset, view)
        except (ImagetoolError, OSError, ValueError) as e:
            return str(e)
        return None if n == len(view) else f"short read at offset {offset}"

    def read(self, handle: int, offset: int, length: int) -> None:
        if self.structured:
            return self.structured_read(handle, offset, length)
        buf = bytearray(min(PIECE, length))
        pos, end = offset, offset + length
        first = True
        while pos < end:
            view = memoryview(buf)[:min(PIECE, end - pos)]
            err = self._fill(pos, view)
            if err is not None:
                self.server.log(f"export {self.export.name}: {err}")
                if first:
                    return self.fail(handle, EIO, err)
                raise _Closed()     # part of the data is sent: only closing tells
            if first:
                self.send(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, handle))
                first = False
            self.send(view)
            pos += len(view)

    def structured_read(self, handle: int, offset: int, length: int) -> None:
        runs = self.export.runs(offset, length, 1 << 30)
        buf = bytearray(min(PIECE, length))
        pieces: list[tuple[int, int, bool]] = []
        pos = offset
        for n, zero in runs:
            stop = pos + n
            while pos < stop:
                k = stop - pos if zero else min(PIECE, stop - pos)
                pieces.append((pos, k, zero))
                pos += k
        for i, (pos, n, zero) in enumerate(pieces):
            flags = REPLY_FLAG_DONE if i == len(pieces) - 1 else 0
            if zero:
                self.send(struct.pack(">IHHQIQI", STRUCTURED_REPLY_MAGIC, flags,
                                      REPLY_TYPE_OFFSET_HOLE, handle, 12, pos, n))
                continue
            view = memoryview(buf)[:n]
            err = self._fill(pos, view)
            if err is not None:
                self.server.log(f"export {self.export.name}: {err}")
                return self.fail(handle, EIO, err)
            self.send(struct.pack(">IHHQIQ", STRUCTURED_REPLY_MAGIC, flags,
                                  REPLY_TYPE_OFFSET_DATA, handle, 8 + n, pos), view)

    def block_status(self, handle: int, offset: int, length: int, one: int) -> None:
        runs = self.export.runs(offset, length, 1 if one else MAX_DESCRIPTORS)
        body = struct.pack(">I", META_CONTEXT_ID) + b"".join(
            struct.pack(">II", n, STATE_HOLE | STATE_ZERO if zero else 0)
            for n, zero in runs)
        self.send(struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                              REPLY_TYPE_BLOCK_STATUS, handle, len(body)), body)


def serve(path: str, exports: list[Export], *, log: Callable[[str], None] | None = None,
          ready: Callable[[NbdServer], None] | None = None) -> None:
    """Serve until Ctrl-C (KeyboardInterrupt, re-raised) or ``shutdown()``;
    the socket file is removed on the way out."""
    with NbdServer(path, exports, log) as server:
        if ready:
            ready(server)
        server.serve_forever()


__all__ = ["Export", "NbdError", "NbdServer", "serve"]
