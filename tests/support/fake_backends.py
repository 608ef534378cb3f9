"""Backends for tests: a raw file with counters and injected errors, and
bytes in memory with explicit extents that records every read."""

from __future__ import annotations

import os
import threading

from imagetool.iocore.backend import BackendBase, Extent


class FileBackend(BackendBase):
    """A minimal raw-file backend used as a copy peer in tests.

    Extents come from SEEK_DATA/SEEK_HOLE; it counts calls so that tests can
    see what the copier did.
    """

    def __init__(self, path, mode: str = "r", size: int | None = None,
                 stats: dict | None = None, fail_at: int | None = None,
                 features=None):
        self.path = str(path)
        self.mode = mode
        flags = os.O_RDONLY if mode == "r" else os.O_RDWR | os.O_CREAT
        self.fd = os.open(self.path, flags, 0o644)
        if size is not None and mode != "r":
            os.ftruncate(self.fd, size)
        self._size = os.fstat(self.fd).st_size
        self.stats = stats if stats is not None else {
            "write": 0, "zero": 0, "flush": 0, "read": 0, "clones": 0,
            "lock": threading.Lock()}
        self.fail_at = fail_at
        if features is not None:
            self.features = features

    @property
    def size(self) -> int:
        return self._size

    def _count(self, key: str) -> None:
        with self.stats["lock"]:
            self.stats[key] += 1

    def extents(self, context: str = "zero"):
        pos = 0
        while pos < self._size:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:
                data = self._size
            if data > pos:
                yield Extent(pos, data - pos, zero=True, hole=True)
                pos = data
                continue
            hole = os.lseek(self.fd, pos, os.SEEK_HOLE)
            yield Extent(pos, hole - pos)
            pos = hole

    def read_into(self, offset, buf):
        self._count("read")
        if self.fail_at is not None and offset <= self.fail_at < offset + len(buf):
            raise OSError(5, "injected read error")
        return os.preadv(self.fd, [buf], offset)

    def write(self, offset, data):
        self._count("write")
        if self.fail_at is not None and offset <= self.fail_at < offset + len(data):
            raise OSError(5, "injected write error")
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def zero(self, offset, length):
        self._count("zero")
        # Zero by writing; enough for tests.
        os.pwrite(self.fd, bytes(length), offset)

    def flush(self):
        self._count("flush")
        os.fsync(self.fd)

    def clone(self):
        self._count("clones")
        b = FileBackend.__new__(FileBackend)
        b.__dict__.update(self.__dict__)
        b.fd = os.open(self.path, os.O_RDONLY if self.mode == "r" else os.O_RDWR)
        return b

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MemBackend(BackendBase):
    """A Backend over bytes with explicit extents, recording every read.

    Has no ``clone``: the checksum must work on a shared backend.
    """

    def __init__(self, data: bytes | bytearray, extents: list[Extent] | None = None):
        self._data = bytes(data)
        self._extents = extents if extents is not None else [Extent(0, len(data))]
        self.reads: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self._data)

    def extents(self, context: str = "zero"):
        return iter(self._extents)

    def read_into(self, offset: int, buf) -> int:
        n = max(0, min(len(buf), len(self._data) - offset))
        buf[:n] = self._data[offset:offset + n]
        with self._lock:
            self.reads.append((offset, n))
        return n

    def close(self) -> None:
        pass
