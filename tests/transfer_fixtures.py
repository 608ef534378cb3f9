"""Shared helpers for the transfer tests: image files and tiny backends."""

from __future__ import annotations

import os
import random
import subprocess
import threading

from imagetool.formats.base import Extent

MiB = 1 << 20


def make_image(path, size: int, data_ranges, seed: int = 0) -> None:
    """A sparse raw file of ``size`` with random bytes in ``data_ranges``."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for start, length in data_ranges:
            f.seek(start)
            f.write(rnd.randbytes(length))


def qemu_img(*args: str) -> str:
    """Run qemu-img; return stdout; raise with stderr on failure."""
    p = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"qemu-img {' '.join(args)}: {p.stderr or p.stdout}")
    return p.stdout


def images_equal(a, b, fmt_a: str | None = None, fmt_b: str | None = None) -> bool:
    """qemu-img compare; True when guest data and virtual sizes match."""
    args = ["compare"]
    if fmt_a:
        args += ["-f", fmt_a]
    if fmt_b:
        args += ["-F", fmt_b]
    p = subprocess.run(["qemu-img", *args, str(a), str(b)],
                       capture_output=True, text=True)
    if p.returncode not in (0, 1):
        raise AssertionError(p.stderr)
    sizes = [_virtual_size(x, f) for x, f in ((a, fmt_a), (b, fmt_b))]
    return p.returncode == 0 and sizes[0] == sizes[1]


def _virtual_size(path, fmt) -> int:
    import json
    args = ["info", "--output=json"] + (["-f", fmt] if fmt else []) + [str(path)]
    return json.loads(qemu_img(*args))["virtual-size"]


class FileBackend:
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


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 that cuts every connection after N bytes.

    Bytes from the client are counted over all connections; once more than
    ``drop_after`` have passed, every connection is closed abruptly (a
    dropped network connection as the client sees it). TLS passes through.
    """

    def __init__(self, target_port: int, drop_after: int):
        import socket
        self.target_port = target_port
        self.drop_after = drop_after
        self.passed = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.conns += [c, s]
            threading.Thread(target=self._pump, args=(c, s, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c, False), daemon=True).start()

    def _pump(self, a, b, count):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if count:
                    with self.lock:
                        self.passed += len(data)
                        drop = self.passed > self.drop_after
                    if drop:
                        self._drop_all()
                        return
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.close()
                except OSError:
                    pass

    def _drop_all(self):
        import socket
        with self.lock:
            conns = list(self.conns)
        for x in conns:
            try:
                x.shutdown(socket.SHUT_RDWR)
                x.close()
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.sock.close()
        self._drop_all()
