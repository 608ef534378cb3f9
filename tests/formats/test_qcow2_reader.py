"""Qcow2Backend guest data and extents, checked against qemu-img.

Images are made by qemu-img/qemu-io in each test; the expected bytes come
from ``qemu-img convert -O raw`` and the expected allocation from
``qemu-img map --output json``.
"""

from __future__ import annotations

import random
import threading

import pytest

from helpers import (KiB, MiB, assert_extents_match_qemu, make_raw, qemu_img, qemu_io,
                     qemu_map, qemu_raw_bytes, shallow_json)
from imagetool.errors import FormatError
from imagetool.formats import open_image
from imagetool.formats.qcow2_reader import Qcow2Backend

SIZE = 6 * MiB
RANGES = [(0, 300 * KiB), (1 * MiB + 4096, 700 * KiB), (4 * MiB - 1000, 5000),
          (SIZE - 64 * KiB, 64 * KiB)]


def _convert(tmp_path, name, *opts, size=SIZE, ranges=RANGES, seed=1):
    raw = tmp_path / f"{name}.src.raw"
    make_raw(raw, size, ranges, seed)
    out = tmp_path / f"{name}.qcow2"
    qemu_img("convert", "-O", "qcow2", *opts, str(raw), str(out))
    return out


def img_v2(t):
    return _convert(t, "v2", "-o", "compat=0.10")


def img_v3_512(t):
    return _convert(t, "c512", "-o", "cluster_size=512", size=2 * MiB,
                    ranges=[(0, 3000), (MiB, 70 * KiB)])


def img_v3_4k(t):
    return _convert(t, "c4k", "-o", "cluster_size=4k")


def img_v3_2m(t):
    return _convert(t, "c2m", "-o", "cluster_size=2M", size=8 * MiB,
                    ranges=[(100, 5000), (5 * MiB, MiB)])


def img_zlib(t):
    return _convert(t, "zlib", "-c")


def img_zlib_v2(t):
    return _convert(t, "zlibv2", "-c", "-o", "compat=0.10,cluster_size=4k")


def img_zlib_2m(t):
    return _convert(t, "zlib2m", "-c", "-o", "cluster_size=2M", size=4 * MiB,
                    ranges=[(0, 3 * MiB)])


def img_zstd(t):
    return _convert(t, "zstd", "-c", "-o", "compression_type=zstd")


def img_zstd_extl2(t):
    return _convert(t, "zstdext", "-c",
                    "-o", "compression_type=zstd,extended_l2=on")


def img_unaligned(t):
    size = 3 * MiB + 1536
    raw = t / "u.raw"
    make_raw(raw, size, [(size - 5000, 5000), (0, 10)], 3)
    out = t / "u.qcow2"
    qemu_img("convert", "-O", "qcow2", str(raw), str(out))
    return out


def img_zero_clusters(t):
    p = _convert(t, "zeros", "-o", "compat=1.1")
    # zero over data (allocated zero cluster) and over a hole (plain zero)
    qemu_io(p, "write -z 64k 128k", "write -z 2M 256k", "write -z 5000 100")
    return p


def img_extl2(t):
    base = t / "eb.raw"
    make_raw(base, SIZE, [(0, SIZE)], 7)
    p = t / "extl2.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on",
             "-b", str(base), "-F", "raw", str(p), str(SIZE))
    # 64k clusters: 2k subclusters; mix data, zero and unallocated
    qemu_io(p, "write -P 0xaa 4k 2k", "write -z 16k 8k", "write -P 0x11 100k 30k",
            "write -P 0x22 1M 64k", "write -z 2M 1M", "write -P 0x33 3001k 7k")
    return p


def img_extl2_nobacking(t):
    p = t / "extl2nb.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=32k",
             str(p), str(SIZE))
    qemu_io(p, "write -P 0xaa 1k 1k", "write -z 64k 3k", "write -P 0x5 200k 300k")
    return p


def img_chain3(t):
    base = _convert(t, "base", "-o", "cluster_size=4k", size=4 * MiB,
                    ranges=[(0, 2 * MiB)], seed=11)
    mid = t / "mid.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2",
             str(mid), str(5 * MiB))
    qemu_io(mid, "write -P 0x44 512k 256k", "write -z 1M 128k",
            "write -P 0x45 4M 100k")
    top = t / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10",
             "-b", mid.name, "-F", "qcow2", str(top), str(SIZE))
    qemu_io(top, "write -P 0x66 600k 64k", "write -P 0x67 5500k 64k")
    return top


def img_raw_backing_short(t):
    base = t / "short.raw"
    make_raw(base, MiB + 4096, [(0, 100 * KiB), (MiB, 4096)], 5)
    top = t / "overshort.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", base.name, "-F", "raw",
             str(top), str(4 * MiB))
    qemu_io(top, "write -P 0x12 64k 4k", "write -z 1M 64k")
    return top


def img_backing_detected(t):
    # no backing format extension: the reader must detect it
    base = _convert(t, "dbase", size=2 * MiB, ranges=[(0, MiB)])
    top = t / "dtop.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", base.name,
             "-F", "qcow2", str(top), str(2 * MiB))
    # rewrite without -F is refused by new qemu-img; strip the extension
    # by rebasing unsafely with an empty format is not possible either, so
    # patch the extension type to an unknown one (ignored by readers).
    data = bytearray(top.read_bytes())
    i = data.find(bytes.fromhex("e2792aca"))
    assert i > 0
    data[i:i + 4] = bytes.fromhex("e2792acb")
    top.write_bytes(bytes(data))
    return top


def img_snapshot(t):
    p = _convert(t, "snap")
    qemu_img("snapshot", "-c", "before", str(p))
    # copy-on-write of shared clusters, and new data after the snapshot
    qemu_io(p, "write -P 0x99 0 100k", "write -z 1M 64k", "write -P 0x98 3M 64k")
    return p


