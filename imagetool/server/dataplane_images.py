"""The imageio protocol's requests on ``/images/<ticket>`` over a Backend.

Each handler returns the number of image bytes it moved (for
``Ticket.touch``) and sets ``ctx.close`` when the connection must not be
reused. Errors are raised as ``HttpError`` with a one-line message.

One extension to imageio's protocol, invisible to clients that do not ask
for it: checksum ahead (``server/checksum_ahead.py``). OPTIONS of a
writable ticket on a raw file adds ``"imagetool_features":
["checksum-ahead"]`` (imageio's ``features`` list is unchanged). A client
that will verify its upload may then send, before its first write,
``PATCH /images/<t>`` with ``{"op": "checksum-ahead", "algorithm": A,
"block_size": B}`` (200, empty body; 409 while other requests are in
flight or when the ticket cannot do it). The server then hashes blocks
as flushes make them durable, and a later ``GET .../checksum`` with the
same A and B reads back only the blocks not hashed yet; its value is
that of a full read-back. Tickets never announced work as before.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from http import HTTPStatus

from imagetool import checksum as block_checksum
from imagetool.errors import FormatError
from imagetool.formats.raw import RawBackend
from imagetool.fsutil import opened
from imagetool.imageio import protocol
from imagetool.imageio.protocol import (CHECKSUM_AHEAD, DEFAULT_BLOCK_SIZE, EXTENSIONS_KEY,
                                        FEATURES, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
                                        format_content_range, parse_content_range,
                                        parse_uint)

from imagetool.server.checksum_ahead import ChecksumAhead
from imagetool.server.dataplane_http import HttpConnection, HttpError, PeerClosed, Request
from imagetool.server.files import NO_ROOM, naming, os_reason
from imagetool.server.tickets import Ticket, TicketRegistry

ALL_FEATURES = list(FEATURES)
READ_FEATURES = list(protocol.READ_FEATURES)
DEFAULT_MAX_READERS = 8
DEFAULT_MAX_WRITERS = 8
_MAX_PATCH_BODY = 16 * 1024
_FORBIDDEN = "You are not allowed to access this resource: "


@dataclass
class Context:
    """What a handler may look at and change about its connection."""

    conn: HttpConnection
    req: Request
    close: bool = False
    body_done: bool = False       # the request body was consumed


def authorize(registry: TicketRegistry, ticket_id: str, op: str) -> Ticket:
    """The ticket if it allows ``op`` ("read"/"write") now, else 403 (and close)."""
    ticket = registry.get(ticket_id)
    if ticket is None:
        raise HttpError(HTTPStatus.FORBIDDEN, f"{_FORBIDDEN}No such ticket {ticket_id}",
                        close=True)
    name = f"Transfer={ticket.transfer_id or ticket.uuid}"
    if ticket.canceled:
        raise HttpError(HTTPStatus.FORBIDDEN, f"{_FORBIDDEN}{name} was canceled", close=True)
    if ticket.expired():
        raise HttpError(HTTPStatus.FORBIDDEN, f"{_FORBIDDEN}{name} expired", close=True)
    if op not in ticket.ops:
        raise HttpError(HTTPStatus.FORBIDDEN, f"{_FORBIDDEN}{name} forbids {op}", close=True)
    return ticket


def _readable_size(ticket: Ticket) -> int:
    return min(ticket.size, ticket.backend().size)


# --- OPTIONS -----------------------------------------------------------------

def options(ctx: Context, ticket: Ticket) -> int:
    backend = ticket.backend()
    features = ALL_FEATURES if ticket.writable else READ_FEATURES
    # A backend may limit concurrency (e.g. a writer appending in order).
    body = {"features": features,
            "max_readers": backend.max_readers or DEFAULT_MAX_READERS,
            "max_writers": backend.max_writers or DEFAULT_MAX_WRITERS}
    if ticket.writable and _direct(backend):
        body[EXTENSIONS_KEY] = [CHECKSUM_AHEAD]
    allow = "OPTIONS,GET,PUT,PATCH" if ticket.writable else "OPTIONS,GET"
    ctx.conn.send_json(body, {"Allow": allow}, close=ctx.close)
    return 0


def options_all(ctx: Context) -> None:
    ctx.conn.send_json({"features": ALL_FEATURES},
                       {"Allow": "OPTIONS,GET,PUT,PATCH"}, close=ctx.close)


# --- GET -------------------------------------------------------------------------

def get(ctx: Context, ticket: Ticket) -> int:
    backend = ticket.backend()
    size = _readable_size(ticket)
    rng = ctx.req.headers.get("range")
    if rng is None:
        offset, length, status = 0, size, 200
        headers = {}
    else:
        try:    # bytes=A-B or bytes=A-
            offset, length = protocol.parse_range(rng, size)
        except ValueError as e:
            raise HttpError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, str(e),
                            {"Content-Range": format_content_range(None, size=size)}) from None
        status = 206
        headers = {"Content-Range": format_content_range(offset, length, size)}
    headers["Content-Type"] = "application/octet-stream"
    headers["Content-Length"] = str(length)
    conn = ctx.conn
    conn.send_head(status, headers, close=ctx.close)
    if (_SENDFILE and isinstance(backend, RawBackend)
            and not isinstance(conn.sock, ssl.SSLSocket)):
        return _sendfile(ctx, backend, offset, length)
    buf = conn.buffer
    done = 0
    while done < length:
        n = backend.read_into(offset + done, buf[:min(len(buf), length - done)])
        if n <= 0:
            # The image shrank under us: the promised length cannot be sent.
            ctx.close = True
            raise PeerClosed()
        conn.sock.sendall(buf[:n])
        done += n
    return done


# Plain-HTTP GETs of raw files: the kernel moves file pages to the socket
# (no read into our buffer, no copy from it), faster than the O_DIRECT read
# + sendall path (benchmarks/transfer_results.md). Not for TLS (the bytes
# must pass through OpenSSL).
_SENDFILE = hasattr(os, "sendfile") and hasattr(select, "poll")


def _sendfile(ctx: Context, backend: RawBackend, offset: int, length: int) -> int:
    """Send ``length`` bytes of the file from ``offset`` with sendfile(2).

    The pages it reads are dropped afterwards (POSIX_FADV_DONTNEED) so that
    serving a large image does not evict the rest of the page cache (as
    with O_DIRECT reads). The socket's timeout still applies.
    """
    sock = ctx.conn.sock
    timeout = sock.gettimeout()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    sent = 0
    with opened(backend.path) as fd:
        while sent < length:
            try:
                n = os.sendfile(sock.fileno(), fd, offset + sent,
                                min(length - sent, 1 << 30))
            except BlockingIOError:     # a socket with a timeout is non-blocking
                if not poller.poll(None if timeout is None else timeout * 1000):
                    raise socket.timeout("timed out sending the image") from None
                continue
            if n == 0:
                break       # end of file: the image shrank under us
            sent += n
        with suppress(OSError):  # advice only
            os.posix_fadvise(fd, offset, sent, os.POSIX_FADV_DONTNEED)
    if sent != length:
        ctx.close = True
        raise PeerClosed()
    return sent


# --- PUT -------------------------------------------------------------------------

def put(ctx: Context, ticket: Ticket) -> int:
    req = ctx.req
    length = req.content_length()
    header = req.headers.get("content-range")
    if header is None:
        offset = 0
    else:
        try:
            offset, last, _ = parse_content_range(header)
        except ValueError:
            offset = last = None
        if offset is None or last is None:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"Invalid Content-Range {header!r}",
                            close=True)
        if last < offset or last - offset + 1 != length:
            raise HttpError(HTTPStatus.BAD_REQUEST,
                            f"Content-Range {header!r} does not match Content-Length "
                            f"{length}", close=True)
    if offset + length > ticket.size:
        raise _past_end(offset, length, ticket.size, close=True)
    flush = _flush_param(req)
    backend = ticket.backend()
    ctx.conn.send_continue(req)
    conn = ctx.conn
    buf = conn.buffer
    write = backend.write
    done = 0
    with _writing(ticket, offset, length):
        while done < length:
            # Fill the whole buffer before writing: fewer, larger backend writes.
            want = min(len(buf), length - done)
            got = 0
            while got < want:
                n = conn.recv_into(buf[got:want])
                if n == 0:
                    ctx.close = True
                    if got:
                        write(offset + done, buf[:got])
                    raise HttpError(HTTPStatus.BAD_REQUEST,
                                    f"Short request body: got {done + got} of {length} "
                                    "bytes", close=True)
                got += n
            write(offset + done, buf[:got])
            done += got
    ctx.body_done = True
    if flush:
        _flush(ticket, backend)
    ctx.conn.send_reply(200, close=ctx.close)
    return done


def _past_end(offset: int, length: int, size: int, close: bool = False) -> HttpError:
    """The 416 for a write or zero beyond the image, naming its size."""
    return HttpError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                     f"Requested range {offset}-{offset + length - 1} is past the "
                     f"image size {size}",
                     {"Content-Range": format_content_range(None, size=size)}, close=close)


@contextmanager
def _writing(ticket: Ticket, offset: int, length: int):
    """Around a write or zero of ``[offset, offset + length)``: the ticket's
    write tracking hears of it before, and its checksum ahead (if any)
    knows the range is changing until it ends."""
    if ticket.on_write is not None:
        ticket.on_write(offset, length)
    ahead = ticket.checksum_ahead
    if ahead is not None:
        ahead.begin_write(offset, length)
    try:
        with _room(ticket):
            yield
    finally:
        if ahead is not None:
            ahead.end_write(offset, length)


@contextmanager
def _room(ticket: Ticket):
    """Around writes and flushes of the ticket's image: a file system out of
    space (or quota) is an error naming the volume's file, not a bare
    "[Errno 28] No space left on device"."""
    try:
        with naming(getattr(ticket._backend, "path", None) or f"the image of {ticket.uuid}"):
            yield
    except OSError as e:
        if e.errno in NO_ROOM:
            raise HttpError(HTTPStatus.INSUFFICIENT_STORAGE,
                            f"Cannot write: {os_reason(e)}", close=True) from None
        raise


def _flush(ticket: Ticket, backend) -> None:
    """``backend.flush()``, telling the ticket's checksum ahead (if any)."""
    ahead = ticket.checksum_ahead
    with _room(ticket):
        if ahead is None:
            backend.flush()
        else:
            ahead.flush(backend.flush)


