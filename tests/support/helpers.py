"""Small helpers shared by the tests: sizes, qemu tools, image files, waiting,
raw requests to the local engine, and the fault-proxied local engine.

Pytest fixtures live in ``tests/conftest.py``; the larger test doubles have
modules of their own (``fake_engine``, ``fake_transfer_engine``,
``fake_backends``, ``fault_proxy``, ``imageio_daemon``).

Expected results come from qemu's own tools (qemu-img, qemu-io), never from
the code under test.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import signal
import ssl
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from imagetool.iocore.backend import Extent, merge_extents

KiB = 1 << 10
MiB = 1 << 20

# Password of the module-scoped local engine (the ``engine`` fixture).
ENGINE_PASSWORD = "test-secret"
# Password of the local engine behind the fault proxy (``faulty_engine``).
FAULT_PASSWORD = "fault-secret-4711"
# Transfer phases after which nothing changes any more.
TERMINAL = ("finished_success", "finished_failure", "cancelled")


# --- commands and qemu -------------------------------------------------------

def find_tool(name: str) -> str | None:
    """A peer's executable: next to ``sys.executable`` first (the venv's
    bin/, which an unactivated venv leaves off PATH), then on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which(name)


# Debian's qemu-utils: the judge of most image tests.
QEMU_TOOLS = ("qemu-img", "qemu-io", "qemu-nbd")


def missing_qemu_tools() -> list[str]:
    return [t for t in QEMU_TOOLS if find_tool(t) is None]


def run(*cmd: Any, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output when ``check`` and it fails."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))}: rc={p.returncode} "
                             f"{p.stderr or p.stdout}")
    return p


def qemu_img(*args: Any) -> str:
    """Run qemu-img; return its stdout; fail the test with stderr on error."""
    return run("qemu-img", *args).stdout


def qemu_img_json(*args: Any) -> dict:
    """``qemu-img ARGS --output json``, parsed."""
    return json.loads(run("qemu-img", *args, "--output", "json").stdout)


def qemu_img_create_encrypted(*args: str) -> str:
    """qemu-img create for LUKS key material, retried: its PBKDF timing probe
    can fail with "Unable to get accurate CPU usage" on a loaded machine."""
    for attempt in range(5):
        try:
            return qemu_img("create", *args)
        except AssertionError as e:
            if "accurate CPU usage" not in str(e) or attempt == 4:
                raise
    raise AssertionError("unreachable")


def qemu_io(path, *commands: str, fmt: str = "qcow2") -> None:
    """Run qemu-io commands (e.g. "write -P 0xaa 0 64k") on an image."""
    args = ["qemu-io", "-f", fmt]
    for c in commands:
        args += ["-c", c]
    out = run(*args, path).stdout
    assert "error" not in out.lower() and "failed" not in out.lower(), f"qemu-io: {out}"


def qemu_info(path) -> dict:
    """``qemu-img info --output json``, parsed."""
    return json.loads(qemu_img("info", "--output", "json", str(path)))


def qemu_check(path) -> dict:
    """``qemu-img check --output json``; asserts there are no errors at all."""
    p = run("qemu-img", "check", "--output", "json", path, check=False)
    result = json.loads(p.stdout) if p.stdout.strip() else {}
    assert p.returncode == 0, f"qemu-img check {path}: rc={p.returncode} {p.stdout}{p.stderr}"
    assert result.get("check-errors", 0) == 0, result
    assert result.get("corruptions", 0) == 0, result
    return result


def qemu_compare(a, b, fmt_a: str | None = None, fmt_b: str | None = None) -> None:
    """Assert qemu-img compare finds the two images' guest data identical."""
    args = ["qemu-img", "compare"]
    if fmt_a:
        args += ["-f", fmt_a]
    if fmt_b:
        args += ["-F", fmt_b]
    p = run(*args, a, b, check=False)
    assert p.returncode == 0, f"qemu-img compare {a} {b}: {p.stdout}{p.stderr}"


def images_equal(a, b, fmt_a: str | None = None, fmt_b: str | None = None) -> bool:
    """qemu-img compare; True when guest data and virtual sizes match."""
    args = ["compare"]
    if fmt_a:
        args += ["-f", fmt_a]
    if fmt_b:
        args += ["-F", fmt_b]
    p = run("qemu-img", *args, a, b, check=False)
    if p.returncode not in (0, 1):
        raise AssertionError(p.stderr)
    sizes = [_virtual_size(x, f) for x, f in ((a, fmt_a), (b, fmt_b))]
    return p.returncode == 0 and sizes[0] == sizes[1]


