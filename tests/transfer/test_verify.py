"""imagetool.transfer.verify pieces without an engine.

Expected values come from the reference file hasher
(``ovirt_imageio._internal.blkhash``) over files built for the purpose.
"""

from __future__ import annotations

import os
import random
import threading

import pytest

from helpers import MiB
from imagetool.checksum import checksum
from imagetool.errors import ChecksumMismatch, ImagetoolError
from imagetool.formats.raw import RawBackend
from imagetool.iocore import backends
from imagetool.transfer import verify

blkhash = pytest.importorskip("ovirt_imageio._internal.blkhash")


def _file(path, size, seed=1):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, 3 * MiB):
            f.seek(off)
            f.write(rnd.randbytes(min(MiB + 123, size - off)))
    return str(path)


def test_window_pads_with_zeros(tmp_path):
    src = _file(tmp_path / "a", 5 * MiB + 4096)
    padded = tmp_path / "padded"
    with open(src, "rb") as f, open(padded, "wb") as g:
        g.write(f.read())
        g.truncate(9 * MiB)
    b = RawBackend(src, "r")
    try:
        got = checksum(backends.Window(b, 9 * MiB))["checksum"]
    finally:
        b.close()
    assert got == blkhash.checksum(str(padded))["checksum"]


def test_window_cuts(tmp_path):
    src = _file(tmp_path / "a", 9 * MiB)
    cut = tmp_path / "cut"
    with open(src, "rb") as f, open(cut, "wb") as g:
        g.write(f.read(4 * MiB + 512))
    b = RawBackend(src, "r")
    try:
        got = checksum(backends.Window(b, 4 * MiB + 512))["checksum"]
    finally:
        b.close()
    assert got == blkhash.checksum(str(cut))["checksum"]


class _CountingClones:
    """A backend that may only be read by one thread per clone."""

    def __init__(self, path, owners=None):
        self.b = RawBackend(path, "r")
        self.size = self.b.size
        self.owners = owners if owners is not None else []
        self.thread = None

    def extents(self, context="zero"):
        return self.b.extents(context)

    def read_into(self, offset, buf):
        if self.thread is None:
            self.thread = threading.get_ident()
        assert self.thread == threading.get_ident(), "clone shared between threads"
        return self.b.read_into(offset, buf)

    def clone(self):
        c = _CountingClones(self.b.path, self.owners)
        self.owners.append(c)
        return c

    def close(self):
        self.b.close()


def test_per_thread_gives_each_reader_its_clone(tmp_path):
    src = _file(tmp_path / "a", 24 * MiB)
    base = _CountingClones(src)
    reader = backends.PerThread(base)
    try:
        got = checksum(reader, workers=4, block_size=MiB)["checksum"]
    finally:
        reader.close()
        base.close()
    assert got == blkhash.checksum(src, block_size=MiB)["checksum"]
    assert 1 <= len(base.owners) <= 4


def test_local_hash_result_and_cancel(tmp_path):
    src = _file(tmp_path / "a", 8 * MiB)
    h = verify.LocalHash(verify.open_source(src, False))
    assert h.result()["checksum"] == blkhash.checksum(src)["checksum"]
    h = verify.LocalHash(verify.open_source(src, True), start=False)
    h.cancel()
    with pytest.raises(ImagetoolError, match="cancelled"):
        h.result()


def test_mismatch_message_has_both_values():
    e = ChecksumMismatch("aa" * 32, "bb" * 32, "disk.raw")
    assert "aa" * 32 in str(e) and "bb" * 32 in str(e) and e.exit_code == 1


def test_to_dict_shapes():
    v = verify.Verification(True, "blake2b", 4 * MiB, "ab" * 32, "server-checksum")
    d = v.to_dict()
    assert d["verified"] is True and d["checksum"]["value"] == "ab" * 32
    assert verify.skipped("why").to_dict() == {"checksum": None, "verified": False,
                                               "verify_skipped": "why"}


def test_raw_zero_past_end_never_shrinks(tmp_path):
    """Concurrent zeros past the end of a raw file (what verification caught in
    cow uploads): the file ends at the furthest end, data written stays."""
    for round_ in range(20):
        path = str(tmp_path / f"z{round_}")
        b = RawBackend(path, "w", size=0)
        try:
            ends = [(i + 1) * 64 * 1024 for i in range(8)]
            barrier = threading.Barrier(len(ends) + 1)

            def zero(end):
                barrier.wait()
                b.zero(end - 64 * 1024, 64 * 1024)

            def write():
                barrier.wait()
                b.write(10 * 64 * 1024, b"\x01" * 4096)

            ts = [threading.Thread(target=zero, args=(e,)) for e in ends]
            ts.append(threading.Thread(target=write))
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        finally:
            b.close()
        assert os.path.getsize(path) == 10 * 64 * 1024 + 4096
        with open(path, "rb") as f:
            f.seek(10 * 64 * 1024)
            assert f.read() == b"\x01" * 4096


def test_remote_checksum_closes_its_client_when_options_fails(monkeypatch):
    """Reading back opens a fresh client; an OPTIONS error must not leak it."""
    opened = []

    class FailingClient:
        cafile = proxy_url = signed_ticket = None
        insecure = False
        connect_timeout = read_timeout = 10.0

        def __init__(self, url, **kw):
            self.url = url
            self.closed = False
            opened.append(self)

        def options(self):
            raise ImagetoolError("OPTIONS failed")

        def close(self):
            self.closed = True

    class Backend:      # a session's backend on a server without checksum
        client = FailingClient("https://imageio/images/t")
        features = ()

    opened.clear()      # the Backend's own client above is not the fresh one
    monkeypatch.setattr(verify, "ImageioClient", FailingClient)
    with pytest.raises(ImagetoolError, match="OPTIONS failed"):
        verify.remote_checksum(Backend())
    assert [c.closed for c in opened] == [True]
