"""RawBackend: positional I/O, holes, punching, cloning, threads."""

from __future__ import annotations

import os
import threading

import pytest

from imagetool.formats import Extent, RawBackend, open_image
from imagetool.iocore.backend import Backend


def _extents(b):
    return [(e.start, e.length, e.zero, e.hole) for e in b.extents()]


def test_protocol(tmp_path):
    with RawBackend(tmp_path / "a.raw", "w", size=4096) as b:
        assert isinstance(b, Backend)
        assert b.size == 4096


def test_write_read_roundtrip_and_extend(tmp_path):
    p = tmp_path / "a.raw"
    with RawBackend(p, "w") as b:
        b.write(1000, b"hello")
        assert b.size == 1005
        buf = bytearray(10)
        assert b.read_into(998, memoryview(buf)) == 7
        assert bytes(buf[:7]) == b"\0\0hello"
        # past EOF: short read, then 0
        assert b.read_into(5000, memoryview(bytearray(4))) == 0
    assert p.read_bytes() == b"\0" * 1000 + b"hello"


def test_read_only_refuses_write(tmp_path):
    p = tmp_path / "a.raw"
    p.write_bytes(b"x" * 10)
    with RawBackend(p, "r") as b:
        with pytest.raises(PermissionError):
            b.write(0, b"y")
        with pytest.raises(PermissionError):
            b.zero(0, 1)
    assert p.read_bytes() == b"x" * 10


def test_extents_holes_and_data(tmp_path):
    p = tmp_path / "a.raw"
    mib = 1 << 20
    with open(p, "wb") as f:
        f.truncate(8 * mib)
        f.seek(2 * mib)
        f.write(b"\xaa" * mib)
    with RawBackend(p) as b:
        exts = list(b.extents())
    # cover [0, size) consecutively
    assert exts[0].start == 0 and exts[-1].end == 8 * mib
    for a, c in zip(exts, exts[1:]):
        assert a.end == c.start
    data = [e for e in exts if not e.zero]
    # filesystem granularity may round, but the written MiB must be data
    assert any(e.start <= 2 * mib and e.end >= 3 * mib for e in data)
    assert all(e.hole for e in exts if e.zero)
    if os.stat(p).st_blocks * 512 < 8 * mib:  # sparse filesystem
        assert exts[0] == Extent(0, 2 * mib, zero=True, hole=True)
        assert exts[-1] == Extent(3 * mib, 5 * mib, zero=True, hole=True)


def test_zero_punches_and_reads_zeros(tmp_path):
    p = tmp_path / "a.raw"
    p.write_bytes(b"\xff" * (1 << 20))
    with RawBackend(p, "r+") as b:
        b.zero(4096, 65536)
        b.flush()
    data = p.read_bytes()
    assert len(data) == 1 << 20
    assert data[:4096] == b"\xff" * 4096
    assert data[4096:4096 + 65536] == bytes(65536)
    assert data[4096 + 65536:] == b"\xff" * (len(data) - 4096 - 65536)


def test_zero_past_end_extends(tmp_path):
    p = tmp_path / "a.raw"
    p.write_bytes(b"\xff" * 100)
    with RawBackend(p, "r+") as b:
        b.zero(50, 1000)
        assert b.size == 1050
    assert p.read_bytes() == b"\xff" * 50 + bytes(1000)


def test_empty_file(tmp_path):
    with RawBackend(tmp_path / "e.raw", "w") as b:
        assert b.size == 0
        assert list(b.extents()) == []


def test_clone_and_threads(tmp_path):
    p = tmp_path / "a.raw"
    chunk = 65536
    n = 64
    with RawBackend(p, "w", size=chunk * n) as b:
        def worker(idx):
            c = b.clone() if idx % 2 else b
            for i in range(idx, n, 4):
                c.write(i * chunk, bytes([i]) * chunk)
            if c is not b:
                c.close()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        buf = bytearray(chunk)
        for i in range(n):
            assert b.read_into(i * chunk, memoryview(buf)) == chunk
            assert buf == bytes([i]) * chunk


def test_open_image_raw_modes(tmp_path):
    p = tmp_path / "n.raw"
    with open_image(p, "w") as b:
        b.write(0, b"abc")
    with open_image(p) as b:
        assert isinstance(b, RawBackend)
        assert b.read(0, 10) == b"abc"


def test_size_r_plus_extends_never_shrinks(tmp_path):
    p = tmp_path / "a.raw"
    p.write_bytes(b"x" * 100)
    with RawBackend(p, "r+", size=50) as b:
        assert b.size == 100
    with RawBackend(p, "r+", size=200) as b:
        assert b.size == 200
