"""A preallocated disk keeps its allocation through an upload (local engine).

The ticket of a preallocated (sparse=false) disk opens it not sparse; the data
plane's zero on such a ticket zeroes in place instead of punching holes; a
sparse disk keeps getting holes. A preallocated disk's copy and resize stay
allocated too.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import shutil
import xml.etree.ElementTree as ET

import pytest

from helpers import ENGINE_PASSWORD, MiB, api_request, images_equal
from imageio_daemon import scratch_dir
from imagetool.cli.main import main
from imagetool.formats.raw import RawBackend
from imagetool.server.dataplane import DataPlaneServer
from imagetool.server.local import LocalEngine
from imagetool.server.tickets import Ticket, TicketRegistry

SIZE = 4 * MiB


def allocated(path: str) -> int:
    """Bytes the file system allocated for ``path``."""
    return os.stat(path).st_blocks * 512


def make_source(path: str) -> None:
    """4 MiB: random data, a run of written zeros, and holes."""
    with open(path, "wb") as f:
        f.truncate(SIZE)
        f.write(os.urandom(MiB))
        f.seek(MiB + MiB // 2)
        f.write(bytes(MiB // 2))        # zeros stored as data
        f.seek(3 * MiB)
        f.write(os.urandom(4096))


# --- through the CLI ---------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``imagetool argv`` in process; (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def upload(home: str, capsys, src: str, mode: str) -> tuple[str, int]:
    """Upload ``src``; (volume file path, actual_size the engine reports)."""
    code, out, err = run(capsys, "upload", src, "--sd", "data", mode, "--json")
    assert code == 0, err
    obj = json.loads(out)
    obj = obj[0] if isinstance(obj, list) else obj
    disk_id = obj["disk_id"]
    vols = [p for p in glob.glob(os.path.join(home, "home", "*", "images", disk_id, "*"))
            if not p.endswith((".meta", ".tmp"))]
    assert len(vols) == 1, vols
    code, out, err = run(capsys, "disks", "list", "--json")
    assert code == 0, err
    disk = next(d for d in json.loads(out) if d["id"] == disk_id)
    return vols[0], int(disk["actual_size"])


@pytest.mark.slow
def test_preallocated_upload_stays_allocated(home, capsys):
    src = os.path.join(home, "src.raw")
    make_source(src)
    assert allocated(src) < SIZE         # the source really has holes
    vol, actual = upload(home, capsys, src, "--preallocated")
    assert os.path.getsize(vol) == SIZE
    assert allocated(vol) >= SIZE
    assert actual >= SIZE
    assert images_equal(src, vol, "raw", "raw")


@pytest.mark.slow
def test_sparse_upload_keeps_holes(home, capsys):
    src = os.path.join(home, "src.raw")
    make_source(src)
    vol, actual = upload(home, capsys, src, "--sparse")
    assert allocated(vol) < SIZE
    assert actual < SIZE
    assert images_equal(src, vol, "raw", "raw")


# --- the data plane's zero ---------------------------------------------------

@pytest.fixture
def plane():
    d = scratch_dir()
    server = DataPlaneServer(TicketRegistry()).start()
    yield d, server
    server.stop()
    for t in server.registry.all():
        server.registry.remove(t.uuid)
    shutil.rmtree(d, ignore_errors=True)


def _full_file(directory: str) -> str:
    path = os.path.join(directory, "disk.raw")
    with open(path, "wb") as f:
        f.write(os.urandom(SIZE))
        os.fsync(f.fileno())
    assert allocated(path) >= SIZE
    return path


def _patch_zero(server, path: str, sparse: bool, offset: int, size: int) -> int:
    ticket = Ticket(uuid=f"t-{os.urandom(6).hex()}", size=SIZE, ops=("read", "write"),
                    open_backend=lambda: RawBackend(path, "r+", sparse=sparse))
    server.registry.add(ticket)
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        body = json.dumps({"op": "zero", "offset": offset, "size": size, "flush": True})
        c.request("PATCH", f"/images/{ticket.uuid}", body=body,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()
        server.registry.remove(ticket.uuid)


@pytest.mark.parametrize("sparse", [False, True])
def test_patch_zero_allocation_follows_ticket(plane, sparse):
    d, server = plane
    path = _full_file(d)
    with open(path, "rb") as f:
        before = f.read()
    assert _patch_zero(server, path, sparse, MiB, 2 * MiB) == 200
    with open(path, "rb") as f:
        after = f.read()
    assert after[MiB:3 * MiB] == bytes(2 * MiB)
    assert after[:MiB] == before[:MiB] and after[3 * MiB:] == before[3 * MiB:]
    if sparse:
        assert allocated(path) <= SIZE - 2 * MiB
    else:
        assert allocated(path) >= SIZE


# --- RawBackend.zero(allocate=True), including its fallbacks --------------------

@pytest.mark.parametrize("fallback", ["zero-range", "punch-allocate", "write"])
def test_raw_zero_allocate(fallback):
    d = scratch_dir()
    try:
        path = _full_file(d)
        with RawBackend(path, "r+") as b:
            if fallback != "zero-range":
                b._can_zero_range = False      # as on tmpfs or NFS
            if fallback == "write":
                b._can_allocate = False
            b.zero(4096 + 100, MiB)            # unaligned start and end
            b.zero(SIZE - 4096, 2 * MiB, allocate=True)   # grows the file
            b.zero(4096 + 100, MiB, allocate=True)
            assert b.size == SIZE - 4096 + 2 * MiB
            assert b.read(4096 + 100, MiB) == bytes(MiB)
            assert b.read(SIZE - 4096, 2 * MiB) == bytes(2 * MiB)
            b.flush()
        assert allocated(path) >= SIZE - 4096 + 2 * MiB
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- other operations on a preallocated disk ------------------------------------

@pytest.mark.slow
def test_copy_and_resize_keep_preallocation(tmp_path):
    def call(method: str, path: str, body: str) -> ET.Element:
        status, _, reply = api_request(eng, method, path, body,
                                       {"Content-Type": "application/xml"})
        assert status in (200, 201), reply
        return ET.fromstring(reply)

    def volume(disk: ET.Element) -> str:
        sd = disk.find("storage_domains/storage_domain").get("id")
        return os.path.join(eng.data_dir, sd, "images", disk.get("id"),
                            disk.findtext("image_id"))

    eng = LocalEngine(str(tmp_path), password=ENGINE_PASSWORD)
    eng.start()
    try:
        disk = call("POST", "disks",
                    f"<disk><name>full</name><format>raw</format><sparse>false</sparse>"
                    f"<provisioned_size>{SIZE}</provisioned_size><storage_domains>"
                    "<storage_domain><name>data</name></storage_domain></storage_domains></disk>")
        vol = volume(disk)
        with open(vol, "r+b") as f:     # some data, so the copy has something to copy
            f.write(b"x" * 4096)
        assert allocated(vol) >= SIZE

        copy = call("POST", f"disks/{disk.get('id')}/copy",
                    "<action><storage_domain><name>data</name></storage_domain>"
                    "<disk><name>full-copy</name></disk></action>").find("disk")
        copy_vol = volume(copy)
        assert allocated(copy_vol) >= SIZE
        assert images_equal(vol, copy_vol, "raw", "raw")
        assert int(copy.findtext("actual_size")) >= SIZE

        grown = call("PUT", f"disks/{disk.get('id')}",
                     f"<disk><provisioned_size>{SIZE + MiB}</provisioned_size></disk>")
        assert int(grown.findtext("provisioned_size")) == SIZE + MiB
        assert os.path.getsize(vol) == SIZE + MiB
        assert allocated(vol) >= SIZE + MiB
    finally:
        eng.stop()
