"""Downloads to raw write aligned requests with O_DIRECT (RawBackend direct=True).

The files live under /var/tmp (a disk file system: tmpfs may refuse
O_DIRECT, and then the ordinary path is what runs).
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile

import pytest

from helpers import MiB, images_equal, make_raw
from imagetool.formats.raw import RawBackend
from imagetool.iocore.copier import CopyOptions, copy
from imagetool.iocore.backends import SharedBackend


@pytest.fixture
def disk_dir():
    d = tempfile.mkdtemp(prefix="imagetool-test-direct-", dir="/var/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _download_like(src_path: str, out: str, workers: int, overlap: bool,
                   request_size: int = MiB) -> None:
    src = RawBackend(src_path, "r")
    dst = RawBackend(out, "w", size=src.size, direct=True)
    shared = SharedBackend(dst)
    try:
        copy(SharedBackend(src), shared, CopyOptions(workers, request_size, dst_is_zero=True,
                                                     detect_zeroes=True, overlap=overlap))
        shared.flush()
    finally:
        shared.close()
        src.close()


@pytest.mark.parametrize("workers,overlap", [(1, False), (3, False), (2, True)])
def test_download_copy_bytes_equal_and_sparse(disk_dir, workers, overlap):
    # A size that is not a multiple of 4096: the last request is unaligned
    # and must take the buffered path; a zero-filled data range must not be
    # written (the destination stays sparse there).
    size = 9 * MiB + 1234
    src = os.path.join(disk_dir, "src.raw")
    make_raw(src, size, [(0, 2 * MiB), (3 * MiB + 512, 100_000), (8 * MiB, MiB + 1234)])
    with open(src, "r+b") as f:         # data extent that reads as zeros
        f.seek(5 * MiB)
        f.write(bytes(MiB))
    out = os.path.join(disk_dir, "out.raw")
    _download_like(src, out, workers, overlap)
    assert images_equal(src, out, "raw", "raw")
    assert os.path.getsize(out) == size
    # 2 MiB + ~1 MiB + (part of) 2 MiB of data at most; never the 9 MiB.
    assert os.stat(out).st_blocks * 512 <= 6 * MiB


def test_aligned_write_goes_direct_others_do_not(disk_dir):
    path = os.path.join(disk_dir, "out.raw")
    dst = RawBackend(path, "w", size=4 * MiB, direct=True)
    shared = SharedBackend(dst)
    try:
        if not shared.direct:
            pytest.skip("this file system refuses O_DIRECT")
        aligned = mmap.mmap(-1, MiB)
        aligned.write(b"\xa5" * MiB)
        clone = shared.clone()
        assert clone._write_direct(MiB, memoryview(aligned)) == MiB
        # Misaligned offset, length or address: not written here.
        assert clone._write_direct(MiB + 512, memoryview(aligned)) == 0
        assert clone._write_direct(0, memoryview(aligned)[:1000]) == 0
        assert clone._write_direct(0, memoryview(aligned)[16:16 + 4096]) == 0
        assert clone._write_direct(0, memoryview(bytes(4096))) == 0   # read-only buffer
        # Those go through the ordinary path instead.
        clone.write(2 * MiB + 512, memoryview(aligned)[16:16 + 4096])
        clone.close()       # a clone does not close the shared descriptors
        shared.write(3 * MiB, b"\x5a" * 4096)
        shared.flush()
    finally:
        shared.close()
    with open(path, "rb") as f:
        data = f.read()
    assert data[MiB:2 * MiB] == b"\xa5" * MiB
    assert data[2 * MiB + 512:2 * MiB + 512 + 4096] == b"\xa5" * 4096
    assert data[3 * MiB:3 * MiB + 4096] == b"\x5a" * 4096
    assert data[:MiB] == bytes(MiB)
    assert len(data) == 4 * MiB
