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
from contextlib import contextmanager
from typing import Any, Callable, Iterator

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
    """JSON documents keyed by (kind, id), listed in insertion order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.RLock()
        self._conns: list[sqlite3.Connection] = []
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with self._lock:
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Serialize a read-modify-write sequence (re-entrant)."""
        with self._lock:
            conn = self._conn()
            if conn.in_transaction:
                yield
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def get(self, kind: str, id: str) -> dict | None:
        """The document, or None."""
        row = self._conn().execute(
            "SELECT data FROM entities WHERE kind=? AND id=?", (kind, id)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, kind: str, where: Callable[[dict], bool] | None = None) -> list[dict]:
        """All documents of a kind in insertion order, optionally filtered."""
        rows = self._conn().execute(
            "SELECT data FROM entities WHERE kind=? ORDER BY seq", (kind,)).fetchall()
        docs = [json.loads(r[0]) for r in rows]
        return [d for d in docs if where(d)] if where else docs

    def put(self, kind: str, doc: dict) -> dict:
        """Insert or replace ``doc`` (which must have an ``id``)."""
        with self.transaction():
            conn = self._conn()
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
        with self.transaction():
            self._conn().execute("DELETE FROM entities WHERE kind=? AND id=?", (kind, id))

    def setting(self, key: str, default: str | None = None) -> str | None:
        """A persistent engine setting."""
        row = self._conn().execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        """Store a persistent engine setting."""
        with self.transaction():
            self._conn().execute("INSERT OR REPLACE INTO settings VALUES (?,?)", (key, value))

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for conn in self._conns:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass  # owned by a thread that already went away
            self._conns.clear()
            self._local = threading.local()
