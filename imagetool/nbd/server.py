"""The server: a unix socket, its exports and one thread per client
(``imagetool.nbd.session`` speaks the protocol with each)."""

from __future__ import annotations

import os
import socket
import stat
import threading
from bisect import bisect_right
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Callable

from imagetool.iocore.backend import Closing, Extent, merge_extents
from imagetool.nbd.protocol import MAX_CONNECTIONS, NbdError, _Closed
from imagetool.nbd.session import Session


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
        runs = merge_extents(Extent(e.start, e.length, zero=bool(e.zero or e.hole))
                             for e in self.backend.extents())
        self._zero = [(e.start, e.end, e.zero) for e in runs]
        self._starts = [r[0] for r in self._zero]

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


class NbdServer(Closing):
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
            with suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        with suppress(FileNotFoundError):
            os.unlink(self.path)

    # --- one client -------------------------------------------------------------

    def _serve_client(self, conn: socket.socket) -> None:
        try:
            Session(self, conn).run()
        except (_Closed, OSError):
            pass        # the client went away (mid-reply too), or must go
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


def serve(path: str, exports: list[Export], *, log: Callable[[str], None] | None = None,
          ready: Callable[[NbdServer], None] | None = None) -> None:
    """Serve until Ctrl-C (KeyboardInterrupt, re-raised) or ``shutdown()``;
    the socket file is removed on the way out."""
    with NbdServer(path, exports, log) as server:
        if ready:
            ready(server)
        server.serve_forever()