def img_extl2_2m(t):
    p = t / "extl2-2m.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=2M",
             str(p), str(8 * MiB))
    qemu_io(p, "write -P 0x1 64k 64k", "write -z 2M 128k", "write -P 0x2 4160k 1M",
            "write -P 0x3 8000k 192k")
    return p


BUILDERS = {f.__name__[4:]: f for f in [
    img_snapshot, img_extl2_2m,
    img_v2, img_v3_512, img_v3_4k, img_v3_2m, img_zlib, img_zlib_v2,
    img_zlib_2m, img_zstd, img_zstd_extl2, img_unaligned, img_zero_clusters,
    img_extl2, img_extl2_nobacking, img_chain3, img_raw_backing_short,
    img_backing_detected]}

HAS_RAW_BACKING = {"extl2", "raw_backing_short"}


@pytest.fixture(params=sorted(BUILDERS))
def image(request, tmp_path):
    return request.param, BUILDERS[request.param](tmp_path)


def test_bytes_equal_qemu(image, tmp_path):
    name, path = image
    expected = qemu_raw_bytes(path, tmp_path)
    with open_image(path) as b:
        assert isinstance(b, Qcow2Backend)
        assert b.size == len(expected)
        buf = bytearray(b.size + 100)
        assert b.read_into(0, memoryview(buf)) == b.size
        assert buf[:b.size] == expected
        rnd = random.Random(name)
        for _ in range(60):
            off = rnd.randrange(0, b.size)
            n = rnd.choice([1, 511, 4096, 65536, 300000, rnd.randrange(1, MiB)])
            got = b.read(off, n)
            assert got == expected[off:off + n], (off, n)
        assert b.read_into(b.size, memoryview(bytearray(10))) == 0


def test_extents_equal_qemu_map(image):
    name, path = image
    with open_image(path) as b:
        ours = list(b.extents())
        size = b.size
    assert_extents_match_qemu(ours, qemu_map(str(path)), size,
                              check_hole=name not in HAS_RAW_BACKING)


def test_shallow_equal_qemu_without_backing(image, tmp_path):
    name, path = image
    spec = shallow_json(path)
    expected = qemu_raw_bytes(path, tmp_path, opts=spec)
    with open_image(path, shallow=True) as b:
        assert b.backing is None
        assert b.read(0, b.size) == expected
        ours = list(b.extents())
    assert_extents_match_qemu(ours, qemu_map(spec), len(expected))


@pytest.mark.parametrize("build", [img_zlib, img_chain3, img_raw_backing_short])
def test_threads_and_clone(tmp_path, build):
    path = build(tmp_path)
    expected = qemu_raw_bytes(path, tmp_path)
    errors = []
    with open_image(path) as b:
        def worker(k):
            try:
                c = b.clone() if k % 2 else b
                rnd = random.Random(k)
                for _ in range(100):
                    off = rnd.randrange(0, b.size)
                    n = rnd.randrange(1, 200000)
                    if c.read(off, n) != expected[off:off + n]:
                        errors.append((off, n))
                if c is not b:
                    c.close()
                    # closing a clone leaves the original (and its chain) usable
                    if b.read(0, 4096) != expected[:4096]:
                        errors.append("original broken by clone close")
            except Exception as e:  # report in the main thread
                errors.append(e)
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert errors == []


def test_read_only(tmp_path):
    path = img_v2(tmp_path)
    with open_image(path) as b:
        with pytest.raises(FormatError):
            b.write(0, b"x")
        with pytest.raises(FormatError):
            b.zero(0, 1)
    with pytest.raises(FormatError):
        open_image(path, "r+")


def test_missing_backing_file(tmp_path):
    top = tmp_path / "orphan.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2",
             "-F", "qcow2", str(top), "1M")
    with pytest.raises(FormatError, match="gone.qcow2"):
        open_image(top)
    with open_image(top, shallow=True) as b:  # this layer alone is fine
        assert b.read(0, 10) == bytes(10)


def test_backing_loop(tmp_path):
    a = tmp_path / "a.qcow2"
    b = tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2",
             str(a), "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2",
             str(b), "1M")
    with pytest.raises(FormatError, match="loop"):
        open_image(a)


def test_pyqcow_agrees_on_v2(tmp_path):
    pyqcow = pytest.importorskip("pyqcow")
    path = img_v2(tmp_path)
    f = pyqcow.file()
    f.open(str(path))
    try:
        theirs = f.read_buffer_at_offset(SIZE, 0)
    finally:
        f.close()
    with open_image(path) as b:
        assert b.read(0, SIZE) == theirs


def test_fifo_backing_refused_without_blocking(tmp_path):
    import os
    os.mkfifo(tmp_path / "pipe")
    top = tmp_path / "fifo.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "pipe", "-F", "raw",
             str(top), "1M")
    with pytest.raises(FormatError, match="not a regular file"):
        open_image(top)


def test_a_clone_reads_the_file_opened_not_one_swapped_in_under_its_name(tmp_path):
    """Checks made on opening (a backup repository's O_NOFOLLOW and inode
    checks) must hold for the copier's clones too: a clone never opens the
    path again, so a symlink planted under the name afterwards is not read."""
    path = _convert(tmp_path, "orig")
    expected = qemu_raw_bytes(path, tmp_path)
    other = _convert(tmp_path, "other", seed=2)
    with Qcow2Backend(str(path)) as b:
        moved = tmp_path / "moved.qcow2"
        path.rename(moved)
        path.symlink_to(other)
        c = b.clone()
        try:
            assert c.read(0, c.size) == expected
        finally:
            c.close()