def _flush_param(req: Request) -> bool:
    value = req.query.get("flush", "y")
    if value not in ("y", "n"):
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"Unsupported value {value!r} for 'flush', expecting 'y' or 'n'",
                        close=True)
    return value == "y"


# --- PATCH -----------------------------------------------------------------------

def _int_field(msg: dict, name: str) -> int:
    if name not in msg:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"Missing required value for {name!r}")
    value = msg[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"Integer required for {name!r}: {value!r}")
    if value < 0:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"Invalid value for {name!r}: {value} < 0")
    return value


def _bool_field(msg: dict, name: str, default: bool) -> bool:
    value = msg.get(name, default)
    if not isinstance(value, bool):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"Boolean required for {name!r}: {value!r}")
    return value


def patch(ctx: Context, ticket: Ticket) -> int:
    length = ctx.req.content_length()
    ctx.conn.send_continue(ctx.req)
    body = ctx.conn.read_small_body(length, _MAX_PATCH_BODY)
    ctx.body_done = True
    try:
        msg = json.loads(body)
    except ValueError as e:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"Invalid JSON message: {e}")
    if not isinstance(msg, dict):
        raise HttpError(HTTPStatus.BAD_REQUEST, "Invalid JSON message: expecting an object")
    if "op" not in msg:
        raise HttpError(HTTPStatus.BAD_REQUEST, "Missing required value for 'op'")
    op = msg["op"]
    backend = ticket.backend()
    size = 0
    if op == "zero":
        offset = _int_field(msg, "offset")
        size = _int_field(msg, "size")
        flush = _bool_field(msg, "flush", False)
        if offset + size > ticket.size:
            raise _past_end(offset, size, ticket.size)
        if size:
            with _writing(ticket, offset, size):
                backend.zero(offset, size)      # holes, or in place: the backend's sparse
        if flush:
            _flush(ticket, backend)
    elif op == "flush":
        _flush(ticket, backend)
    elif op == CHECKSUM_AHEAD:
        _announce(ticket, backend, msg)
    else:
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"Unsupported value {op!r} for 'op', expecting one of ['flush', 'zero']")
    ctx.conn.send_reply(200, close=ctx.close)
    return size