def _virtual_size(path, fmt) -> int:
    args = ["info", "--output=json"] + (["-f", fmt] if fmt else []) + [str(path)]
    return json.loads(qemu_img(*args))["virtual-size"]


def same_image(a: str, b: str, fmt_a: str = "raw", fmt_b: str = "raw") -> bool:
    """qemu-img compare (strict sizes): True when guest data is identical."""
    p = run("qemu-img", "compare", "-s", "-f", fmt_a, "-F", fmt_b, a, b, check=False)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode == 0


def qemu_raw_bytes(path, tmp_path, opts: str | None = None) -> bytes:
    """Guest bytes as ``qemu-img convert -O raw`` sees them.

    ``opts``: a json: filename (e.g. to drop the backing file) instead of path.
    """
    out = tmp_path / f"qemu-{os.path.basename(str(path))}.raw"
    src = opts or str(path)
    qemu_img("convert", "-O", "raw", src, str(out))
    with open(out, "rb") as f:
        data = f.read()
    out.unlink()
    return data


def shallow_json(path) -> str:
    """A qemu json: filename opening a qcow2 layer without its backing file."""
    return "json:" + json.dumps({
        "driver": "qcow2", "backing": None,
        "file": {"driver": "file", "filename": str(path)}})


def qemu_map(path_or_json: str) -> list[dict]:
    """``qemu-img map --output json``, parsed."""
    return json.loads(qemu_img("map", "--output", "json", str(path_or_json)))


def _boundaries(*lists) -> list[int]:
    pts: set[int] = set()
    for lst in lists:
        for e in lst:
            pts.add(e[0])
            pts.add(e[0] + e[1])
    return sorted(pts)


def assert_extents_match_qemu(ours: list[Extent], qmap: list[dict],
                              size: int, check_hole: bool = True) -> None:
    """Our zero flag must equal qemu's "not data" everywhere; hole = not present."""
    assert ours, "no extents"
    assert ours[0].start == 0 and ours[-1].end == size
    for a, b in zip(ours, ours[1:]):
        assert a.end == b.start, (a, b)
        assert (a.zero, a.hole) != (b.zero, b.hole), f"not merged: {a} {b}"
    q = [(m["start"], m["length"], m) for m in qmap]
    o = [(e.start, e.length, e) for e in ours]
    for p in _boundaries(q, o)[:-1]:
        qm = next(m for s, n, m in q if s <= p < s + n)
        oe = next(e for s, n, e in o if s <= p < s + n)
        assert oe.zero == (not qm["data"]), f"at {p}: ours {oe} qemu {qm}"
        if check_hole:
            assert oe.hole == (not qm["present"]), f"at {p}: ours {oe} qemu {qm}"


# --- image files -------------------------------------------------------------

def make_raw(path, size: int, data_ranges, seed: int = 0) -> None:
    """A sparse raw file of ``size`` with random bytes in ``data_ranges``
    (a list of (start, length)); the rest are holes."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for start, length in data_ranges:
            f.seek(start)
            f.write(rnd.randbytes(length))


def make_random_raw(path: str, size: int, seed: int = 1, every: int = 1) -> str:
    """A raw image with random data in every ``every``-th MiB (the rest holes);
    return ``path``."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, every * MiB):
            f.seek(off)
            f.write(rnd.randbytes(min(MiB, size - off)))
    return path


def make_pattern_image(path: str, fmt: str, size: int = 4 * MiB) -> str:
    """An image with data, a zero run and holes (patterns written by qemu-io);
    return ``path``."""
    qemu_img("create", "-f", fmt, path, str(size))
    qemu_io(path, "write -P 0x61 0 64k", "write -P 0x62 1M 128k",
            "write -z 2M 64k", f"write -P 0x63 {size - 65536} 64k", fmt=fmt)
    return path


def write_raw(path, data: bytes | bytearray, holes: bool = True) -> None:
    """Write ``data`` as a raw file, leaving 64 KiB runs of zeros as holes."""
    with open(path, "wb") as f:
        f.truncate(len(data))
        step = 64 * KiB
        zero = bytes(step)
        for off in range(0, len(data), step):
            chunk = data[off:off + step]
            if holes and chunk == zero[:len(chunk)]:
                continue
            f.seek(off)
            f.write(chunk)


