"""Checksum ahead: the data plane hashes flushed blocks of an announced upload.

The final checksum must equal a full read-back (our checksum_file and the
reference ovirt_imageio.client.checksum) whatever was rewritten, zeroed or
left unflushed; tickets never announced must behave as before.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import time

import pytest

from helpers import MiB
from imageio_daemon import scratch_dir
from imagetool.checksum import checksum_file
from imagetool.errors import ImageioError
from imagetool.formats.raw import RawBackend
from imagetool.imageio import ImageioClient
from imagetool.server import dataplane_images
from imagetool.server.dataplane import DataPlaneServer
from imagetool.server.tickets import Ticket, TicketRegistry

reference = pytest.importorskip("ovirt_imageio.client")

BLOCK = 4 * MiB
SIZE = 6 * BLOCK          # a multiple of 4 MiB: the reference client hashes the same size


@pytest.fixture
def server():
    srv = DataPlaneServer(TicketRegistry()).start()
    yield srv
    srv.stop()
    for t in srv.registry.all():
        srv.registry.remove(t.uuid)


def _ticket(server, path: str, size: int = SIZE, ops=("read", "write"),
            direct: bool = True) -> Ticket:
    with open(path, "ab") as f:
        f.truncate(size)
    ticket = Ticket(uuid=f"ticket-{os.urandom(6).hex()}", size=size, ops=tuple(ops),
                    open_backend=lambda: RawBackend(path, "r+" if "write" in ops else "r",
                                                    direct=direct))
    server.registry.add(ticket)
    return ticket


def _client(server, ticket: Ticket) -> ImageioClient:
    return ImageioClient(f"{server.url}/images/{ticket.uuid}")


def _full(path: str, algorithm: str = "sha256", block_size: int = BLOCK) -> str:
    """A full read-back of the file (ours), checked against the reference client."""
    ours = checksum_file(path, format="raw", algorithm=algorithm,
                         block_size=block_size)["checksum"]
    theirs = reference.checksum(path, algorithm=algorithm, block_size=block_size)
    assert theirs["checksum"] == ours
    return ours


def _wait_hashed(ticket: Ticket, blocks: set[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not blocks <= ticket.checksum_ahead.hashed_blocks():
        assert time.monotonic() < deadline, "blocks were not hashed ahead"
        time.sleep(0.01)


def _patch(server, ticket: Ticket, msg: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("PATCH", f"/images/{ticket.uuid}", body=json.dumps(msg).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_options_list_the_extension_apart_from_imageio_features(server, scratch):
    rw = _ticket(server, os.path.join(scratch, "rw.raw"))
    ro = _ticket(server, os.path.join(scratch, "ro.raw"), ops=("read",))
    with _client(server, rw) as c:
        opts = c.options()
        assert opts.features == {"checksum", "extents", "flush", "zero"}
        assert opts.extensions == {"checksum-ahead"}
    with _client(server, ro) as c:
        assert c.options().extensions == frozenset()


@pytest.mark.slow
def test_announced_upload_checksum_equals_full_read_back(server, scratch):
    path = os.path.join(scratch, "disk.raw")
    ticket = _ticket(server, path)
    data = os.urandom(SIZE)
    with _client(server, ticket) as c:
        c.checksum_ahead("sha256", BLOCK)
        c.write(0, data[:2 * BLOCK])                     # blocks 0, 1
        c.write(3 * BLOCK + 4096, data[:BLOCK + 100])    # blocks 3, 4, unaligned tail
        c.flush()
        _wait_hashed(ticket, {0, 1, 3, 4})
        c.zero(BLOCK, MiB)                               # block 1 again
        c.write(5 * BLOCK, data[:MiB])                   # never flushed
        result = c.checksum("sha256", BLOCK)
    assert result == {"algorithm": "sha256", "block_size": BLOCK,
                      "checksum": _full(path)}


def test_rewritten_block_is_hashed_again(server, scratch):
    path = os.path.join(scratch, "disk.raw")
    ticket = _ticket(server, path)
    with _client(server, ticket) as c:
        c.checksum_ahead("sha256", BLOCK)
        c.write(0, os.urandom(BLOCK))
        c.flush()
        _wait_hashed(ticket, {0})
        before = _full(path)
        c.write(4096, os.urandom(8192))        # overwrite inside the hashed block
        c.flush()
        _wait_hashed(ticket, {0})              # its digest again, from the new bytes
        result = c.checksum("sha256", BLOCK)["checksum"]
    assert result == _full(path) != before


def _change_behind(path: str, keep_mtime: bool) -> None:
    """Change the file's first block without going through the data plane."""
    st = os.stat(path)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"changed", 100)
        os.fsync(fd)
    finally:
        os.close(fd)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        # Coarse file system clocks: make sure the change shows.
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