# --- extents and checksum --------------------------------------------------------

def extents(ctx: Context, ticket: Ticket) -> int:
    context = ctx.req.query.get("context", "zero")
    if context == "dirty" and not ticket.dirty:
        raise HttpError(HTTPStatus.NOT_FOUND, "Ticket does not support dirty extents")
    if context not in ("zero", "dirty"):
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"Unsupported value {context!r} for 'context', "
                        "expecting one of ['dirty', 'zero']")
    size = _readable_size(ticket)
    out = []
    for ext in ticket.backend().extents(context):
        if ext.start >= size:
            break
        length = min(ext.end, size) - ext.start
        if context == "zero":
            out.append({"start": ext.start, "length": length,
                        "zero": ext.zero, "hole": ext.hole})
        else:
            # Backends report blocks unchanged since the checkpoint as holes.
            out.append({"start": ext.start, "length": length,
                        "dirty": not ext.hole, "zero": ext.zero})
    ctx.conn.send_json(out, close=ctx.close)
    return 0


def checksum(ctx: Context, ticket: Ticket) -> int:
    query = ctx.req.query
    algorithm = _check_algorithm(query.get("algorithm", "blake2b"))
    raw = query.get("block_size", str(DEFAULT_BLOCK_SIZE))
    try:
        value = parse_uint(raw)
    except ValueError:
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"Invalid block size: {raw!r}: expecting ASCII digits") from None
    block_size = _check_block_size(value)
    backend = ticket.backend()
    ahead = ticket.checksum_ahead
    if ahead is not None and not ahead.matches(algorithm, block_size, backend.size):
        ahead = None
    with ahead.paused() if ahead is not None else nullcontext({}) as known:
        # Four readers keep the disk busy while the others hash (I/O-bound
        # direct reads, hashlib drops the GIL).
        result = block_checksum.checksum(backend, algorithm=algorithm,
                                         block_size=block_size, workers=4, known=known)
    ctx.conn.send_json(result, close=ctx.close)
    return 0


