"""``imagetool backup serve --nbd``: a point's disks over NBD, checked with
real NBD clients (qemu-img, qemu-io) and with hostile ones speaking the
protocol by hand (imagetool.nbd)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from helpers import MiB, cli_env, find_tool, make_raw, run
from test_store_cli import add_point

from imagetool.nbd import Export, NbdServer
from imagetool.nbd import protocol as nbd
from imagetool.backup.store import ChunkStore, open_storage
from imagetool.formats import open_image

pytestmark = pytest.mark.skipif(find_tool("qemu-io") is None, reason="qemu-io is not installed")


def nbd_url(sock, export=""):
    return f"nbd+unix:///{export}?socket={sock}"


@pytest.fixture
def served(tmp_path):
    """A point of two disks served by ``imagetool backup serve`` in a child
    process: (socket path, {disk id: raw file}, process)."""
    repo = str(tmp_path / "r")
    os1, data = str(tmp_path / "os.raw"), str(tmp_path / "data.raw")
    make_raw(os1, 9 * MiB + 4096, [(0, 2 * MiB), (5 * MiB, 3 * MiB)], seed=11)
    with open(os1, "r+b") as f:            # a known pattern for qemu-io to check
        f.seek(5 * MiB)
        f.write(b"\x5a" * MiB)
    make_raw(data, 3 * MiB, [(MiB, MiB)], seed=12)
    env = cli_env(tmp_path)
    ChunkStore.init(open_storage(repo, create=True), chunk_size=MiB)
    target = type("T", (), {"url": repo, "endpoint": None})()
    add_point(target, "vm1", {"os": os1, "data": data})
    sock = str(tmp_path / "nbd.sock")
    proc = subprocess.Popen([sys.executable, "-m", "imagetool", "backup", "serve", repo, "vm1",
                             "--nbd", sock], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline() for _ in range(3)]
    assert lines[0].startswith("serving VM vm1 point "), (lines, proc.stderr.read())
    assert lines[1].split() == ["os", "9.00", "MiB", nbd_url(sock, "os"), "(default", "export)"]
    yield sock, {"os": os1, "data": data}, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_qemu_reads_every_disk_and_ctrl_c_removes_the_socket(served):
    sock, disks, proc = served
    for disk_id, path in disks.items():
        run("qemu-img", "compare", "-f", "raw", "-F", "raw", nbd_url(sock, disk_id), path)
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", nbd_url(sock), disks["os"])
    info = json.loads(run("qemu-img", "info", "--output", "json", nbd_url(sock, "data")).stdout)
    assert info["virtual-size"] == 3 * MiB
    out = run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 5M 1M", "-c",
              "read -P 0 2M 3M", nbd_url(sock, "os")).stdout
    assert "read 1048576/1048576 bytes at offset 5242880" in out
    assert "read 3145728/3145728 bytes at offset 2097152" in out
    assert "Pattern verification failed" not in out
    # Block status: the zero chunks are zero extents.
    mapped = json.loads(run("qemu-img", "map", "--output", "json", "-f", "raw",
                            nbd_url(sock, "os")).stdout)
    zeros = [(m["start"], m["length"]) for m in mapped if m["zero"]]
    assert (2 * MiB, 3 * MiB) in zeros and all(not m["zero"] for m in mapped
                                                if m["start"] < 2 * MiB)
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert "imagetool: stopped" in proc.stderr.read()
    assert not os.path.exists(sock)


def test_qemu_img_convert_from_the_socket_writes_the_disk(served, tmp_path):
    sock, disks, _ = served
    out = str(tmp_path / "copy.qcow2")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", nbd_url(sock, "data"), out)
    run("qemu-img", "compare", "-F", "raw", out, disks["data"])


@pytest.mark.slow
def test_a_qcow2_chain_repository_is_served_too_and_sigterm_stops(tmp_path):
    from backup_helpers import add_point as add_old_point
    from backup_helpers import point_bytes, rand
    old = str(tmp_path / "old")
    a = rand(3 * MiB, 4)
    add_old_point(old, "vm1", {"d": (a, None)})
    p2 = add_old_point(old, "vm1", {"d": (a[:MiB] + bytes(MiB) + a[2 * MiB:], a)})
    want = tmp_path / "want.raw"
    want.write_bytes(point_bytes(old, "vm1", p2, "d"))
    sock = str(tmp_path / "s.sock")
    proc = subprocess.Popen([sys.executable, "-m", "imagetool", "backup", "serve", old, "vm1",
                             "--nbd", sock], env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == f"serving VM vm1 point {p2} on {sock} (read-only; " \
                                          "Ctrl-C stops)\n"
        run("qemu-img", "compare", "-f", "raw", "-F", "raw", nbd_url(sock, "d"), want)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not os.path.exists(sock)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_serve_from_a_directory_or_s3(target, tmp_path):
    """The same command on both storages (S3: a real Ceph RGW, slow)."""
    ChunkStore.init(target.open(), chunk_size=MiB)
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 5 * MiB, [(0, MiB), (3 * MiB, 2 * MiB)], seed=21)
    add_point(target, "vm1", {"d": raw})
    sock = str(tmp_path / "s.sock")
    extra = ["--endpoint", target.endpoint] if target.endpoint else []
    proc = subprocess.Popen([sys.executable, "-m", "imagetool", "backup", "serve", target.url,
                             "vm1", "--nbd", sock, *extra], env=cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("serving VM vm1 point "), proc.stderr.read()
        run("qemu-img", "compare", "-f", "raw", "-F", "raw", nbd_url(sock), raw)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0 and not os.path.exists(sock)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_socket_path_that_is_a_file(cli, tmp_path):
    repo = str(tmp_path / "r")
    raw = str(tmp_path / "d.raw")
    make_raw(raw, MiB, [(0, MiB)], seed=1)
    cli("backup", "init", repo)
    add_point(type("T", (), {"url": repo, "endpoint": None})(), "vm1", {"d": raw})
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    code, _, err = cli("backup", "serve", repo, "vm1", "--nbd", taken)
    assert (code, err) == (1, f"imagetool: error: {taken}: exists; give a new socket path\n")
    assert taken.read_text() == "keep me"


# --- hostile clients, against the server in this process --------------------------

@pytest.fixture
def server(tmp_path):
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 2 * MiB, [(0, MiB)], seed=3)
    backend = open_image(raw, "r", format="raw")
    path = str(tmp_path / "s.sock")
    srv = NbdServer(path, [Export("d", backend, "a disk")])
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield path, raw
    srv.shutdown()
    t.join(5)
    srv.close()
    backend.close()
    assert not os.path.exists(path)


def recvn(s, n):
    buf = b""
    while len(buf) < n:
        got = s.recv(n - len(buf))
        if not got:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += got
    return buf


def closed(s) -> bool:
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def hello(path, flags=3):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    magic, opt, hflags = struct.unpack(">QQH", recvn(s, 18))
    assert (magic, opt, hflags) == (nbd.NBDMAGIC, nbd.IHAVEOPT, 3)
    s.sendall(struct.pack(">I", flags))
    return s


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", nbd.IHAVEOPT, opt, len(data)) + data)
    replies = []
    while True:
        magic, o, kind, n = struct.unpack(">QIII", recvn(s, 20))
        assert (magic, o) == (nbd.REPLY_MAGIC, opt)
        replies.append((kind, recvn(s, n)))
        if kind == nbd.REP_ACK or kind & (1 << 31):
            return replies


def go(s, name=b"d"):
    return option(s, nbd.OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))


def request(s, cmd, offset, length, handle=7):
    s.sendall(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, cmd, handle, offset, length))


def simple_reply(s):
    magic, err, handle = struct.unpack(">IIQ", recvn(s, 16))
    assert magic == nbd.SIMPLE_REPLY_MAGIC
    return err, handle


def test_handshake_lists_exports_and_reads(server):
    path, raw = server
    s = hello(path)
    listed = option(s, nbd.OPT_LIST)
    assert listed[0] == (nbd.REP_SERVER, struct.pack(">I", 1) + b"d" + b"a disk")
    assert listed[-1][0] == nbd.REP_ACK
    assert go(s, b"nope")[-1][0] == nbd.REP_ERR_UNKNOWN       # and the client may retry
    replies = go(s)
    assert replies[0] == (nbd.REP_INFO, struct.pack(">HQH", 0, 2 * MiB,
                                                    nbd.TRANSMISSION_FLAGS))
    request(s, nbd.CMD_READ, MiB - 100, 200)
    assert simple_reply(s) == (0, 7)
    with open(raw, "rb") as f:
        f.seek(MiB - 100)
        assert recvn(s, 200) == f.read(200)
    request(s, nbd.CMD_DISC, 0, 0)
    assert closed(s)


@pytest.mark.parametrize("cmd,offset,length,err", [
    (nbd.CMD_READ, 0, 64 * MiB, nbd.EINVAL),              # past the end and oversized
    (nbd.CMD_READ, 2 * MiB - 10, 11, nbd.EINVAL),         # one byte past the end
    (nbd.CMD_READ, 2 ** 64 - 1, 1, nbd.EINVAL),           # offset that would wrap
    (nbd.CMD_READ, 0, 0, nbd.EINVAL),
    (nbd.CMD_TRIM, 0, 4096, nbd.EPERM),
    (nbd.CMD_FLUSH, 0, 0, nbd.EINVAL),
    (nbd.CMD_BLOCK_STATUS, 0, 4096, nbd.EINVAL),          # no context negotiated
    (99, 0, 4096, nbd.EINVAL),
])
def test_bad_requests_get_error_replies_and_the_connection_goes_on(server, cmd, offset,
                                                                   length, err):
    path, _ = server
    s = hello(path)
    go(s)
    request(s, cmd, offset, length, handle=42)
    assert simple_reply(s) == (err, 42)
    request(s, nbd.CMD_READ, 0, 16, handle=43)
    assert simple_reply(s) == (0, 43) and len(recvn(s, 16)) == 16


def test_oversized_read_within_the_export_is_eoverflow(tmp_path):
    raw = str(tmp_path / "big.raw")
    make_raw(raw, 40 * MiB, [(0, MiB)], seed=1)
    with open_image(raw, "r", format="raw") as b, \
            NbdServer(str(tmp_path / "s"), [Export("d", b)]) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        s = hello(srv.path)
        go(s)
        request(s, nbd.CMD_READ, 0, 33 * MiB)
        assert simple_reply(s) == (nbd.EOVERFLOW, 7)
        s.sendall(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, 0, nbd.CMD_WRITE, 8, 0, 3) + b"abc")
        assert simple_reply(s) == (nbd.EPERM, 8)
        srv.shutdown()


def test_hostile_handshakes_and_bad_magic_close_that_connection_only(server):
    path, raw = server
    s = hello(path, flags=0x80)                 # unknown client flag
    assert closed(s)
    s = hello(path)
    s.sendall(struct.pack(">QII", 0x1234, nbd.OPT_GO, 0))      # bad option magic
    assert closed(s)
    s = hello(path)
    s.sendall(struct.pack(">QII", nbd.IHAVEOPT, nbd.OPT_GO, 1 << 30))   # huge option
    assert closed(s)
    s = hello(path)
    assert option(s, nbd.OPT_GO, b"\xff\xff\xff\xff")[-1][0] == nbd.REP_ERR_INVALID
    assert option(s, nbd.OPT_STARTTLS)[-1][0] == nbd.REP_ERR_UNSUP
    assert option(s, nbd.OPT_SET_META_CONTEXT, struct.pack(">I", 1) + b"d"
                  + struct.pack(">I", 1) + struct.pack(">I", 15) + b"base:allocation"
                  )[-1][0] == nbd.REP_ERR_INVALID       # structured replies first
    go(s)
    s.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, nbd.CMD_READ, 1, 0, 512))
    assert closed(s)
    # The server still serves.
    s = hello(path)
    go(s)
    request(s, nbd.CMD_READ, 0, 512)
    assert simple_reply(s) == (0, 7)
    with open(raw, "rb") as f:
        assert recvn(s, 512) == f.read(512)
    s = hello(path)
    assert option(s, nbd.OPT_ABORT) == [(nbd.REP_ACK, b"")]
    assert closed(s)


def test_structured_reads_send_holes_and_block_status(server):
    path, raw = server
    s = hello(path)
    assert option(s, nbd.OPT_STRUCTURED_REPLY) == [(nbd.REP_ACK, b"")]
    ctx = option(s, nbd.OPT_SET_META_CONTEXT, struct.pack(">I", 1) + b"d" + struct.pack(
        ">I", 1) + struct.pack(">I", 15) + b"base:allocation")
    assert ctx[0] == (nbd.REP_META_CONTEXT, struct.pack(">I", 1) + b"base:allocation")
    go(s)
    request(s, nbd.CMD_READ, MiB - 8, 16)
    chunks = []
    while True:
        magic, flags, kind, handle, n = struct.unpack(">IHHQI", recvn(s, 20))
        assert (magic, handle) == (nbd.STRUCTURED_REPLY_MAGIC, 7)
        chunks.append((kind, recvn(s, n)))
        if flags & nbd.REPLY_FLAG_DONE:
            break
    with open(raw, "rb") as f:
        f.seek(MiB - 8)
        head = f.read(8)
    assert chunks == [(nbd.REPLY_TYPE_OFFSET_DATA, struct.pack(">Q", MiB - 8) + head),
                      (nbd.REPLY_TYPE_OFFSET_HOLE, struct.pack(">QI", MiB, 8))]
    request(s, nbd.CMD_BLOCK_STATUS, 0, 2 * MiB, handle=9)
    magic, flags, kind, handle, n = struct.unpack(">IHHQI", recvn(s, 20))
    assert (kind, handle, flags) == (nbd.REPLY_TYPE_BLOCK_STATUS, 9, nbd.REPLY_FLAG_DONE)
    assert recvn(s, n) == struct.pack(">IIIII", 1, MiB, 0, MiB, 3)
    request(s, nbd.CMD_READ, 0, 3 * MiB, handle=10)             # an error chunk
    magic, flags, kind, handle, n = struct.unpack(">IHHQI", recvn(s, 20))
    assert (kind, handle) == (nbd.REPLY_TYPE_ERROR, 10)
    assert struct.unpack(">I", recvn(s, n)[:4])[0] == nbd.EINVAL


@pytest.mark.slow
def test_too_many_connections_are_refused_not_queued(server, monkeypatch):
    path, _ = server
    held = [hello(path) for _ in range(nbd.MAX_CONNECTIONS)]
    time.sleep(0.3)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    assert closed(s)
    for h in held:
        h.close()
