"""The parallel copier between local backends."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from fake_backends import FileBackend
from helpers import MiB, images_equal, make_raw, qemu_img
from imagetool.iocore.backends import FlushingBackend, SharedBackend, Window
from imagetool.formats import open_image
from imagetool.iocore.backend import LOCAL_FEATURES, Backend, Extent
from imagetool.iocore.copier import CopyCancelled, CopyError, CopyOptions, copy, plan

DATA = [(0, 3 * MiB + 123), (5 * MiB, 4096), (7 * MiB - 512, 2 * MiB + 512),
        (13 * MiB, 1 * MiB)]
SIZE = 16 * MiB


@pytest.fixture
def src_path(tmp_path):
    p = tmp_path / "src.raw"
    make_raw(p, SIZE, DATA, seed=1)
    return p


@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "overlap"])
@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_copy_bytes_equal(tmp_path, src_path, workers, overlap):
    dst_path = tmp_path / "dst.raw"
    src = FileBackend(src_path)
    dst = FileBackend(dst_path, "w", size=SIZE)
    done = []
    lock = threading.Lock()

    def on_done(start, length):
        with lock:
            done.append((start, length))

    seen = []
    stats = copy(src, dst, CopyOptions(workers, MiB, dst_is_zero=True, overlap=overlap),
                 progress=seen.append, on_done=on_done)
    src.close()
    dst.close()
    assert dst_path.read_bytes() == src_path.read_bytes()
    assert sum(seen) == SIZE
    assert stats.bytes_total == SIZE
    assert stats.bytes_copied + stats.bytes_skipped == SIZE
    # Each worker flushed its backend once; worker 0 uses the original.
    assert dst.stats["flush"] == workers
    assert dst.stats["clones"] == workers - 1
    # Finished requests tile the image exactly; data requests are bounded.
    done.sort()
    pos = 0
    for start, length in done:
        assert start == pos
        pos += length
    assert pos == SIZE
    assert stats.requests == len(done)
    assert max(length for start, length in done
               if any(s <= start < s + n for s, n in DATA)) <= MiB


@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "overlap"])
def test_copy_zeroes_destination_when_not_empty(tmp_path, src_path, overlap):
    dst_path = tmp_path / "dst.raw"
    dst_path.write_bytes(b"\xff" * SIZE)
    src = FileBackend(src_path)
    dst = FileBackend(dst_path, "w")
    stats = copy(src, dst, CopyOptions(workers=3, request_size=2 * MiB, overlap=overlap))
    assert dst_path.read_bytes() == src_path.read_bytes()
    assert stats.bytes_zeroed > 0 and stats.bytes_skipped == 0
    assert dst.stats["zero"] > 0


@pytest.mark.parametrize("wrapped", [False, True])
def test_copy_sends_zeros_as_data_without_zero_feature(tmp_path, src_path, wrapped):
    dst_path = tmp_path / "dst.raw"
    dst_path.write_bytes(b"\xff" * SIZE)
    src = FileBackend(src_path)
    dst = FileBackend(dst_path, "w", features=["flush"])
    copy(src, FlushingBackend(dst) if wrapped else dst, CopyOptions(2, MiB))  # inner's features
    assert dst_path.read_bytes() == src_path.read_bytes()
    assert dst.stats["zero"] == 0


def test_backends_declare_what_the_copier_reads(src_path):
    with open_image(src_path) as b:
        for x in (b, SharedBackend(b, owner=False), Window(b, SIZE)):
            assert (x.size, x.features, x.max_readers, x.max_writers) == (
                SIZE, LOCAL_FEATURES, None, None)
        assert isinstance(b, Backend)


def test_plan_aligns_and_bounds():
    reqs = list(plan(iter([Extent(0, 100), Extent(100, 4096 * 3 - 100, zero=True),
                           Extent(4096 * 3, 4096 * 5)]),
                     request_size=8192, dst_is_zero=False))
    copies = [(r.start, r.length) for r in reqs if r.op == "copy"]
    assert copies == [(0, 100), (12288, 4096), (16384, 8192), (24576, 8192)]
    assert [(r.op, r.start, r.length) for r in reqs if r.op == "zero"] == [
        ("zero", 100, 12188)]


@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "overlap"])
@pytest.mark.parametrize("side,where", [("reading source", "src"),
                                         ("writing destination", "dst")])
def test_first_error_is_raised_with_context(tmp_path, src_path, side, where, overlap):
    dst_path = tmp_path / "dst.raw"
    fail = 7 * MiB + 10
    src = FileBackend(src_path, fail_at=fail if where == "src" else None)
    dst = FileBackend(dst_path, "w", size=SIZE,
                      fail_at=fail if where == "dst" else None)
    with pytest.raises(CopyError) as info:
        copy(src, dst, CopyOptions(4, MiB, dst_is_zero=True, overlap=overlap))
    err = info.value
    assert err.side == side
    assert err.offset == 7 * MiB and err.length == MiB
    assert "injected" in str(err) and side in str(err)
    assert dst.stats["clones"] == 3


@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "overlap"])
def test_exception_from_progress_stops_copy(tmp_path, src_path, overlap):
    dst = FileBackend(tmp_path / "dst.raw", "w", size=SIZE)
    calls = []

    def progress(n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy(FileBackend(src_path), dst, CopyOptions(2, MiB, overlap=overlap), progress=progress)
    # Stopped early: far fewer writes than requests in the plan.
    assert dst.stats["write"] < 8


class GatedSource:
    """A source whose reads block until its ``gate`` opens; the source and
    its clones count reads in progress together and note a close while
    any is. Each clone has a gate of its own."""

    def __init__(self, size: int, shared: dict | None = None):
        self.size = size
        self.gate = threading.Event()
        self.s = shared or {"lock": threading.Lock(), "in_flight": 0,
                            "closed_mid_read": False, "clones": []}

    def extents(self, context: str = "zero"):
        return iter([Extent(0, self.size)])

    def read_into(self, offset: int, buf) -> int:
        with self.s["lock"]:
            self.s["in_flight"] += 1
        self.gate.wait(30)
        with self.s["lock"]:
            self.s["in_flight"] -= 1
        buf[:] = bytes(len(buf))
        return len(buf)

    def clone(self) -> "GatedSource":
        c = GatedSource(self.size, self.s)
        self.s["clones"].append(c)
        return c

    def close(self) -> None:
        with self.s["lock"]:
            self.s["closed_mid_read"] |= self.s["in_flight"] > 0

    def open_all(self) -> None:
        for g in [self] + self.s["clones"]:
            g.gate.set()


@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "overlap"])
@pytest.mark.slow
def test_ctrl_c_while_waiting_for_workers_waits_for_them(tmp_path, overlap):
    # A Ctrl-C landing while copy() waits for its workers: on Python 3.11
    # an interrupted Thread.join marked the running worker 0 as ended, and
    # the copy closed the clones and returned under worker 0's read.
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    src = GatedSource(4 * MiB)
    at_return = {}
    copying = threading.Event()     # a SIGINT outside copy() would end the whole run

    def interrupt():
        try:
            deadline = time.monotonic() + 10
            while src.s["in_flight"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)             # the main thread waits for worker 0
            if src.s["in_flight"] < 2 or not copying.is_set():
                return                  # the copy never got there: the test fails below
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            time.sleep(0.3)
            for c in src.s["clones"]:   # the other workers end first
                c.gate.set()
            time.sleep(1.0)
        finally:
            src.open_all()

    helper = threading.Thread(target=interrupt)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            copying.set()
            try:
                copy(src, FileBackend(tmp_path / "dst.raw", "w", size=4 * MiB),
                     CopyOptions(workers=2, request_size=MiB, overlap=overlap))
            finally:
                copying.clear()
        at_return["in_flight"] = src.s["in_flight"]
    finally:
        copying.clear()
        src.open_all()
        helper.join()
    assert at_return["in_flight"] == 0
    assert not src.s["closed_mid_read"]


def test_cancel_event(tmp_path, src_path):
    ev = threading.Event()
    ev.set()
    with pytest.raises(CopyCancelled):
        copy(FileBackend(src_path), FileBackend(tmp_path / "d", "w", size=SIZE),
             cancel_event=ev)


def test_destination_too_small(tmp_path, src_path):
    with pytest.raises(Exception, match="smaller"):
        copy(FileBackend(src_path), FileBackend(tmp_path / "d", "w", size=MiB))


def test_empty_source(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    stats = copy(FileBackend(tmp_path / "e"), FileBackend(tmp_path / "d", "w", size=0))
    assert stats.bytes_total == 0 and stats.requests == 0


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_raw_backend_to_raw_backend(tmp_path, src_path, workers):
    from imagetool.formats.raw import RawBackend

    out = tmp_path / "out.raw"
    src = RawBackend(src_path, "r")
    dst = RawBackend(out, "w", size=SIZE)
    copy(src, dst, CopyOptions(workers=workers, request_size=MiB, dst_is_zero=True))
    src.close()
    dst.close()
    assert out.read_bytes() == src_path.read_bytes()
    # Holes in the source stay holes.
    assert os.stat(out).st_blocks * 512 < SIZE


@pytest.mark.parametrize("workers", [1, 4])
def test_into_qcow2_writer(tmp_path, src_path, workers):
    from imagetool.formats.qcow2_writer import Qcow2Writer
    from imagetool.formats.raw import RawBackend
    from imagetool.iocore.backends import SharedBackend

    out = tmp_path / "out.qcow2"
    src = RawBackend(src_path, "r")
    dst = SharedBackend(Qcow2Writer.create(out, SIZE))
    copy(SharedBackend(src), dst, CopyOptions(workers, MiB, dst_is_zero=True, overlap=workers == 1))
    dst.flush()
    dst.close()
    src.close()
    qemu_img("check", str(out))
    assert images_equal(src_path, out, "raw", "qcow2")