def random_image(size: int, seed: int, fill: float = 0.5,
                 max_run: int = 300 * KiB) -> bytearray:
    """Guest data: random runs (random bytes or a repeated byte) and zeros."""
    rnd = random.Random(seed)
    data = bytearray(size)
    pos = 0
    while pos < size:
        n = min(rnd.randrange(1, max_run), size - pos)
        if rnd.random() < fill:
            data[pos:pos + n] = (rnd.randbytes(n) if rnd.random() < 0.6
                                 else bytes([rnd.randrange(1, 256)]) * n)
        pos += n
    return data


def extents_of(data: bytes | bytearray, granularity: int = 4 * KiB) -> list[Extent]:
    """Zero extents for all-zero ``granularity`` runs, data elsewhere."""
    exts = []
    zero = bytes(granularity)
    for off in range(0, len(data), granularity):
        chunk = data[off:off + granularity]
        is_zero = chunk == zero[:len(chunk)]
        exts.append(Extent(off, len(chunk), zero=is_zero, hole=is_zero))
    return list(merge_extents(exts))


def no_partial_files(directory: str, final: str) -> list[str]:
    """Files in ``directory`` that look like the final name or a temporary of it."""
    base = os.path.basename(final)
    return [n for n in os.listdir(directory) if n == base or n.startswith(base)
            or n.startswith("." + base)]


# --- waiting -----------------------------------------------------------------

def sigint_after(monkeypatch, service: Any, name: str = "add") -> None:
    """Make ``service.name`` do its request, then send this process a real
    SIGINT: a Ctrl-C landing while the request is in flight (the engine
    did it, its answer is not back yet)."""
    real = getattr(service, name)

    def call(*a: Any, **kw: Any) -> Any:
        made = real(*a, **kw)
        os.kill(os.getpid(), signal.SIGINT)
        return made
    monkeypatch.setattr(service, name, call)



def sigint_at_thread_start(monkeypatch, k: int | None = None) -> list[str]:
    """Count the threads the main thread starts (their names, in the list
    returned, which grows); as the ``k``-th one is started, send this
    process a real SIGINT: a Ctrl-C landing while a worker starts (its
    ``Thread.start`` waits for it to run), the thread running on."""
    import threading
    real = threading.Thread.start
    started: list[str] = []

    def start(self: Any) -> None:
        real(self)
        if threading.current_thread() is threading.main_thread():
            started.append(self.name)
            if len(started) == k:
                os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(threading.Thread, "start", start)
    return started

