"""Hostile input on the local engine's REST control plane, over TLS.

Each case drives a real EngineServer through raw sockets (``socket`` +
``ssl``: a client library would refuse to send much of this) and checks the
status, the fault's exact reason and detail, that no traceback or secret
is in the body, and that nothing outside the data directory changed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest

from imagetool.server.local import LocalEngine
from imagetool.server.validate import MAX_PROVISIONED_SIZE

PASSWORD = "hostile-secret-pw"
BASIC = "Basic " + base64.b64encode(f"admin@internal:{PASSWORD}".encode()).decode()
API = "/ovirt-engine/api"
UNKNOWN = "00000000-0000-0000-0000-00000000beef"


# --- harness ---------------------------------------------------------------------

def tree(root) -> set[str]:
    """Every path below ``root`` (names only)."""
    out = set()
    for base, dirs, files in os.walk(root):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(base, n), root))
    return out


class Box:
    """An engine whose data dir sits three levels below a watched parent."""

    def __init__(self, root, **options) -> None:
        self.root = str(root)
        self.data = os.path.join(self.root, "a", "b", "data")
        os.makedirs(os.path.dirname(self.data))
        self.eng = LocalEngine(self.data, password=PASSWORD, finished_ttl=60.0, **options)
        self.eng.start()
        parts = urlsplit(self.eng.url)
        self.host, self.port = parts.hostname, parts.port
        self.ctx = ssl.create_default_context(cafile=self.eng.cafile)
        self.secrets = [PASSWORD, BASIC.split()[1]]

    def outside(self) -> set[str]:
        return {p for p in tree(self.root) if not p.startswith(os.path.join("a", "b", "data"))}

    def connect(self, timeout: float = 20.0) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=timeout)
        return self.ctx.wrap_socket(raw, server_hostname=self.host)

    def raw(self, head: bytes, body: bytes = b"", timeout: float = 20.0):
        """Send bytes as they are; (status, headers, body) of the reply."""
        with self.connect(timeout) as s:
            s.sendall(head + body)
            resp = http.client.HTTPResponse(s)
            resp.begin()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def request(self, method: str, path: str, body: bytes | str = b"",
                ctype: str = "application/xml", auth: str | None = BASIC,
                extra: str = ""):
        if isinstance(body, str):
            body = body.encode()
        if not path.startswith("/"):
            path = f"{API}/{path}"
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if auth:
            head += f"Authorization: {auth}\r\n"
        if body:
            head += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        head += extra + "Connection: close\r\n\r\n"
        return self.raw(head.encode("utf-8"), body)

    def stop(self) -> None:
        self.eng.stop()


def fault(reply, box: Box) -> tuple[int, str, str]:
    """(status, reason, detail) of a fault reply, after the common checks."""
    status, headers, body = reply
    assert b"Traceback" not in body and b'File "' not in body
    for secret in box.secrets:
        assert secret.encode() not in body
    if "json" in headers.get("content-type", ""):
        doc = json.loads(body)
        return status, doc.get("reason"), doc.get("detail")
    root = ET.fromstring(body)
    assert root.tag == "fault", body
    return status, root.findtext("reason"), root.findtext("detail")


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    b = Box(tmp_path_factory.mktemp("hostile"), login_delay=0.3)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def guard(box):
    """Nothing outside the data dir changes; disk rows and dirs are counted."""
    before = box.outside()
    disks = disk_ids(box)
    yield
    assert box.outside() == before
    assert disk_ids(box) == disks


def disk_ids(box) -> list[str]:
    status, _, body = box.request("GET", "disks")
    assert status == 200
    return [d.get("id") for d in ET.fromstring(body).findall("disk")]


def disk_dirs(box) -> set[str]:
    out = set()
    for sd in os.listdir(box.data):
        images = os.path.join(box.data, sd, "images")
        if os.path.isdir(images):
            out |= {os.path.join(sd, d) for d in os.listdir(images)}
    return out


def disk_json(**fields) -> str:
    doc = {"name": "h", "format": "raw", "provisioned_size": 1 << 20,
           "storage_domains": {"storage_domain": [{"name": "data"}]}}
    doc.update(fields)
    return json.dumps(doc)


# --- 1. ids chosen by a client ----------------------------------------------------

@pytest.mark.parametrize("bad", ["../../../x", "ABSOLUTE", ".", "..", "a\x00b",
                                 "12345678123412341234123456789012----"])
def test_post_disk_with_non_uuid_id_is_400_and_creates_nothing(box, guard, bad):
    if bad == "ABSOLUTE":   # a path in the watched parent, not in the data dir
        bad = os.path.join(box.root, "abs")
    dirs = disk_dirs(box)
    status, reason, detail = fault(box.request("POST", "disks", disk_json(id=bad),
                                               "application/json"), box)
    assert (status, reason) == (400, "Invalid id")
    assert detail == f"Invalid disk id {ascii(bad)}: ids are UUIDs"
    assert disk_dirs(box) == dirs


@pytest.mark.parametrize("method,path,label,bad", [
    ("DELETE", "disks/.", "disk", "."), ("DELETE", "disks/..", "disk", ".."),
    ("GET", "disks/%00", "disk", "%00"), ("GET", "vms/..", "VM", ".."),
    ("POST", "imagetransfers/../cancel", "image transfer", ".."),
    ("GET", "storagedomains/x/disks", "storage domain", "x"),
    ("DELETE", f"vms/{UNKNOWN}/snapshots/..", "snapshot", ".."),
    ("GET", "jobs/1", "job", "1"),
])
def test_path_ids_must_be_uuids(box, guard, method, path, label, bad):
    before = disk_dirs(box)
    status, reason, detail = fault(box.request(method, path, "<action/>"
                                               if method == "POST" else b""), box)
    assert (status, reason) == (400, "Invalid id")
    assert detail == f"Invalid {label} id {ascii(bad)}: ids are UUIDs"
    assert disk_dirs(box) == before


@pytest.mark.parametrize("body,detail", [
    ('<vm><name>v1</name><id>../../x</id></vm>', "Invalid VM id '../../x': ids are UUIDs"),
    ('<disk><name>d</name><format>raw</format><provisioned_size>1048576</provisioned_size>'
     '<storage_domains><storage_domain id="../../sd"/></storage_domains></disk>',
     "Invalid storage domain id '../../sd': ids are UUIDs"),
    ('<image_transfer><disk id="../x"/></image_transfer>',
     "Invalid disk id '../x': ids are UUIDs"),
    ('<image_transfer><snapshot id="."/></image_transfer>',
     "Invalid disk snapshot id '.': ids are UUIDs"),
])
def test_body_ids_must_be_uuids(box, guard, body, detail):
    path = {"vm": "vms", "disk": "disks", "image_transfer": "imagetransfers"}[
        ET.fromstring(body).tag]
    status, reason, got = fault(box.request("POST", path, body), box)
    assert (status, reason, got) == (400, "Invalid id", detail)


def test_ovf_disk_ids_must_be_uuids(box, guard):
    ovf = ('<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/">'
           '<DiskSection><Disk ovf:fileRef="../../x/y"/></DiskSection></ovf:Envelope>')
    body = json.dumps({"name": "ovfvm", "initialization": {
        "configuration": {"type": "ovf", "data": ovf}}})
    status, reason, detail = fault(box.request("POST", "vms", body, "application/json"), box)
    assert (status, reason, detail) == (400, "Invalid id",
                                        "Invalid OVF disk id '..': ids are UUIDs")


def test_storage_paths_refuse_ids_that_are_not_uuids(box):
    st = box.eng.server.storage
    sd = box.eng.server.store.list("storage_domain")[0]["id"]
    for bad in ("..", ".", "../x", "/etc"):
        with pytest.raises(ValueError, match="storage paths are built from UUIDs"):
            st.disk_dir(sd, bad)
        with pytest.raises(ValueError, match="storage paths are built from UUIDs"):
            st.volume_path(sd, UNKNOWN, bad)
    assert st.disk_dir(sd, UNKNOWN) == os.path.join(box.data, sd, "images", UNKNOWN)


@pytest.mark.slow
def test_cli_disk_id_refuses_a_non_uuid(tmp_path):
    src = tmp_path / "f.raw"
    src.write_bytes(b"\0" * 512)
    before = tree(tmp_path)
    res = subprocess.run([sys.executable, "-m", "imagetool", "upload", str(src), "--sd", "data",
                          "--disk-id", "../../x"], capture_output=True, text=True,
                         env={**os.environ, "IMAGETOOL_HOME": str(tmp_path / "home")},
                         timeout=60)
    assert res.returncode == 2
    assert res.stderr.splitlines()[-1] == \
        "Error: Invalid value for '--disk-id': '../../x' is not a UUID"
    assert tree(tmp_path) == before


# --- 3. nothing read before authentication -----------------------------------------

def test_unauthenticated_post_is_401_before_the_body(box, guard):
    head = (f"POST {API}/disks HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {64 << 20}\r\n\r\n").encode()
    status, headers, body = box.raw(head, timeout=15)   # no body ever sent
    st, reason, detail = fault((status, headers, body), box)
    assert (st, reason) == (401, "Unauthorized")
    assert detail.startswith("Authentication required")
    assert headers["connection"] == "close"


def test_wrong_password_is_401_before_the_body(box, guard):
    bad = "Basic " + base64.b64encode(b"nobody:wrong").decode()
    head = (f"PUT {API}/disks/{UNKNOWN} HTTP/1.1\r\nHost: x\r\nAuthorization: {bad}\r\n"
            f"Content-Length: 1000000\r\n\r\n").encode()
    st, reason, _ = fault(box.raw(head, timeout=15), box)
    assert (st, reason) == (401, "Unauthorized")


def test_large_body_is_413_before_the_body(box, guard):
    head = (f"POST {API}/disks HTTP/1.1\r\nHost: x\r\nAuthorization: {BASIC}\r\n"
            f"Content-Length: {(1 << 20) + 1}\r\n\r\n").encode()
    status, headers, body = box.raw(head, timeout=15)
    st, reason, detail = fault((status, headers, body), box)
    assert (st, reason, detail) == (413, "Request Entity Too Large",
                                    "The request body is larger than 1048576 bytes")
    assert headers["connection"] == "close"


def test_sso_body_is_capped_too(box, guard):
    head = (b"POST /ovirt-engine/sso/oauth/token HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1048576\r\n\r\n")
    st, reason, detail = fault(box.raw(head, timeout=15), box)
    assert (st, reason, detail) == (413, "Request Entity Too Large",
                                    "The request body is larger than 16384 bytes")


@pytest.mark.slow
def test_server_rss_stays_bounded_under_unauthenticated_large_posts(tmp_path):
    """Ten clients each push 48 MiB at an `imagetool serve` without credentials."""
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "imagetool", "serve", "--data-dir",
                             str(tmp_path / "data"), "--password-file", str(pw)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = {}
        while "CA file" not in lines:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            key, _, value = line.strip().partition(": ")
            lines[key] = value
        parts = urlsplit(lines["engine URL"])
        ctx = ssl.create_default_context(cafile=lines["CA file"])

        def peak_rss() -> int:
            """The server's peak resident size (VmHWM): catches a body read and freed."""
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
            raise AssertionError("no VmHWM")

        base = peak_rss()
        statuses = []
        chunk = b"x" * (1 << 20)

        def client():
            raw = socket.create_connection((parts.hostname, parts.port), timeout=30)
            with ctx.wrap_socket(raw, server_hostname=parts.hostname) as s:
                s.sendall(f"POST {API}/disks HTTP/1.1\r\nHost: x\r\n"
                          f"Content-Length: {48 << 20}\r\n\r\n".encode())
                s.settimeout(10)
                try:
                    resp = http.client.HTTPResponse(s)
                    resp.begin()       # answered with no body byte sent
                    statuses.append(resp.status)
                    return
                except socket.timeout:
                    statuses.append("waited for the body")
                try:
                    for _ in range(48):
                        s.sendall(chunk)
                    s.recv(1)
                except OSError:
                    pass

        threads = [threading.Thread(target=client) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        grown = peak_rss() - base
        assert statuses == [401] * 10
        assert grown < 64 << 20, f"server peak RSS grew by {grown >> 20} MiB"
    finally:
        proc.terminate()
        proc.wait(30)


# --- 5. 400 where 500 was, states that break listings -------------------------------

@pytest.mark.parametrize("value", ["\u0661\u0662", "1_0", "+5", "5, 5"])
def test_malformed_content_length_is_400(box, guard, value):
    head = (f"POST {API}/disks HTTP/1.1\r\nHost: x\r\nAuthorization: {BASIC}\r\n"
            f"Content-Length: {value}\r\n\r\n").encode("utf-8")
    st, reason, detail = fault(box.raw(head + b"<disk/>"), box)
    assert (st, reason, detail) == (400, "Request syntactically incorrect.",
                                    "Invalid Content-Length: expected one decimal number "
                                    "of bytes")


@pytest.mark.parametrize("body,ctype", [
    ("[" * 200000 + "]" * 200000, "application/json"),
    ('{"a":' * 5000 + "1" + "}" * 5000, "application/json"),
    ('{"disk": ' + "[" * 40 + "]" * 40 + "}", "application/json"),
    ("<disk>" + "<a>" * 5000 + "</a>" * 5000 + "</disk>", "application/xml"),
], ids=["json-lists", "json-objects", "json-41", "xml-5000"])
def test_deep_nesting_is_400(box, guard, body, ctype):
    st, reason, detail = fault(box.request("POST", "disks", body, ctype), box)
    assert (st, reason, detail) == (400, "Request syntactically incorrect.",
                                    "The request body is nested more than 32 levels deep")


@pytest.mark.parametrize("codec", ["utf-8", "utf-16-le", "utf-16-be"])
def test_xml_entities_are_refused(box, guard, codec):
    """In any encoding: UTF-16 without a byte order mark hides the bytes
    ``<!DOCTYPE`` from a byte search, not from the parser."""
    body = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><disk><name>&b;</name></disk>')
    st, reason, detail = fault(box.request("POST", "disks", body.encode(codec)), box)
    assert (st, reason) == (400, "Request syntactically incorrect.")
    assert detail == ("Cannot parse XML request body: document type declarations are not "
                      "accepted")


@pytest.mark.parametrize("field,value,ch", [
    ("name", "bad\x00name", "'\\x00'"), ("name", "bad\x01name", "'\\x01'"),
    ("alias", "tab\there", "'\\t'"), ("description", "line\nbreak", "'\\n'"),
    ("name", "esc\x1b[31m", "'\\x1b'"), ("name", "\ud800", "'\\ud800'"),
])
def test_disk_names_must_be_printable(box, guard, field, value, ch):
    doc = json.loads(disk_json())
    doc.pop("name")
    doc[field] = value
    dirs = disk_dirs(box)
    st, reason, detail = fault(box.request("POST", "disks", json.dumps(doc),
                                           "application/json"), box)
    shown = "name" if field == "alias" else field
    assert (st, reason, detail) == (
        400, "Invalid value",
        f"Value of '{shown}' contains the character {ch}: only printable text is allowed")
    assert disk_dirs(box) == dirs
    disk_ids(box)   # the XML listing still parses


def test_names_are_bounded(box, guard):
    st, reason, detail = fault(box.request("POST", "disks", disk_json(name="n" * 256),
                                           "application/json"), box)
    assert (st, reason, detail) == (400, "Invalid value", "Value of 'name' is 256 characters "
                                    "long: at most 255 are allowed")
    st, reason, detail = fault(box.request("POST", "vms", json.dumps(
        {"name": "vm\x07"}), "application/json"), box)
    assert (st, detail) == (400, "Value of 'name' contains the character '\\x07': only "
                            "printable text is allowed")


def test_rename_and_snapshot_description_are_checked(box):
    status, _, body = box.request("POST", "disks", disk_json(name="ren"), "application/json")
    assert status == 201
    disk_id = ET.fromstring(body).get("id")
    try:
        st, _, detail = fault(box.request("PUT", f"disks/{disk_id}",
                                          "<disk><alias>x\x7fy</alias></disk>"
                                          .replace("\x7f", "&#127;")), box)
        assert (st, detail) == (400, "Value of 'name' contains the character '\\x7f': only "
                                "printable text is allowed")
        status, _, body = box.request("POST", "vms", json.dumps(
            {"name": "snapvm", "disk_attachments": {"disk_attachment": [
                {"disk": {"id": disk_id}}]}}), "application/json")
        assert status == 201, body
        vm_id = ET.fromstring(body).get("id")
        st, _, detail = fault(box.request("POST", f"vms/{vm_id}/snapshots", json.dumps(
            {"description": "s\x00"}), "application/json"), box)
        assert (st, detail) == (400, "Value of 'description' contains the character "
                                "'\\x00': only printable text is allowed")
        assert box.request("DELETE", f"vms/{vm_id}")[0] == 200
    finally:
        box.request("DELETE", f"disks/{disk_id}")


@pytest.mark.parametrize("size,detail", [
    (str(1 << 62), f"Disk provisioned_size {1 << 62} is larger than the maximum "
                   f"{MAX_PROVISIONED_SIZE} (8 TiB) of the local engine"),
    (str(MAX_PROVISIONED_SIZE + 1), f"Disk provisioned_size {MAX_PROVISIONED_SIZE + 1} is "
                                    f"larger than the maximum {MAX_PROVISIONED_SIZE} (8 TiB) "
                                    "of the local engine"),
    ("9" * 30, "Value '" + "9" * 30 + "' of 'provisioned_size' is not an integer"),
    ("\u0661\u0662", "Value '\u0661\u0662' of 'provisioned_size' is not an integer"),
    ("1_000", "Value '1_000' of 'provisioned_size' is not an integer"),
])
@pytest.mark.parametrize("fmt", ["raw", "cow"])
def test_sizes_are_bounded(box, guard, size, detail, fmt):
    dirs = disk_dirs(box)
    body = disk_json(format=fmt, provisioned_size=size)
    st, _, got = fault(box.request("POST", "disks", body, "application/json"), box)
    assert (st, got) == (400, detail)
    assert disk_dirs(box) == dirs


@pytest.mark.parametrize("fmt", ["raw", "cow"])
def test_the_maximum_size_is_served(box, fmt):
    status, _, body = box.request("POST", "disks", disk_json(
        format=fmt, provisioned_size=MAX_PROVISIONED_SIZE), "application/json")
    assert status == 201, body
    disk = ET.fromstring(body)
    try:
        from imagetool.formats import open_image
        st = box.eng.server.storage
        sd = disk.find("storage_domains/storage_domain").get("id")
        img = open_image(st.volume_path(sd, disk.get("id"), disk.findtext("image_id")), "r",
                         format="qcow2" if fmt == "cow" else "raw")
        try:
            assert img.size == MAX_PROVISIONED_SIZE
        finally:
            img.close()
    finally:
        assert box.request("DELETE", f"disks/{disk.get('id')}")[0] == 200


def test_a_refused_create_leaves_nothing(box, guard, monkeypatch):
    st = box.eng.server.storage
    real = st.create_volume

    def failing(sd_id, disk_id, vol_id, *a, **kw):
        real(sd_id, disk_id, vol_id, *a, **kw)
        raise OSError(27, "File too large")

    monkeypatch.setattr(st, "create_volume", failing)
    dirs = disk_dirs(box)
    st_, reason, detail = fault(box.request("POST", "disks", disk_json(), "application/json"),
                                box)
    assert (st_, reason, detail) == (409, "Operation Failed",
                                     "[Cannot add Virtual Disk. Cannot create the volume: "
                                     "File too large.]")
    assert disk_dirs(box) == dirs


# --- 6. owner-only files ----------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_everything_is_owner_only(tmp_path, umask):
    old = os.umask(umask)
    try:
        data = tmp_path / "data"
        eng = LocalEngine(str(data), finished_ttl=60.0)   # password file generated
        eng.start()
        try:
            b = Box.__new__(Box)
            b.root, b.data, b.eng = str(tmp_path), str(data), eng
            parts = urlsplit(eng.url)
            b.host, b.port = parts.hostname, parts.port
            b.ctx = ssl.create_default_context(cafile=eng.cafile)
            auth = "Basic " + base64.b64encode(
                f"admin@internal:{eng.password}".encode()).decode()
            b.secrets = [eng.password]
            ids = []
            for fmt in ("raw", "cow"):
                status, _, body = b.request("POST", "disks", disk_json(format=fmt),
                                            "application/json", auth=auth)
                assert status == 201, body
                ids.append(ET.fromstring(body).get("id"))
            status, _, body = b.request("POST", "vms", json.dumps(
                {"name": "perm", "disk_attachments": {"disk_attachment": [
                    {"disk": {"id": i}} for i in ids]}}), "application/json", auth=auth)
            assert status == 201, body
            vm_id = ET.fromstring(body).get("id")
            status, _, body = b.request("POST", f"vms/{vm_id}/snapshots", json.dumps(
                {"description": "s1"}), "application/json", auth=auth)
            assert status == 201, body
            names = set()
            loose = []
            for base, dirs, files in os.walk(data):
                for n in dirs:
                    p = os.path.join(base, n)
                    if stat.S_IMODE(os.stat(p).st_mode) != 0o700:
                        loose.append((p, oct(os.stat(p).st_mode)))
                for n in files:
                    p = os.path.join(base, n)
                    names.add(n)
                    if stat.S_IMODE(os.stat(p).st_mode) != 0o600:
                        loose.append((p, oct(os.stat(p).st_mode)))
            assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
            assert loose == []
            assert {"inventory.db", "inventory.db-wal", "inventory.db-shm", "engine.lock",
                    "admin-password", "ca.pem", "server.pem", "server.key"} <= names
        finally:
            eng.stop()
    finally:
        os.umask(old)


# --- 9. failed logins are throttled -----------------------------------------------

@pytest.mark.slow
def test_basic_auth_failures_are_throttled_then_the_password_works(tmp_path):
    box = Box(tmp_path, login_delay=0.5)
    try:
        bad = "Basic " + base64.b64encode(b"admin@internal:wrong").decode()
        for _ in range(6):
            st, reason, _ = fault(box.request("GET", "disks", auth=bad), box)
            assert (st, reason) == (401, "Unauthorized")
        reply = box.request("GET", "disks")          # the right password, too soon
        st, reason, detail = fault(reply, box)
        assert (st, reason, detail) == (429, "Too Many Requests",
                                        "Too many failed logins: try again in 1 s")
        assert reply[1]["retry-after"] == "1"
        # Another user name from the same peer is not blocked.
        other = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        assert box.request("GET", "disks", auth=other)[0] == 200
        deadline = time.monotonic() + 30
        while box.request("GET", "disks")[0] == 429:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert box.request("GET", "disks")[0] == 200
    finally:
        box.stop()


@pytest.mark.slow
def test_sso_failures_are_throttled_then_the_password_works(tmp_path):
    box = Box(tmp_path, login_delay=0.5)
    try:
        def token(password):
            form = (f"grant_type=password&scope=ovirt-app-api&username=admin%40internal"
                    f"&password={password}")
            status, headers, body = box.request("POST", "/ovirt-engine/sso/oauth/token", form,
                                                "application/x-www-form-urlencoded",
                                                auth=None)
            assert PASSWORD.encode() not in body and b"Traceback" not in body
            return status, headers, json.loads(body)
        for _ in range(6):
            status, _, doc = token("wrong")
            assert (status, doc["error_code"]) == (401, "access_denied")
        status, headers, doc = token(PASSWORD)
        assert status == 429 and headers["retry-after"] == "1"
        assert doc == {"error_code": "access_denied",
                       "error": "Too many failed logins: try again in 1 s"}
        deadline = time.monotonic() + 30
        while token(PASSWORD)[0] == 429:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        status, _, doc = token(PASSWORD)
        assert status == 200 and doc["access_token"]
    finally:
        box.stop()


# --- 3. connection cap and slow clients ---------------------------------------------

@pytest.mark.slow
def test_connections_beyond_the_cap_are_refused(tmp_path):
    box = Box(tmp_path, max_connections=3)
    held = []
    try:
        for _ in range(3):
            held.append(box.connect())
        # The fourth is closed at once: the handshake or the first read fails.
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected,
                            OSError)):
            box.request("GET", "disks")
        held.pop().close()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert box.request("GET", "disks")[0] == 200
                break
            except (ssl.SSLError, OSError, http.client.HTTPException):
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        for s in held:
            s.close()
        box.stop()