@pytest.mark.slow
def test_final_checksum_uses_the_digests_it_has(server, scratch):
    # A change behind the data plane's back that keeps the file's mtime is
    # not seen: proof that the final request did not read the hashed blocks.
    path = os.path.join(scratch, "disk.raw")
    ticket = _ticket(server, path)
    with _client(server, ticket) as c:
        c.checksum_ahead("sha256", BLOCK)
        c.write(0, os.urandom(2 * BLOCK))
        c.flush()
        _wait_hashed(ticket, {0, 1})
        expected = _full(path)
        _change_behind(path, keep_mtime=True)
        assert c.checksum("sha256", BLOCK)["checksum"] == expected != _full(path)
        # Another algorithm or block size is a full read-back.
        assert c.checksum("blake2b", BLOCK)["checksum"] == _full(path, "blake2b")
        assert c.checksum("sha256", MiB)["checksum"] == _full(path, block_size=MiB)


@pytest.mark.slow
def test_file_changed_behind_the_data_plane_is_read_back(server, scratch):
    path = os.path.join(scratch, "disk.raw")
    ticket = _ticket(server, path)
    with _client(server, ticket) as c:
        c.checksum_ahead("sha256", BLOCK)
        c.write(0, os.urandom(2 * BLOCK))
        c.flush()
        _wait_hashed(ticket, {0, 1})
        before = _full(path)
        _change_behind(path, keep_mtime=False)
        result = c.checksum("sha256", BLOCK)["checksum"]
    assert result == _full(path) != before


@pytest.mark.slow
def test_writes_during_hashing_never_leave_a_stale_digest(server, scratch):
    path = os.path.join(scratch, "disk.raw")
    ticket = _ticket(server, path)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            with _client(server, ticket) as w:
                while not stop.is_set():
                    w.write(index * BLOCK + 8192, os.urandom(64 * 1024))
                    w.flush()
        except BaseException as e:  # noqa: B036 - reported below
            errors.append(e)

    with _client(server, ticket) as c:
        c.checksum_ahead("sha256", BLOCK)
        c.write(0, os.urandom(SIZE))
        c.flush()
        threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        assert not errors
        c.flush()
        result = c.checksum("sha256", BLOCK)["checksum"]
    assert result == _full(path)


@pytest.mark.slow
def test_never_announced_ticket_works_as_before(server, scratch):
    src = os.path.join(scratch, "src.raw")
    with open(src, "wb") as f:
        f.truncate(SIZE)
        f.seek(BLOCK + 512)
        f.write(os.urandom(2 * BLOCK))
    path = os.path.join(scratch, "disk.raw")
    ticket = _ticket(server, path)
    url = f"{server.url}/images/{ticket.uuid}"
    before = {t.name for t in threading.enumerate()}
    reference.upload(src, url, None, max_workers=2)
    with ImageioClient(url) as c:
        c.write(0, b"x" * 4096, flush=True)
        c.zero(5 * BLOCK, BLOCK, flush=True)
        result = c.checksum("sha256", BLOCK)
    assert ticket.checksum_ahead is None
    assert "checksum-ahead" not in {t.name for t in threading.enumerate()} - before
    assert result["checksum"] == _full(path)
    assert reference.checksum(src, algorithm="sha256")["checksum"] != result["checksum"]


