"""Facts of the imageio data-plane protocol, shared by the client and the
local engine's data plane (ovirt-imageio docs, "Images API").

Feature names (``OPTIONS /images/<ticket>``), imagetool's own extension
(``checksum-ahead``, listed apart under ``imagetool_features`` so imageio's
``features`` list is unchanged), the block-size limits of ``GET
/images/<ticket>/checksum``, the ``Range``/``Content-Range`` headers, and
the socket buffer size both ends ask for.
"""

from __future__ import annotations

import re
import socket
from contextlib import suppress

# Features a writable ticket offers; a read-only ticket offers READ_FEATURES.
FEATURES = ("checksum", "extents", "flush", "zero")
READ_FEATURES = ("checksum", "extents")
# imagetool's own extensions, listed apart from imageio's "features".
EXTENSIONS_KEY = "imagetool_features"
CHECKSUM_AHEAD = "checksum-ahead"

DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
MIN_BLOCK_SIZE = 1024 * 1024
MAX_BLOCK_SIZE = 16 * 1024 * 1024

# Send and receive buffers of a data-plane socket, at both ends: requests
# of a few MiB keep a large window busy, on loopback most of all.
SOCKET_BUFFER = 4 * 1024 * 1024


def set_socket_buffers(sock: socket.socket) -> None:
    """Ask for SOCKET_BUFFER-sized send and receive buffers; a system that
    refuses keeps its own (the transfer works, only slower)."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)

# ASCII digits only (RFC 9110 sections 8.6 and 14): Python's ``\\d``,
# ``str.isdigit`` and ``int`` also take other scripts' digits ('١٢'),
# superscripts ('²'), signs and underscores. 19 digits is far beyond any
# disk and keeps int() away from thousand-digit strings.
_N = r"([0-9]{1,19})"
_RANGE_RE = re.compile(rf"^bytes={_N}-([0-9]{{0,19}})$", re.ASCII)
_CONTENT_RANGE_RE = re.compile(rf"^bytes (?:{_N}-{_N}|\*)/(\*|[0-9]{{1,19}})$", re.ASCII)
_UINT_RE = re.compile(r"[0-9]{1,19}", re.ASCII)


def parse_uint(text: str | None) -> int:
    """A non-negative integer written in ASCII digits only; ValueError
    otherwise (callers strip a header's surrounding blanks first)."""
    if text is None or not _UINT_RE.fullmatch(text):
        raise ValueError(f"not an unsigned integer: {text!r}")
    return int(text)


def parse_range(header: str, size: int) -> tuple[int, int]:
    """``Range: bytes=A-B`` / ``bytes=A-`` of an image of ``size`` bytes ->
    (offset, length); ValueError saying why it cannot be satisfied."""
    m = _RANGE_RE.match(header.strip())
    if not m:
        raise ValueError(f"Cannot satisfy range {header!r}: only one bytes=first-[last] "
                         "range is supported")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first > last:
        raise ValueError(f"Cannot satisfy range {header!r}: first > last")
    if last >= size:
        raise ValueError(f"Cannot satisfy range {header!r}: image size is {size}")
    return first, last - first + 1


def format_range(offset: int, length: int) -> str:
    """The ``Range`` value asking for ``length`` bytes at ``offset``."""
    return f"bytes={offset}-{offset + length - 1}"


def format_content_range(offset: int | None, length: int = 0,
                         size: int | None = None) -> str:
    """``bytes A-B/SIZE`` (``*`` for an unknown size); ``offset=None`` gives
    ``bytes */SIZE``, the answer to an unsatisfiable range."""
    total = "*" if size is None else str(size)
    if offset is None:
        return f"bytes */{total}"
    return f"bytes {offset}-{offset + length - 1}/{total}"


def parse_content_range(header: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes A-B/T``, ``bytes A-B/*`` or ``bytes */T`` -> (A, B, T), None
    where the header has ``*``; ValueError for anything else (B < A too)."""
    m = _CONTENT_RANGE_RE.match((header or "").strip(" \t"))
    if not m or (m.group(1) is not None and int(m.group(2)) < int(m.group(1))):
        raise ValueError(f"Invalid Content-Range {header!r}")
    first, last, total = m.groups()
    return (None if first is None else int(first),
            None if last is None else int(last),
            None if total == "*" else int(total))