def _check_algorithm(algorithm: object) -> str:
    algorithms = block_checksum.ALGORITHMS
    if not isinstance(algorithm, str) or algorithm not in algorithms:
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"Unsupported value {algorithm!r} for 'algorithm', "
                        f"expecting one of {sorted(algorithms)}")
    return algorithm


def _check_block_size(block_size: int) -> int:
    if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise HttpError(HTTPStatus.BAD_REQUEST,
                        f"Block size out of allowed range: {MIN_BLOCK_SIZE}-{MAX_BLOCK_SIZE}")
    if block_size % 4096:
        raise HttpError(HTTPStatus.BAD_REQUEST, "Block size is not aligned to 4096")
    return block_size


# --- checksum ahead (see the module docstring) --------------------------------

def _direct(backend) -> bool:
    """Whether ``backend`` is a raw file read and written with O_DIRECT: the
    hashing thread then reads back blocks that are on disk, not cached."""
    return isinstance(backend, RawBackend) and backend.direct


def _announce(ticket: Ticket, backend, msg: dict) -> None:
    """Start hashing the ticket's flushed blocks for the announced checksum."""
    algorithm = _check_algorithm(msg.get("algorithm"))
    block_size = _check_block_size(_int_field(msg, "block_size"))
    if not _direct(backend):
        raise HttpError(HTTPStatus.CONFLICT, "Checksum ahead is not available for this ticket")
    size = backend.size
    old = ticket.checksum_ahead
    if old is not None and old.matches(algorithm, block_size, size):
        return
    try:
        reader = RawBackend(backend.path, "r", direct=True)
    except FormatError:
        reader = None
    if reader is not None and not reader.direct:
        reader.close()
        reader = None
    if reader is None:
        raise HttpError(HTTPStatus.CONFLICT, "Checksum ahead is not available for this ticket")
    path = backend.path
    ahead = ChecksumAhead(reader, size, algorithm, block_size,
                          alive=lambda: not ticket.canceled,
                          mtime=lambda: os.stat(path).st_mtime_ns)
    with ticket.lock:
        # A write already running would not be tracked; this request is the
        # one counted in _busy.
        refused = ticket._busy > 1
        if not refused:
            ticket.checksum_ahead = ahead
    if refused:
        reader.close()
        raise HttpError(HTTPStatus.CONFLICT,
                        "Checksum ahead must be announced while no other request runs")
    if old is not None:
        old.stop()
    ahead.start()


def checksum_algorithms(ctx: Context, ticket: Ticket) -> int:
    ctx.conn.send_json({"algorithms": sorted(block_checksum.ALGORITHMS)}, close=ctx.close)
    return 0