def test_announcement_refusals(server, scratch, monkeypatch):
    rw = _ticket(server, os.path.join(scratch, "rw.raw"))
    status, body = _patch(server, rw, {"op": "checksum-ahead", "algorithm": "nope",
                                       "block_size": BLOCK})
    assert status == 400 and b"Unsupported value 'nope' for 'algorithm'" in body
    status, body = _patch(server, rw, {"op": "checksum-ahead", "algorithm": "sha256",
                                       "block_size": 4096})
    assert status == 400 and b"Block size out of allowed range" in body
    ro = _ticket(server, os.path.join(scratch, "ro.raw"), ops=("read",))
    status, body = _patch(server, ro, {"op": "checksum-ahead", "algorithm": "sha256",
                                       "block_size": BLOCK})
    assert status == 403 and b"forbids write" in body
    assert rw.checksum_ahead is None and ro.checksum_ahead is None
    # Without direct I/O the extension is neither offered nor accepted.
    other = _ticket(server, os.path.join(scratch, "other.raw"), direct=False)
    with _client(server, other) as c:
        assert c.options().extensions == frozenset()
        with pytest.raises(ImageioError, match="not available"):
            c.checksum_ahead("sha256", BLOCK)
    assert other.checksum_ahead is None


@pytest.mark.slow
def test_hashing_thread_ends_with_its_ticket(server, scratch):
    ticket = _ticket(server, os.path.join(scratch, "disk.raw"))
    with _client(server, ticket) as c:
        c.checksum_ahead("sha256", BLOCK)
    ahead = ticket.checksum_ahead
    assert ahead is not None
    server.registry.remove(ticket.uuid)
    assert ahead.join(5.0)


@pytest.fixture
def local_conn():
    from imagetool.engine import Connection
    from imagetool.server.local import LocalEngine

    d = scratch_dir("checksum-ahead-")
    try:
        with LocalEngine(os.path.join(d, "engine")) as eng:
            with Connection(eng.url, username=eng.username, password=eng.password,
                            cafile=eng.cafile) as c:
                yield c, d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_upload_announces_only_when_verifying(local_conn, monkeypatch):
    from imagetool.transfer.upload import upload_disk_result

    conn, d = local_conn
    src = os.path.join(d, "src.raw")
    with open(src, "wb") as f:
        f.truncate(3 * BLOCK)
        f.write(os.urandom(BLOCK + 4096))
        f.seek(2 * BLOCK)
        f.write(os.urandom(MiB))
    announced: list[tuple[str, int]] = []
    real = dataplane_images._announce

    def spy(ticket, backend, msg):
        real(ticket, backend, msg)
        announced.append((ticket.checksum_ahead.algorithm, ticket.checksum_ahead.block_size))

    monkeypatch.setattr(dataplane_images, "_announce", spy)
    res = upload_disk_result(conn, src, "data", name="verified")
    assert res.verification.verified
    assert res.verification.value == _full(src, res.verification.algorithm)
    assert announced == [(res.verification.algorithm, BLOCK)]
    upload_disk_result(conn, src, "data", name="unverified", verify=False)
    assert len(announced) == 1


def test_failed_read_back_leaves_the_block_to_the_final_checksum():
    """A block whose read-back fails gets no digest, and the final request
    (which waits for blocks being hashed) is not left waiting for it."""
    from imagetool.server.checksum_ahead import ChecksumAhead

    class FailingReader:
        calls = 0

        def read_into(self, offset, buf):
            FailingReader.calls += 1
            raise OSError("I/O error")

        def close(self):
            pass

    block = 1024 * 1024
    ahead = ChecksumAhead(FailingReader(), 2 * block, "sha256", block,
                          alive=lambda: True, mtime=lambda: 0).start()
    try:
        ahead.begin_write(0, block)
        ahead.end_write(0, block)
        ahead.flush(lambda: None)
        deadline = time.monotonic() + 5
        while FailingReader.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert FailingReader.calls >= 1
        got: list = []
        waiter = threading.Thread(target=lambda: got.append(_known(ahead)), daemon=True)
        waiter.start()
        waiter.join(5)
        assert got == [{}]
    finally:
        ahead.stop()
        assert ahead.join(5)


def _known(ahead) -> dict:
    with ahead.paused() as known:
        return dict(known)
