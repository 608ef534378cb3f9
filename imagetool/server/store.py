"""The local engine's inventory: a small SQLite document store.

Every entity (storage domain, disk, volume, VM, snapshot, transfer, job) is
one row ``(kind, id, data)`` with ``data`` a JSON object, so adding a field
needs no schema change. One connection per thread (sqlite3 connections are
not shared across threads), WAL so readers never block the writer, and one
process-wide lock that makes read-modify-write updates atomic.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager, suppress
from typing import Any, Callable, Iterator

from imagetool.fsutil import opened

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class Store:
    """JSON documents keyed by (kind, id), listed in insertion order.

    Connections come from a small pool rather than one per thread: the HTTP
    server runs a thread per client connection, and per-thread sqlite
    connections would pile up for as long as the server runs.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.RLock()
        self._pool: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Owner-only whatever the umask; SQLite gives the -wal and -shm
        # files the database file's mode. Fixes the mode of an older file too.
        for p in (path, path + "-wal", path + "-shm"):
            flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if p == path else 0)
            with suppress(FileNotFoundError), opened(p, flags, 0o600) as fd:
                os.fchmod(fd, 0o600)
        with self._borrow() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextmanager
    def _borrow(self) -> Iterator[sqlite3.Connection]:
        tx = getattr(self._local, "tx", None)
        if tx is not None:
            yield tx
            return
        with self._pool_lock:
            conn = self._pool.pop() if self._pool else None
        if conn is None:
            conn = self._open()
        try:
            yield conn
        finally:
            with self._pool_lock:
                if self._closed or len(self._pool) >= 8:
                    conn.close()
                else:
                    self._pool.append(conn)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Serialize a read-modify-write sequence (re-entrant)."""
        with self._lock:
            if getattr(self._local, "tx", None) is not None:
                yield
                return
            with self._borrow() as conn:
                conn.execute("BEGIN IMMEDIATE")
                self._local.tx = conn
                self._local.after = []
                try:
                    yield
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                else:
                    conn.execute("COMMIT")
                finally:
                    self._local.tx = None
                    after, self._local.after = self._local.after, []
        for fn in after:
            fn()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the current transaction commits (now if none runs).

        Work handed to other threads must start after the commit, or those
        threads would not see what this transaction wrote.
        """
        if getattr(self._local, "tx", None) is None:
            fn()
        else:
            self._local.after.append(fn)

    def get(self, kind: str, id: str) -> dict | None:
        with self._borrow() as conn:
            row = conn.execute("SELECT data FROM entities WHERE kind=? AND id=?",
                               (kind, id)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, kind: str, where: Callable[[dict], bool] | None = None) -> list[dict]:
        """All documents of a kind in insertion order, optionally filtered."""
        with self._borrow() as conn:
            rows = conn.execute("SELECT data FROM entities WHERE kind=? ORDER BY seq",
                                (kind,)).fetchall()
        docs = [json.loads(r[0]) for r in rows]
        return [d for d in docs if where(d)] if where else docs

    def put(self, kind: str, doc: dict) -> dict:
        with self.transaction(), self._borrow() as conn:
            row = conn.execute("SELECT seq FROM entities WHERE kind=? AND id=?",
                               (kind, doc["id"])).fetchone()
            if row:
                seq = row[0]
            else:
                seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM entities").fetchone()[0]
            conn.execute("INSERT OR REPLACE INTO entities (kind, id, seq, data) VALUES (?,?,?,?)",
                         (kind, doc["id"], seq, json.dumps(doc, sort_keys=True)))
        return doc

    def update(self, kind: str, id: str, **fields: Any) -> dict | None:
        """Set fields on a document atomically; returns the new document."""
        with self.transaction():
            doc = self.get(kind, id)
            if doc is None:
                return None
            doc.update(fields)
            self.put(kind, doc)
            return doc

    def delete(self, kind: str, id: str) -> None:
        """Remove a document; idempotent."""
        with self.transaction(), self._borrow() as conn:
            conn.execute("DELETE FROM entities WHERE kind=? AND id=?", (kind, id))

    def setting(self, key: str, default: str | None = None) -> str | None:
        with self._borrow() as conn:
            row = conn.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction(), self._borrow() as conn:
            conn.execute("INSERT OR REPLACE INTO settings VALUES (?,?)", (key, value))

    def close(self) -> None:
        """Close the pooled connections (borrowed ones close when returned)."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()
