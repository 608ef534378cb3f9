"""Shared fixtures for the local engine's tests (tests/test_server_*.py).

Import the fixtures you use into a test module:
``from server_fixtures import engine, connection, ...``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import time
from urllib.parse import urlsplit

import pytest

from imagetool.server.local import LocalEngine

PASSWORD = "test-secret"
MiB = 1 << 20


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A TLS LocalEngine on ephemeral loopback ports for the whole module."""
    data_dir = tmp_path_factory.mktemp("engine")
    eng = LocalEngine(str(data_dir), password=PASSWORD, finished_ttl=60.0)
    eng.start()
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture
def conn(engine):
    """imagetool's own engine Connection to ``engine`` (TLS verified)."""
    from imagetool.engine import Connection

    with Connection(engine.url, username=LocalEngine.username, password=PASSWORD,
                    cafile=engine.cafile) as c:
        yield c


@pytest.fixture(scope="module")
def connection(engine):
    """A real ovirtsdk4 connection to the engine, verifying TLS with its CA."""
    sdk = pytest.importorskip("ovirtsdk4")
    con = sdk.Connection(url=engine.url, username="admin@internal", password=PASSWORD,
                         ca_file=engine.cafile)
    try:
        yield con
    finally:
        con.close()


def wait_for(fn, predicate, timeout=20.0, interval=0.05):
    """Call ``fn`` until ``predicate(result)``; return the result or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last value: {value!r}")
        time.sleep(interval)


def wait_phase(connection, transfer_id, phases, timeout=20.0):
    """Poll an image transfer until its phase is one of ``phases``."""
    service = connection.system_service().image_transfers_service().image_transfer_service(
        transfer_id)
    wanted = {p if isinstance(p, str) else p.value for p in phases}
    return wait_for(service.get, lambda t: t.phase.value in wanted, timeout)


def qemu_img(*args: str) -> str:
    """Run qemu-img; return stdout (fails the test on error)."""
    res = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


def qemu_io(path: str, fmt: str, *commands: str) -> None:
    """Write test patterns with qemu-io."""
    args = ["qemu-io", "-f", fmt]
    for c in commands:
        args += ["-c", c]
    res = subprocess.run([*args, path], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def make_image(path: str, fmt: str, size: int = 4 * MiB) -> str:
    """An image with data, a zero run and holes (patterns written by qemu-io)."""
    qemu_img("create", "-f", fmt, path, str(size))
    qemu_io(path, fmt, "write -P 0x61 0 64k", "write -P 0x62 1M 128k",
            "write -z 2M 64k", f"write -P 0x63 {size - 65536} 64k")
    return path


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
        cred = base64.b64encode(f"admin@internal:{PASSWORD}".encode()).decode()
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
