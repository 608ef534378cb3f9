"""The core copier's options used by conversions and the local engine:
explicit extents, cluster alignment, zero runs, copy_local."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from imagetool.iocore.copier import CopyOptions, align_extents, copy, copy_local
from imagetool.iocore.backend import Extent
from imagetool.formats.raw import RawBackend
from fake_backends import FileBackend, MemBackend
from helpers import MiB

KiB = 1024


def _allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def test_zero_runs_inside_data_stay_holes(tmp_path):
    # One allocated 4 MiB extent: data, 1 MiB of zeros, data.
    src_path = tmp_path / "src.raw"
    data = bytearray(os.urandom(4 * MiB))
    data[MiB:2 * MiB] = bytes(MiB)
    src_path.write_bytes(data)
    dst_path = tmp_path / "dst.raw"
    src = RawBackend(src_path, "r")
    dst = RawBackend(dst_path, "w", size=4 * MiB)
    stats = copy_local(src, dst, CopyOptions(2, 4 * MiB, dst_is_zero=True, detect_zeroes=True,
                                             zero_granularity=64 * KiB))
    src.close()
    dst.close()
    assert dst_path.read_bytes() == bytes(data)
    assert stats.bytes_copied == 3 * MiB and stats.bytes_skipped == MiB
    assert _allocated(dst_path) <= 3 * MiB + 64 * KiB


@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "overlap"])
def test_zero_runs_over_a_backing_file_are_zeroed(tmp_path, overlap):
    data = bytearray(os.urandom(2 * MiB))
    data[256 * KiB:512 * KiB] = bytes(256 * KiB)
    src = MemBackend(data)
    dst_path = tmp_path / "dst.raw"
    dst_path.write_bytes(b"\xff" * (2 * MiB))    # the "backing" data to hide
    dst = FileBackend(dst_path, "r+")
    copy(src, dst, CopyOptions(1, 2 * MiB, over_backing=True, detect_zeroes=True,
                               zero_granularity=64 * KiB, overlap=overlap))
    dst.close()
    assert dst_path.read_bytes() == bytes(data)
    assert dst.stats["zero"] == 1 and dst.stats["write"] == 2


def test_explicit_extents_copy_only_those_ranges(tmp_path):
    data = os.urandom(MiB)
    dst_path = tmp_path / "dst.raw"
    dst = RawBackend(dst_path, "w", size=MiB)
    copy_local(MemBackend(data), dst, CopyOptions(dst_is_zero=True),
               extents=[Extent(64 * KiB, 64 * KiB), Extent(512 * KiB, 4 * KiB)])
    dst.close()
    out = dst_path.read_bytes()
    expected = bytearray(MiB)
    expected[64 * KiB:128 * KiB] = data[64 * KiB:128 * KiB]
    expected[512 * KiB:516 * KiB] = data[512 * KiB:516 * KiB]
    assert out == bytes(expected)


def test_request_size_must_be_a_multiple_of_align():
    with pytest.raises(ValueError, match="multiple of 4096 and of align"):
        copy(MemBackend(bytes(MiB)), MemBackend(bytes(MiB)),
             CopyOptions(request_size=3 * 4096, align=8192))


def test_copy_local_raises_the_sides_own_error(tmp_path):
    src = FileBackend(tmp_path / "src.raw", "w", size=MiB, fail_at=4096)
    dst = RawBackend(tmp_path / "dst.raw", "w", size=MiB)
    with pytest.raises(OSError, match="injected read error") as info:
        copy_local(src, dst, extents=[Extent(0, MiB)])
    assert type(info.value) is OSError
    dst.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40_000)), min_size=1, max_size=12),
       st.sampled_from([512, 4096, 65536]))
@pytest.mark.slow
def test_align_extents_covers_data_on_whole_blocks(parts, align):
    extents, pos = [], 0
    for zero, length in parts:
        extents.append(Extent(pos, length, zero=zero))
        pos += length
    size = pos
    out = list(align_extents(iter(extents), align, size))
    # Consecutive, covering [0, size), neighbours differ.
    assert out[0].start == 0 and out[-1].end == size
    for a, b in zip(out, out[1:]):
        assert a.end == b.start and a.zero != b.zero
    # Data extents start and end on blocks (or at the end of the image)...
    for e in out:
        if not e.zero:
            assert e.start % align == 0 and (e.end % align == 0 or e.end == size)
    # ...and every source data byte is inside one.
    for e in extents:
        if not e.zero:
            assert any(o.start <= e.start and e.end <= o.end for o in out if not o.zero)
