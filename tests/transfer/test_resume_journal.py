"""The resume journal: intervals, atomic saves, durable-only ranges, source identity."""

from __future__ import annotations

import json
import os
import random

import pytest

from helpers import MiB
from imagetool.formats.raw import RawBackend
from imagetool.iocore.backends import JournalingBackend, SharedBackend
from imagetool.iocore.copier import CopyOptions, _Request, copy, missing, skip_done
from imagetool.transfer.journal import Journal, merge, source_changes, source_identity


def test_merge_against_a_bitmap():
    rnd = random.Random(5)
    for _ in range(200):
        intervals: list[list[int]] = []
        bits = [False] * 200
        for _ in range(rnd.randrange(1, 15)):
            a = rnd.randrange(0, 200)
            b = rnd.randrange(a, 201)
            merge(intervals, a, b)
            for i in range(a, b):
                bits[i] = True
        assert all(x[0] < x[1] for x in intervals)
        assert all(p[1] < q[0] for p, q in zip(intervals, intervals[1:]))  # disjoint, not touching
        covered = [any(a <= i < b for a, b in intervals) for i in range(200)]
        assert covered == bits
        lo, hi = sorted((rnd.randrange(0, 201), rnd.randrange(0, 201)))
        gaps = [i for a, b in missing(intervals, lo, hi) for i in range(a, b)]
        assert gaps == [i for i in range(lo, hi) if not bits[i]]


def test_skip_done_splits_requests():
    reqs = [_Request("copy", 0, 100), _Request("zero", 100, 50), _Request("skip", 150, 10)]
    out = list(skip_done(reqs, [[10, 20], [90, 120]]))
    assert [(r.op, r.start, r.length) for r in out] == [
        ("copy", 0, 10), ("skip", 10, 10), ("copy", 20, 70), ("skip", 90, 10),
        ("skip", 100, 20), ("zero", 120, 30), ("skip", 150, 10)]


def test_atomic_save_and_reload(tmp_path):
    path = str(tmp_path / "j" / "x.json")
    j = Journal.create(path, disk_id="d1")
    j.add_done([(0, 10), (10, 5), (100, 1)])
    j.save()
    again = Journal.load(path)
    assert again.done == [[0, 15], [100, 101]]
    assert again.data["disk_id"] == "d1"
    assert [p for p in os.listdir(tmp_path / "j")] == ["x.json"]
    with open(path, "w") as f:
        f.write("{truncated")
    with pytest.raises(Exception, match="rm "):
        Journal.load(path)
    j.remove()
    assert not os.path.exists(path)


class _Dst:
    """A destination whose flush can fail, recording what it received."""

    def __init__(self):
        self.fail_flush = False
        self.writes = []

    def write(self, offset, data):
        self.writes.append((offset, len(data)))

    def zero(self, offset, length):
        self.writes.append((offset, length))

    def flush(self):
        if self.fail_flush:
            raise OSError("flush failed")

    def clone(self):
        return self

    def close(self):
        pass


def test_only_flushed_ranges_count(tmp_path):
    j = Journal.create(str(tmp_path / "j.json"))
    dst = _Dst()
    b = JournalingBackend(dst, j, flush_bytes=3 * 4096, flush_seconds=3600)
    b.write(0, b"x" * 4096)
    b.write(4096, b"x" * 4096)
    assert j.done == []                    # written, not yet flushed
    b.write(8192, b"x" * 4096)             # third write triggers the flush
    assert j.done == [[0, 12288]]
    dst.fail_flush = True
    b.zero(12288, 4096)
    with pytest.raises(OSError):
        b.flush()
    assert j.done == [[0, 12288]]          # a failed flush records nothing
    with open(j.path) as f:
        assert json.load(f)["done"] == [[0, 12288]]


def test_source_identity_changes(tmp_path):
    p = str(tmp_path / "s.raw")
    with open(p, "wb") as f:
        f.write(os.urandom(3 * MiB))
    saved = source_identity(p)
    assert source_changes(saved, p) == []
    with open(p, "r+b") as f:
        f.seek(3 * MiB - 10)
        f.write(b"0123456789")
    os.utime(p, ns=(saved["mtime_ns"], saved["mtime_ns"]))
    assert source_changes(saved, p) == ["content of its first/last blocks"]
    with open(p, "ab") as f:
        f.write(b"more")
    changes = source_changes(saved, p)
    assert changes[0] == f"size {3 * MiB} -> {3 * MiB + 4} bytes"
    assert "modification time" in changes


def test_copy_skips_done_ranges(tmp_path):
    src_path, dst_path = str(tmp_path / "a"), str(tmp_path / "b")
    with open(src_path, "wb") as f:
        f.write(os.urandom(4 * MiB))
    with open(dst_path, "wb") as f:
        f.truncate(4 * MiB)
    src = SharedBackend(RawBackend(src_path, "r"))
    dst = SharedBackend(RawBackend(dst_path, "r+"))
    try:
        stats = copy(src, dst, CopyOptions(workers=2, request_size=MiB),
                     skip_ranges=[[MiB, 3 * MiB]])
    finally:
        src.close()
        dst.close()
    assert stats.bytes_copied == 2 * MiB and stats.bytes_skipped == 2 * MiB
    a, b = open(src_path, "rb").read(), open(dst_path, "rb").read()
    assert a[:MiB] == b[:MiB] and a[3 * MiB:] == b[3 * MiB:]
    assert b[MiB:3 * MiB] == bytes(2 * MiB)       # the skipped part was not sent
