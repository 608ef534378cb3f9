"""One client's connection: the handshake, then transmission (reads and
block status of one export), every field checked at the door."""

from __future__ import annotations

import socket
import struct
from typing import Any

from imagetool.errors import ImagetoolError
from imagetool.nbd.protocol import (
    ALLOCATION, CLIENT_FLAGS, CMD_BLOCK_STATUS, CMD_DISC, CMD_FLAG_REQ_ONE, CMD_READ, CMD_TRIM,
    CMD_WRITE, CMD_WRITE_ZEROES, EINVAL, EIO, EOVERFLOW, EPERM, FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES, HANDSHAKE_TIMEOUT, IHAVEOPT, INFO_BLOCK_SIZE, INFO_DESCRIPTION,
    INFO_EXPORT, INFO_NAME, MAX_DESCRIPTORS, MAX_NAME, MAX_OPTION, MAX_QUERIES, MAX_REQUEST,
    META_CONTEXT_ID, NBDMAGIC, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST,
    OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_STRUCTURED_REPLY, PIECE,
    REPLY_FLAG_DONE, REPLY_MAGIC, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR,
    REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REP_ACK, REP_ERR_INVALID,
    REP_ERR_TOO_BIG, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER,
    REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STATE_HOLE, STATE_ZERO, STRUCTURED_REPLY_MAGIC,
    TRANSMISSION_FLAGS, _Closed)


class Session:
    """The protocol with one connected client."""

    def __init__(self, server: Any, conn: socket.socket) -> None:
        # ``server``: the NbdServer that accepted ``conn`` (its exports and
        # limits); not imported, as the server module imports this one.
        self.server = server
        self.conn = conn
        self.structured = False
        self.allocation = False     # base:allocation negotiated
        self.export: Any = None                     # the Export chosen
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
            self.option(opt, self.recv(length), no_zeroes)
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

    def find(self, name: bytes) -> Any:
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

    def _name_and_count(self, data: bytes, fmt: str) -> tuple[bytes, int, int] | None:
        """The export name that starts an option's data, the count (``fmt``,
        16 or 32 bits) of the items after it, and their position; None
        when it does not fit (NBD protocol: NBD_OPT_INFO and NBD_OPT_GO
        count 16-bit requests, the meta context options 32-bit queries)."""
        got = self._name(data)
        width = struct.calcsize(fmt)
        if got is None or len(data) < got[1] + width:
            return None
        (count,) = struct.unpack_from(fmt, data, got[1])
        return got[0], count, got[1] + width

    def info_or_go(self, opt: int, data: bytes) -> None:
        got = self._name_and_count(data, ">H")
        if got is None:
            return self.error(opt, REP_ERR_INVALID, "malformed request")
        name, nreq, pos = got
        if len(data) != pos + 2 * nreq:
            return self.error(opt, REP_ERR_INVALID, "malformed information requests")
        requests = set(struct.unpack_from(f">{nreq}H", data, pos))
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
        got = self._name_and_count(data, ">I")
        if got is None:
            return self.error(opt, REP_ERR_INVALID, "malformed request")
        name, nq, pos = got
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
        alloc = ALLOCATION.encode()
        if opt == OPT_SET_META_CONTEXT:
            matched = self.allocation = alloc in queries
        else:       # a list without queries lists every context
            matched = not nq or any(q in (b"base:", alloc) for q in queries)
        if matched:
            self.reply(opt, REP_META_CONTEXT, struct.pack(">I", META_CONTEXT_ID) + alloc)
        self.reply(opt, REP_ACK)

    # --- transmission ----------------------------------------------------------

    def transmission(self) -> None:
        assert self.export is not None
        size = self.export.size
        while True:
            magic, flags, cmd, handle, offset, length = struct.unpack(">IHHQQI",
                                                                      self.recv(28))
            if magic != REQUEST_MAGIC or cmd == CMD_DISC:
                raise _Closed()     # out of step (nothing after is trusted), or done
            if cmd == CMD_WRITE:
                # The payload follows: read it to stay in step, then refuse.
                if length > MAX_REQUEST:
                    raise _Closed()
                self.recv(length)
            if cmd in (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES):
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
        while pos < end:
            view = memoryview(buf)[:min(PIECE, end - pos)]
            err = self._fill(pos, view)
            if err is not None:
                self.server.log(f"export {self.export.name}: {err}")
                if pos == offset:
                    return self.fail(handle, EIO, err)
                raise _Closed()     # part of the data is sent: only closing tells
            if pos == offset:
                self.send(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, handle))
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
