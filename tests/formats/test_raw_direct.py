"""RawBackend owns direct I/O and sparseness; the data plane only calls it.

Files that must support O_DIRECT live under /var/tmp (a disk file system);
/dev/shm (tmpfs) refuses O_DIRECT and shows the fallback.
"""

from __future__ import annotations

import ast
import mmap
import os
import shutil
import tempfile

import pytest

from imagetool.formats.raw import RawBackend

MiB = 1 << 20
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "imagetool")


@pytest.fixture
def disk_dir():
    d = tempfile.mkdtemp(prefix="imagetool-test-rawdirect-", dir="/var/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _spy(monkeypatch, name: str) -> list:
    """Record the descriptors os.<name> is called with."""
    calls = []
    real = getattr(os, name)

    def spy(fd, *args):
        calls.append(fd)
        return real(fd, *args)
    monkeypatch.setattr(os, name, spy)
    return calls


def test_aligned_io_goes_through_the_direct_descriptor(disk_dir, monkeypatch):
    path = os.path.join(disk_dir, "disk.raw")
    b = RawBackend(path, "w", size=4 * MiB, direct=True)
    if not b.direct:
        pytest.skip("this file system refuses O_DIRECT")
    writes, reads = _spy(monkeypatch, "pwrite"), _spy(monkeypatch, "preadv")
    buf = mmap.mmap(-1, MiB)
    buf.write(os.urandom(MiB))
    b.write(MiB, memoryview(buf))                       # aligned: direct
    b.write(3 * MiB + 100, b"\x5a" * 5000)              # unaligned: buffered
    back = mmap.mmap(-1, MiB)
    assert b.read_into(MiB, memoryview(back)) == MiB    # aligned: direct
    assert set(writes) == {b._dfd, b._fd} and writes[0] == b._dfd
    assert reads == [b._dfd]
    b.flush()
    b.close()
    with open(path, "rb") as f:
        data = f.read()
    assert data[MiB:2 * MiB] == bytes(buf) == bytes(back)
    assert data[3 * MiB + 100:3 * MiB + 5100] == b"\x5a" * 5000
    assert len(data) == 4 * MiB


def test_unaligned_edges_of_a_request(disk_dir):
    path = os.path.join(disk_dir, "disk.raw")
    data = os.urandom(2 * MiB + 1000)
    with RawBackend(path, "w", size=len(data), direct=True) as b:
        buf = mmap.mmap(-1, len(data) + 4096)
        buf.write(data)
        view = memoryview(buf)[:len(data)]
        b.write(0, view)                    # aligned start, odd tail
        got = mmap.mmap(-1, len(data) + 4096)
        assert b.read_into(0, memoryview(got)) == len(data)      # short at EOF
        assert bytes(got[:len(data)]) == data
        odd = bytearray(3000)
        assert b.read_into(4096 + 7, memoryview(odd)) == 3000
        assert bytes(odd) == data[4096 + 7:4096 + 3007]
    with open(path, "rb") as f:
        assert f.read() == data


def test_file_system_refusing_o_direct_falls_back(disk_dir, monkeypatch):
    """As tmpfs on older kernels does: EINVAL when opening with O_DIRECT."""
    real_open = os.open

    def refusing(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", refusing)
    path = os.path.join(disk_dir, "disk.raw")
    with RawBackend(path, "w", size=MiB, direct=True) as b:
        assert b.direct is False
        buf = mmap.mmap(-1, MiB)
        buf.write(b"\xa5" * MiB)
        b.write(0, memoryview(buf))
        with b.clone() as clone:
            back = bytearray(MiB)
            assert clone.read_into(0, memoryview(back)) == MiB
    assert bytes(back) == b"\xa5" * MiB


def test_einval_on_a_direct_write_turns_direct_off(disk_dir, monkeypatch):
    """A file system with larger sectors refuses 4096-aligned I/O later."""
    path = os.path.join(disk_dir, "disk.raw")
    b = RawBackend(path, "w", size=MiB, direct=True)
    if not b.direct:
        pytest.skip("this file system refuses O_DIRECT")
    real = os.pwrite

    def pwrite(fd, data, offset):
        if fd == b._dfd:
            raise OSError(22, "Invalid argument")
        return real(fd, data, offset)
    monkeypatch.setattr(os, "pwrite", pwrite)
    buf = mmap.mmap(-1, MiB)
    buf.write(b"\x3c" * MiB)
    b.write(0, memoryview(buf))
    assert b.direct is False
    b.close()
    with open(path, "rb") as f:
        assert f.read() == b"\x3c" * MiB


@pytest.mark.parametrize("sparse", [True, False])
def test_zero_follows_sparse(disk_dir, sparse):
    path = os.path.join(disk_dir, "disk.raw")
    with open(path, "wb") as f:
        f.write(os.urandom(4 * MiB))
        os.fsync(f.fileno())
    with RawBackend(path, "r+", sparse=sparse) as b:
        clone = b.clone()
        assert clone.sparse is sparse
        clone.zero(MiB, 2 * MiB)
        clone.flush()
        clone.close()
    with open(path, "rb") as f:
        assert f.read()[MiB:3 * MiB] == bytes(2 * MiB)
    allocated = os.stat(path).st_blocks * 512
    if sparse:
        assert allocated <= 2 * MiB + 64 * 1024
    else:
        assert allocated >= 4 * MiB


def test_clone_keeps_direct(disk_dir):
    path = os.path.join(disk_dir, "disk.raw")
    with RawBackend(path, "w", size=MiB, direct=True) as b:
        with b.clone() as c:
            assert c.direct == b.direct


def _o_direct_users() -> list[str]:
    """Modules naming os.O_DIRECT (an attribute access in the code)."""
    found = []
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                tree = ast.parse(open(path).read(), path)
                if any(isinstance(n, ast.Attribute) and n.attr == "O_DIRECT"
                       for n in ast.walk(tree)):
                    found.append(os.path.relpath(path, ROOT))
    return sorted(found)


@pytest.mark.slow
def test_only_the_raw_backend_opens_files_with_o_direct():
    assert _o_direct_users() == ["formats/raw.py"]


@pytest.mark.slow
def test_wrappers_live_in_one_module():
    defined = {}
    for dirpath, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                for n in ast.walk(ast.parse(open(path).read(), path)):
                    if isinstance(n, ast.ClassDef) and n.name.lstrip("_") in (
                            "SharedBackend", "RetryingBackend", "JournalingBackend",
                            "FlushingBackend", "PerThread", "Window", "Cancellable",
                            "DirectReads"):
                        defined.setdefault(n.name, []).append(os.path.relpath(path, ROOT))
    assert defined == {name: [os.path.join("iocore", "backends.py")] for name in (
        "SharedBackend", "RetryingBackend", "JournalingBackend", "FlushingBackend",
        "PerThread", "Window", "Cancellable")}
