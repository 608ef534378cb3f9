"""The resume journal of one upload or download.

A small JSON file that says what an interrupted transfer had safely moved:
transfer and disk ids, engine URL, the source's identity (path, size,
mtime, a hash of its first and last blocks), the plan (request size,
format) and the completed ranges merged into intervals. It is rewritten
atomically (temporary file, fsync, rename) each time ranges are recorded,
which is once per flush: already batched.

Only durable ranges are recorded: for uploads those the server flushed,
for downloads those fsynced to the local file (see ``JournalingBackend``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import threading
import time
from typing import Any, Iterable

from imagetool.iocore.backends import FLUSH_BYTES
from imagetool.errors import ImagetoolError
# merge: adds a done range (backend.add_range).
from imagetool.iocore.backend import add_range as merge
from imagetool.fsutil import write_atomic

VERSION = 1
_ID_BLOCK = 1024 * 1024


def flush_bytes_for(size: int, request_size: int) -> int:
    """Bytes between flushes of one connection: at most FLUSH_BYTES, and
    small images still flush ~64 times so a kill loses little."""
    return min(FLUSH_BYTES, max(request_size, size // 64))


class JournalError(ImagetoolError):
    """A journal blocks the transfer: present without resume, or stale."""


def source_identity(path: str) -> dict:
    """Path, size, mtime and a hash of the first and last MiB of a file."""
    path = os.path.abspath(path)
    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_ID_BLOCK))
        if st.st_size > _ID_BLOCK:
            f.seek(max(_ID_BLOCK, st.st_size - _ID_BLOCK))
            h.update(f.read(_ID_BLOCK))
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "hash": h.hexdigest()}


def source_changes(saved: dict, path: str) -> list[str]:
    """What differs between a journal's source identity and the file now."""
    try:
        now = source_identity(path)
    except FileNotFoundError:
        return ["the file is gone"]
    changes = []
    if now["size"] != saved.get("size"):
        changes.append(f"size {saved.get('size')} -> {now['size']} bytes")
    if now["mtime_ns"] != saved.get("mtime_ns"):
        changes.append("modification time")
    if now["hash"] != saved.get("hash"):
        changes.append("content of its first/last blocks")
    return changes


class Journal:
    """One journal file; thread-safe. ``data`` is the JSON object."""

    def __init__(self, path: str, data: dict):
        self.path = path
        self.data = data
        self.data.setdefault("done", [])
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: str, **fields: Any) -> "Journal":
        """A new journal (saved at once, so a kill right after leaves it)."""
        j = cls(path, {"version": VERSION, "created": time.time(), **fields, "done": []})
        j.save()
        return j

    @classmethod
    def load(cls, path: str) -> "Journal":
        """Read an existing journal; JournalError when unreadable."""
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise JournalError(f"cannot read the resume journal {path}: {e}; "
                               f"delete it (rm {path}) to start over") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise JournalError(f"{path}: not a resume journal of this version; "
                               f"delete it (rm {path}) to start over")
        return cls(path, data)

    @property
    def done(self) -> list[list[int]]:
        """Sorted disjoint [start, end) intervals known durable."""
        return self.data["done"]

    def update(self, **fields: Any) -> None:
        """Set fields (transfer id, ...) and save now."""
        with self._lock:
            self.data.update(fields)
            self._save_locked()

    def add_done(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Record (start, length) ranges as durable, and save."""
        with self._lock:
            for start, length in ranges:
                merge(self.done, start, start + length)
            self._save_locked()

    def save(self) -> None:
        """Write the journal now (atomically)."""
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        write_atomic(self.path, json.dumps(self.data), tmp=f"{self.path}.tmp-{os.getpid()}")

    def remove(self) -> None:
        """Delete the journal (the transfer completed), and temporary
        copies a kill in the middle of a save left behind."""
        with self._lock:
            for p in [self.path, *glob.glob(glob.escape(self.path) + ".tmp-*")]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