def wait_for(fn, predicate, timeout: float = 20.0, interval: float = 0.05):
    """Call ``fn`` until ``predicate(result)``; return the result or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last value: {value!r}")
        time.sleep(interval)


def wait_phase(connection, transfer_id, phases, timeout: float = 20.0):
    """Poll an image transfer (through an ovirtsdk4 connection) until its
    phase is one of ``phases``."""
    service = connection.system_service().image_transfers_service().image_transfer_service(
        transfer_id)
    wanted = {p if isinstance(p, str) else p.value for p in phases}
    return wait_for(service.get, lambda t: t.phase.value in wanted, timeout)


# --- raw requests to the local engine ------------------------------------------

def api_request(engine, method: str, path: str, body: bytes | str | None = None,
                headers: dict | None = None, auth: bool = True) -> tuple[int, dict, bytes]:
    """A raw HTTPS request to the engine (path relative to the API root if not absolute)."""
    parts = urlsplit(engine.url)
    if not path.startswith("/"):
        path = parts.path + "/" + path
    ctx = ssl.create_default_context(cafile=engine.cafile)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=30)
    hdrs = dict(headers or {})
    if auth:
        cred = base64.b64encode(f"admin@internal:{ENGINE_PASSWORD}".encode()).decode()
        hdrs.setdefault("Authorization", f"Basic {cred}")
    if isinstance(body, str):
        body = body.encode()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def api_json(engine, method: str, path: str, doc: dict | None = None) -> tuple[int, dict]:
    """A JSON request/response to the engine API."""
    status, _, body = api_request(engine, method, path,
                                  json.dumps(doc) if doc is not None else None,
                                  {"Accept": "application/json",
                                   "Content-Type": "application/json"})
    return status, (json.loads(body) if body else {})


def put_file(url: str, cafile: str, path: str, chunk: int = 1 * MiB) -> None:
    """Upload a file's own bytes to a transfer URL with imageio PUTs."""
    parts = urlsplit(url)
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=30)
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            offset = 0
            while offset < size:
                data = f.read(chunk)
                conn.request("PUT", parts.path + "?flush=n", body=data, headers={
                    "Content-Range": f"bytes {offset}-{offset + len(data) - 1}/*",
                    "Content-Length": str(len(data))})
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200, (resp.status, offset)
                offset += len(data)
        conn.request("PATCH", parts.path, body=json.dumps({"op": "flush"}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    finally:
        conn.close()


def get_file(url: str, cafile: str, path: str) -> None:
    """Download a transfer URL's bytes as they are (one GET)."""
    parts = urlsplit(url)
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=30)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, resp.status
    finally:
        conn.close()
    with open(path, "wb") as f:
        f.write(data)


# --- the CLI as a child process ----------------------------------------------

def cli_process(env: dict[str, str], *argv: str, **kw: Any) -> subprocess.Popen:
    """``python -m imagetool argv`` as a child process with ``env`` added."""
    full = dict(os.environ)
    full.update(env)
    return subprocess.Popen([sys.executable, "-m", "imagetool", *map(str, argv)],
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def run_on_pty(argv, env, cwd) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal; (exit code, what it drew)."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "imagetool", *argv], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:         # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    return proc.wait(60), drawn.decode(errors="replace")


# this file is tests/support/helpers.py: the checkout is two floors up
SUPPORT = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(SUPPORT))
# run as ``python HARNESS ARGS...``: the CLI with a slowed, counting client
HARNESS = os.path.join(SUPPORT, "resume_harness.py")


def cli_env(tmp_path: Any, **extra: str) -> dict[str, str]:
    """The environment of a CLI child process on its own: no IMAGETOOL_*
    settings from the machine, the data dir ``tmp_path/engine``, its own
    runtime and config dirs (where serves register and configs live), this
    checkout first on PYTHONPATH; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
    env.update(IMAGETOOL_HOME=os.path.join(tmp_path, "engine"),
               XDG_RUNTIME_DIR=os.path.join(tmp_path, "run"),
               XDG_CONFIG_HOME=os.path.join(tmp_path, "xdg"),
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def run_cli(env: dict[str, str], *argv: Any, cwd: Any = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m imagetool argv`` to the end; output captured as text."""
    return subprocess.run([sys.executable, "-m", "imagetool", *map(str, argv)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


@contextmanager
def serve_process(env: dict[str, str], *args: Any, until: str = "other imagetool commands"):
    """``imagetool serve args`` in the background, yielded (with ``.lines``,
    what it printed) once it printed a line starting with ``until``;
    stopped with SIGTERM at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "imagetool", "serve", *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        proc.lines = []
        deadline = time.monotonic() + 30
        while not proc.lines or not proc.lines[-1].startswith(until):
            line = proc.stdout.readline()
            assert line, "serve exited"
            assert time.monotonic() < deadline, "serve did not start"
            proc.lines.append(line.rstrip("\n"))
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


# --- the local engine behind a fault proxy -------------------------------------
#
# ``faulty_engine`` (conftest.py): a TLS LocalEngine on loopback whose
# transfers hand out the URL of a FaultProxy standing in front of the data
# plane (through ``EngineServer.advertised_dataplane_url``), so every
# data-plane request of the client passes the proxy's rules.

@dataclass
class FaultyEngine:
    """The engine, the proxy in front of its data plane, and the env for the CLI."""
    engine: Any                 # imagetool.server.local.LocalEngine
    proxy: Any                  # fault_proxy.FaultProxy
    env: dict[str, str]
    known: set[str] = field(default_factory=set)   # transfers from before this test

    def connect(self):
        """A fresh API connection (an imagetool.engine.Connection; close it)."""
        from imagetool.engine import Connection
        from imagetool.server.local import LocalEngine

        return Connection(self.engine.url, username=LocalEngine.username,
                          password=FAULT_PASSWORD, cafile=self.engine.cafile)


def engine_cli_env(engine: Any, password: str, home: Any) -> dict[str, str]:
    """The IMAGETOOL_* settings that point the CLI at the LocalEngine
    ``engine`` (its TLS verified with the engine's CA), with the client
    home ``home``."""
    from imagetool.server.local import LocalEngine

    return {"IMAGETOOL_ENGINE_URL": engine.url, "IMAGETOOL_USERNAME": LocalEngine.username,
            "IMAGETOOL_PASSWORD": password, "IMAGETOOL_CAFILE": engine.cafile,
            "IMAGETOOL_HOME": str(home)}


def use_cli_env(monkeypatch: Any, settings: dict[str, str]) -> None:
    """Make ``settings`` the only IMAGETOOL_* variables of the test's
    environment: none from the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.startswith("IMAGETOOL_"):
            monkeypatch.delenv(name)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)


def start_faulty_engine(data_dir: str, **options: Any) -> FaultyEngine:
    """Start a LocalEngine and a TLS FaultProxy in front of its data plane."""
    from fault_proxy import FaultProxy, ProxyTls
    from imagetool.server.local import LocalEngine

    eng = LocalEngine(data_dir, password=FAULT_PASSWORD, finished_ttl=120.0,
                      **options).start()
    pki = eng.server.pki
    proxy = FaultProxy(("127.0.0.1", eng.server.dataplane_port),
                       ProxyTls(cert_file=pki.cert_file, key_file=pki.key_file,
                                upstream_tls=True, upstream_cafile=pki.ca_file)).start()
    eng.server.advertised_dataplane_url = proxy.url_for()
    env = engine_cli_env(eng, FAULT_PASSWORD, os.path.join(data_dir, "client-home"))
    return FaultyEngine(eng, proxy, env)


def stop_faulty_engine(fe: FaultyEngine) -> None:
    """Stop the proxy, then the engine."""
    fe.proxy.stop()
    fe.engine.stop()


def disks_named(fe: FaultyEngine, name: str) -> list[Any]:
    """The engine's disks called ``name``."""
    with fe.connect() as conn:
        return [d for d in conn.disks.list() if d.name == name]


def transfers_of(fe: FaultyEngine, disk_id: str | None = None) -> list[Any]:
    """The engine's transfers (of ``disk_id`` when given)."""
    with fe.connect() as conn:
        return [t for t in conn.transfers.list() if disk_id is None or t.disk_id == disk_id]


def wait_settled(fe: FaultyEngine, timeout: float = 20.0) -> list[Any]:
    """Wait until no transfer is in a non-terminal phase and no disk is locked;
    return the transfers. Fails the test if that does not happen."""
    deadline = time.monotonic() + timeout
    while True:
        with fe.connect() as conn:
            ts = conn.transfers.list()
            locked = [d.name for d in conn.disks.list() if d.status == "locked"]
        busy = [t.phase for t in ts if t.phase not in TERMINAL]
        if not busy and not locked:
            return ts
        if time.monotonic() > deadline:
            raise AssertionError(f"engine not settled: phases {busy}, locked disks {locked}")
        time.sleep(0.1)


def new_phases(fe: FaultyEngine, timeout: float = 20.0) -> list[str]:
    """Once the engine settled: the sorted phases of this test's transfers."""
    return sorted(t.phase for t in wait_settled(fe, timeout) if t.id not in fe.known)


# --- ImageTransfers through the real ovirtsdk4 (server tests) ------------------

def sdk_start_transfer(connection, direction, disk_id=None, snapshot_id=None, host=None):
    """An ImageTransfer added with ovirtsdk4, once it is transferring."""
    from ovirtsdk4 import types
    service = connection.system_service().image_transfers_service()
    t = service.add(types.ImageTransfer(
        disk=types.Disk(id=disk_id) if disk_id else None,
        snapshot=types.DiskSnapshot(id=snapshot_id) if snapshot_id else None,
        host=host, direction=types.ImageTransferDirection(direction),
        format=types.DiskFormat.RAW))
    return wait_phase(connection, t.id, ["transferring"])


def sdk_finalize(connection, t):
    """Finalize a transfer and assert it ends in finished_success."""
    from ovirtsdk4 import types
    connection.system_service().image_transfers_service().image_transfer_service(t.id).finalize()
    t = wait_phase(connection, t.id, ["finished_success", "finished_failure"])
    assert t.phase == types.ImageTransferPhase.FINISHED_SUCCESS


def sdk_download(connection, engine, dst, disk_id=None, snapshot_id=None):
    """A disk (or disk snapshot) downloaded as qcow2 by the reference client."""
    from ovirt_imageio import client
    t = sdk_start_transfer(connection, "download", disk_id, snapshot_id)
    client.download(t.transfer_url, dst, engine.cafile, fmt="qcow2")
    sdk_finalize(connection, t)
    return dst


@contextmanager
def sdk_vm_with_disk(connection, engine, tmp_path, prefix: str):
    """A VM made with ovirtsdk4, its one disk a 4 MiB qcow2 uploaded by the
    reference client (``make_pattern_image``); yields (vm, vm_service, disk,
    source image) and removes the VM and its disk afterwards. ``prefix``
    starts the VM's and the disk's names."""
    import ovirtsdk4 as sdk
    from ovirt_imageio import client
    from ovirtsdk4 import types

    system = connection.system_service()
    src = make_pattern_image(str(tmp_path / "a.qcow2"), "qcow2")
    disk = system.disks_service().add(types.Disk(
        name=f"{prefix}d-{tmp_path.name}"[:50], format=types.DiskFormat.COW,
        provisioned_size=4 * MiB, storage_domains=[types.StorageDomain(name="data")]))
    t = sdk_start_transfer(connection, "upload", disk.id)
    client.upload(src, t.transfer_url, engine.cafile)
    sdk_finalize(connection, t)
    vm = system.vms_service().add(types.Vm(name=f"{prefix}vm-{tmp_path.name}"[:50],
                                           cluster=types.Cluster(name="Default")))
    vm_service = system.vms_service().vm_service(vm.id)
    vm_service.disk_attachments_service().add(types.DiskAttachment(
        disk=types.Disk(id=disk.id), interface=types.DiskInterface.VIRTIO_SCSI,
        bootable=True, active=True))
    try:
        yield vm, vm_service, disk, src
    finally:
        try:
            vm_service.remove()
        except sdk.Error:
            pass


# --- the ovirt-engine-sdk-python examples ----------------------------------------

SDK_SDIST = "ovirt-engine-sdk-python"


def sdk_examples_dir() -> str | None:
    """The ``examples/`` directory of the installed SDK version's sdist, or None.

    The examples are never kept in this repository: pip fetches the sdist
    into a cache ($IMAGETOOL_SDK_CACHE, else ``~/.cache/imagetool-tests``)
    once. A file lock makes parallel test workers (pytest -n) wait for the
    one that fetches, and the directory appears under its final name only
    when fully extracted. None (with the reason in ``sdk_examples_dir.why``)
    when pip cannot fetch it.
    """
    import fcntl
    import glob
    import shutil
    import tarfile
    import tempfile
    from ovirtsdk4.version import VERSION
    cache = os.environ.get("IMAGETOOL_SDK_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "imagetool-tests")
    os.makedirs(cache, exist_ok=True)
    final = os.path.join(cache, f"sdk-{VERSION}-examples")
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(final):
            return final
        pattern = os.path.join(cache, f"ovirt*engine*sdk*python-{VERSION}.tar.gz")
        if not glob.glob(pattern):
            res = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--disable-pip-version-check", f"{SDK_SDIST}=={VERSION}", "-d", cache],
                capture_output=True, text=True, timeout=300)
            if res.returncode != 0 or not glob.glob(pattern):
                sdk_examples_dir.why = (f"pip cannot fetch the {SDK_SDIST} {VERSION} sdist: "
                                        f"{(res.stderr or res.stdout).strip()[-300:]}")
                return None
        tmp = tempfile.mkdtemp(dir=cache, prefix=".extract-")
        try:
            with tarfile.open(glob.glob(pattern)[0]) as tar:
                members = [m for m in tar.getmembers()
                           if "/examples/" in m.name and m.isreg() and ".." not in m.name]
                tar.extractall(tmp, members=members, filter="data")
            found = glob.glob(os.path.join(tmp, "*", "examples"))
            assert found, "the sdist has no examples/ directory"
            os.rename(found[0], final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


# --- proving a file was never read ----------------------------------------------

class OpenWatch:
    """Counts every open and read of some files (Linux inotify ``IN_OPEN`` and
    ``IN_ACCESS`` on their inodes, so an open through a symbolic or hard link
    counts too): a test proves a host file it planted was never read.
    Use as a context manager; ``touched()`` is the number of events so far."""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, *paths: str) -> None:
        import ctypes
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        for p in paths:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(p),
                                              self.IN_ACCESS | self.IN_OPEN)
            assert wd >= 0, f"{p}: {os.strerror(ctypes.get_errno())}"
        self.count = 0

    def touched(self) -> int:
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return self.count
            pos = 0
            while pos < len(buf):
                name_len = int.from_bytes(buf[pos + 12:pos + 16], sys.byteorder)
                self.count += 1
                pos += 16 + name_len

    def __enter__(self) -> "OpenWatch":
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)