@pytest.mark.slow
def test_a_slow_client_is_cut_off(tmp_path):
    box = Box(tmp_path, request_timeout=1.0)
    try:
        s = box.connect(timeout=30)
        s.sendall(f"GET {API}/disks HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
        deadline = time.monotonic() + 30
        closed = False
        while time.monotonic() < deadline:
            try:
                s.sendall(b"a")        # a byte every 0.2 s: each read is quick
                s.settimeout(0.2)
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except (OSError, ssl.SSLError):
                closed = True
                break
        s.close()
        assert closed, "the server kept a dripping client for 30 s"
        assert box.request("GET", "disks")[0] == 200
    finally:
        box.stop()


# --- 10. texts the engine echoes back ----------------------------------------------

def new_vm(box, name: str, fmt: str = "raw", backup: str = "none") -> tuple[str, str]:
    """(vm id, disk id) of a new VM with one new 1 MiB disk."""
    status, _, body = box.request("POST", "disks", disk_json(name=f"{name}-d", format=fmt,
                                                             backup=backup),
                                  "application/json")
    assert status == 201, body
    disk_id = ET.fromstring(body).get("id")
    status, _, body = box.request("POST", "vms", json.dumps(
        {"name": name, "disk_attachments": {"disk_attachment": [{"disk": {"id": disk_id}}]}}),
        "application/json")
    assert status == 201, body
    return ET.fromstring(body).get("id"), disk_id


def sdk_jobs(box) -> list[str]:
    """Job descriptions as the real SDK lists them (it parses the XML)."""
    sdk = pytest.importorskip("ovirtsdk4")
    con = sdk.Connection(url=box.eng.url, username="admin@internal", password=PASSWORD,
                         ca_file=box.eng.cafile)
    try:
        return [j.description for j in con.system_service().jobs_service().list()]
    finally:
        con.close()


@pytest.mark.parametrize("field,value,detail", [
    ("filename", "\x01\x1b", "Value of 'filename' contains the character '\\x01': only "
                             "printable text is allowed"),
    ("filename", "a\u0085b.ova", "Value of 'filename' contains the character '\\x85': only "
                                 "printable text is allowed"),
    ("directory", "EXP/\x7f", "Value of 'directory' contains the character '\\x7f': only "
                              "printable text is allowed"),
])
def test_export_to_path_refuses_control_characters(tmp_path, field, value, detail):
    exp = tmp_path / "exp"
    exp.mkdir()
    box = Box(tmp_path, export_dirs=[str(exp)])
    try:
        vm_id, disk_id = new_vm(box, "echo")
        before, jobs = box.outside(), sdk_jobs(box)
        doc = {"host": {"name": "local"}, "directory": str(exp), "filename": "ok.ova"}
        doc[field] = value.replace("EXP", str(exp))
        st, reason, got = fault(box.request("POST", f"vms/{vm_id}/export", json.dumps(doc),
                                            "application/json"), box)
        assert (st, reason, got) == (400, "Invalid value", detail)
        assert box.outside() == before and os.listdir(exp) == []
        assert sdk_jobs(box) == jobs       # the SDK still reads the jobs listing
        status, _, body = box.request("GET", f"disks/{disk_id}")
        assert ET.fromstring(body).findtext("status") == "ok"
    finally:
        box.stop()


def test_attachment_interface_is_checked_before_anything_is_made(box, guard):
    dirs = disk_dirs(box)
    body = json.dumps({"name": "iface", "disk_attachments": {"disk_attachment": [
        {"interface": "virtio\x1b", "disk": {"name": "inline", "format": "raw",
                                             "provisioned_size": 1 << 20}}]}})
    st, _, detail = fault(box.request("POST", "vms", body, "application/json"), box)
    assert (st, detail) == (400, "Invalid value 'virtio\\x1b' for interface: expected one "
                                 "of ide, sata, spapr_vscsi, virtio, virtio_scsi")
    assert disk_dirs(box) == dirs
    status, _, body = box.request("GET", "vms")
    assert "iface" not in [v.findtext("name") for v in ET.fromstring(body).findall("vm")]


def test_nic_interface_is_checked_with_its_own_choices(box):
    body = json.dumps({"name": "nic-iface"})
    st, _, reply = box.request("POST", "vms", body, "application/json")
    assert st == 201
    vm_id = ET.fromstring(reply).get("id")
    nic = json.dumps({"name": "n1", "interface": "virtio_scsi"})
    st, _, detail = fault(box.request("POST", f"vms/{vm_id}/nics", nic, "application/json"), box)
    assert (st, detail) == (400, "Invalid value 'virtio_scsi' for interface: expected one of "
                                 "rtl8139_virtio, rtl8139, e1000, virtio, spapr_vlan, "
                                 "pci_passthrough")
    assert box.request("DELETE", f"vms/{vm_id}")[0] == 200


def test_storage_domain_reference_needs_an_id_or_a_name(box):
    body = json.dumps({"storage_domain": {"description": "no id, no name"}})
    disk = "00000000-0000-0000-0000-0000000000d1"
    st, reason, detail = fault(box.request("POST", f"disks/{disk}/copy", body,
                                           "application/json"), box)
    assert (st, reason, detail) == (400, "Incomplete parameters",
                                    "storage domain id or name required for copy")


def test_stored_control_characters_never_break_a_listing(tmp_path):
    # An inventory written before the door checked a text (or a name read
    # from an OVF file) still lists: XML-illegal characters are escaped,
    # and a job records its description escaped.
    box = Box(tmp_path)
    try:
        from imagetool.server.jobs import record_job
        job = record_job(box.eng.server.store, "Exporting To /x/\x01\x1b", ["s\x00"])
        assert job["description"] == "Exporting To /x/\\x01\\x1b"
        job = dict(job, id="00000000-0000-0000-0000-0000000000aa",
                   description="old \x01\x1b\ud800")
        box.eng.server.store.put("job", job)
        assert "old \\x01\\x1b\\ud800" in sdk_jobs(box)
        status, _, body = box.request("GET", f"jobs/{job['id']}/steps")
        assert status == 200
        assert [s.findtext("description") for s in ET.fromstring(body)] == ["s\\x00"]
    finally:
        box.stop()


# --- 11. backups nobody finalizes ----------------------------------------------------

def post(box, path: str, doc: dict) -> tuple[int, ET.Element | bytes]:
    status, _, body = box.request("POST", path, json.dumps(doc), "application/json")
    return status, (ET.fromstring(body) if body.startswith(b"<") else body)


def start_backup(box, vm_id: str, disk_id: str) -> str:
    status, body = post(box, f"vms/{vm_id}/backups", {"disks": {"disk": [{"id": disk_id}]}})
    assert status == 201, ET.tostring(body)
    return body.get("id")


def backup_phase(box, vm_id: str, bid: str) -> str:
    status, _, body = box.request("GET", f"vms/{vm_id}/backups/{bid}")
    assert status == 200, body
    return ET.fromstring(body).findtext("phase")


def wait_backup(box, vm_id: str, bid: str, phases: set[str], timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while (phase := backup_phase(box, vm_id, bid)) not in phases:
        assert time.monotonic() < deadline, f"backup {bid} stays {phase}"
        time.sleep(0.1)
    return phase


@pytest.mark.slow
def test_an_idle_backup_ends_and_the_next_one_starts(tmp_path):
    box = Box(tmp_path, backup_timeout=1.0)
    try:
        vm_id, disk_id = new_vm(box, "idle", fmt="cow", backup="incremental")
        _, _, body = box.request("GET", f"disks/{disk_id}/disksnapshots")
        layers = len(ET.fromstring(body))
        bid = start_backup(box, vm_id, disk_id)
        assert wait_backup(box, vm_id, bid, {"failed", "succeeded"}) == "failed"
        # The frozen layer is merged back, the checkpoint dropped.
        _, _, body = box.request("GET", f"disks/{disk_id}/disksnapshots")
        assert len(ET.fromstring(body)) == layers
        _, _, body = box.request("GET", f"vms/{vm_id}/checkpoints")
        assert len(ET.fromstring(body)) == 0
        bid2 = start_backup(box, vm_id, disk_id)
        assert post(box, f"vms/{vm_id}/backups/{bid2}/finalize", {})[0] == 200
        assert backup_phase(box, vm_id, bid2) == "succeeded"
    finally:
        box.stop()


@pytest.mark.slow
def test_a_running_transfer_keeps_its_backup_alive(tmp_path):
    box = Box(tmp_path, backup_timeout=0.5)
    try:
        vm_id, disk_id = new_vm(box, "busy", fmt="cow", backup="incremental")
        bid = start_backup(box, vm_id, disk_id)
        status, t = post(box, "imagetransfers", {"disk": {"id": disk_id}, "backup": {"id": bid},
                                                 "direction": "download", "format": "raw",
                                                 "inactivity_timeout": 60})
        assert status == 201
        time.sleep(1.5)
        assert backup_phase(box, vm_id, bid) == "ready"
        assert post(box, f"imagetransfers/{t.get('id')}/finalize", {})[0] == 200
        assert wait_backup(box, vm_id, bid, {"failed", "succeeded"}) == "failed"
    finally:
        box.stop()


def test_a_forgotten_transfer_still_counts_as_activity(tmp_path):
    # Finished transfers are dropped after finished_ttl; the backup's idle
    # clock still starts at the end of its last transfer.
    from imagetool.server.domain import backups as bk
    box = Box(tmp_path, backup_timeout=100.0)
    try:
        server = box.eng.server
        vm_id, disk_id = new_vm(box, "ttl", fmt="cow", backup="incremental")
        bid = start_backup(box, vm_id, disk_id)
        status, t = post(box, "imagetransfers", {"disk": {"id": disk_id}, "backup": {"id": bid},
                                                 "direction": "download", "format": "raw"})
        assert status == 201
        assert post(box, f"imagetransfers/{t.get('id')}/finalize", {})[0] == 200
        deadline = time.monotonic() + 20
        while server.store.get("transfer", t.get("id"))["phase"] != "finished_success":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        since = server.store.get("backup", bid)["modified"]
        server.store.update("transfer", t.get("id"), finished_at=since + 80)
        assert bk.expire(server, vm_id, now=since + 90) == []
        server.store.delete("transfer", t.get("id"))        # as finished_ttl does
        assert bk.expire(server, vm_id, now=since + 150) == []
        assert bk.expire(server, vm_id, now=since + 181) == [bid]
        assert backup_phase(box, vm_id, bid) == "failed"
    finally:
        box.stop()


@pytest.mark.parametrize("with_transfer", [False, True], ids=["ready", "transferring"])
@pytest.mark.slow
def test_a_backup_left_by_a_dead_engine_is_ended_at_start(tmp_path, with_transfer):
    # The engine dies mid-backup (stopped without finalizing: the inventory
    # is as a kill -9 leaves it) and starts again on the same data dir: the
    # backup ends (failed) and a new checkpoint backup of the VM starts.
    box = Box(tmp_path)
    vm_id, disk_id = new_vm(box, "crash", fmt="cow", backup="incremental")
    bid = start_backup(box, vm_id, disk_id)
    status, _ = post(box, f"vms/{vm_id}/backups/{bid}/finalize", {})
    assert status == 200
    bid = start_backup(box, vm_id, disk_id)        # a checkpoint backup, left running
    if with_transfer:
        status, _ = post(box, "imagetransfers", {"disk": {"id": disk_id}, "backup": {"id": bid},
                                                 "direction": "download", "format": "raw"})
        assert status == 201
    box.stop()
    box.eng = LocalEngine(box.data, password=PASSWORD, finished_ttl=60.0)
    box.eng.start()
    try:
        parts = urlsplit(box.eng.url)
        box.host, box.port = parts.hostname, parts.port
        assert wait_backup(box, vm_id, bid, {"failed", "succeeded"}) == "failed"
        _, _, body = box.request("GET", f"vms/{vm_id}/checkpoints")
        [cp] = [c.get("id") for c in ET.fromstring(body)]
        status, body = post(box, f"vms/{vm_id}/backups", {"from_checkpoint_id": cp,
                                                          "disks": {"disk": [{"id": disk_id}]}})
        assert status == 201, body
        assert post(box, f"vms/{vm_id}/backups/{body.get('id')}/finalize", {})[0] == 200
        status, _, body = box.request("GET", f"disks/{disk_id}")
        assert ET.fromstring(body).findtext("status") == "ok"
    finally:
        box.stop()


# --- 12. what a backup or a transfer holds ------------------------------------------

def test_a_vm_or_disk_under_a_backup_is_not_removed(box, guard):
    vm_id, disk_id = new_vm(box, "held")
    bid = start_backup(box, vm_id, disk_id)
    assert wait_backup(box, vm_id, bid, {"ready"}) == "ready"
    dirs = disk_dirs(box)
    held = f"is being backed up (backup {bid}, phase ready): finalize the backup first."
    for method, path, detail in [
            ("DELETE", f"vms/{vm_id}", f"Cannot remove VM. VM held {held}"),
            ("DELETE", f"vms/{vm_id}?detach_only=true", f"Cannot remove VM. VM held {held}"),
            ("DELETE", f"vms/{vm_id}/diskattachments/{disk_id}",
             f"Cannot detach Virtual Disk. Disk held-d {held}"),
            ("DELETE", f"disks/{disk_id}", f"Cannot remove Virtual Disk. Disk held-d {held}")]:
        st, _, got = fault(box.request(method, path), box)
        assert (st, got) == (409, f"[{detail}]"), path
    assert disk_dirs(box) == dirs
    status, _, body = box.request("GET", f"vms/{vm_id}/diskattachments")
    assert [a.get("id") for a in ET.fromstring(body)] == [disk_id]
    assert post(box, f"vms/{vm_id}/backups/{bid}/finalize", {})[0] == 200
    # A transfer holds the disk as well (it is locked).
    status, t = post(box, "imagetransfers", {"disk": {"id": disk_id}, "direction": "download"})
    assert status == 201
    st, _, got = fault(box.request("DELETE", f"vms/{vm_id}"), box)
    assert (st, got) == (409, "[Cannot remove VM. Disk held-d is locked. Please try again "
                              "later.]")
    assert post(box, f"imagetransfers/{t.get('id')}/cancel", {})[0] == 200
    deadline = time.monotonic() + 20
    while box.request("DELETE", f"vms/{vm_id}")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert disk_dirs(box) == dirs - {d for d in dirs if d.endswith(disk_id)}


@pytest.mark.slow
def test_clone_from_a_snapshot_being_removed_is_409_or_404_never_500(tmp_path):
    # Both at once, six times: one wins, the other is refused cleanly, and
    # a clone that was made reads as the snapshot did.
    box = Box(tmp_path)
    try:
        outcomes = set()
        for i in range(6):
            vm_id, disk_id = new_vm(box, f"race{i}", fmt="cow")
            status, snap = post(box, f"vms/{vm_id}/snapshots", {"description": f"s{i}"})
            assert status == 201
            snap_id = snap.get("id")
            replies = {}

            def clone():
                replies["clone"] = box.request("POST", "vms", json.dumps(
                    {"name": f"clone{i}", "cluster": {"name": "Default"},
                     "snapshots": {"snapshot": [{"id": snap_id}]}}), "application/json")

            def remove():
                replies["remove"] = box.request("DELETE", f"vms/{vm_id}/snapshots/{snap_id}")

            threads = [threading.Thread(target=clone), threading.Thread(target=remove)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            c, r = replies["clone"][0], replies["remove"][0]
            for reply in replies.values():
                if reply[0] >= 400:
                    fault(reply, box)
            assert c in (201, 404, 409) and r in (200, 409), (c, r, replies)
            assert (c, r) != (409, 409)
            outcomes.add((c, r))
            status, _, body = box.request("GET", f"disks/{disk_id}")
            assert ET.fromstring(body).findtext("status") == "ok"
        assert outcomes
    finally:
        box.stop()

