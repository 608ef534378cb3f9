"""Vm ``export`` to a directory of the host (the SDK's ``export_to_path_on_host``).

The SDK example ``export_vm_as_ova.py`` runs against ``imagetool serve
--export-dir``; the OVA it makes imports with ``imagetool ova import``.
Every request for a place the operator did not allow is refused with a
fault and leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from xml.sax.saxutils import escape

import pytest

from helpers import ENGINE_PASSWORD, MiB, api_request, wait_for
from ova_fixtures import SD, connect, make_sources, make_vm, second_engine


def _export(engine, vm_id, directory, filename=None, host="local"):
    body = (f"<action><host><name>{escape(host)}</name></host>"
            f"<directory>{escape(directory)}</directory>"
            + (f"<filename>{escape(filename)}</filename>" if filename is not None else "")
            + "</action>")
    status, _, reply = api_request(engine, "POST", f"vms/{vm_id}/export", body,
                                   {"Content-Type": "application/xml"})
    return status, reply.decode()


def _job(engine, reply):
    job_id = re.search(r'<job href="[^"]*" id="([^"]+)"', reply).group(1)

    def status():
        _, _, body = api_request(engine, "GET", f"jobs/{job_id}")
        return re.search(r"<status>([^<]+)</status>", body.decode()).group(1)
    return wait_for(status, lambda s: s != "started", timeout=120, interval=0.1)


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


# --- refusals ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host_engine(tmp_path_factory):
    """A local engine allowing exports into one directory."""
    from imagetool.server.local import LocalEngine
    base = tmp_path_factory.mktemp("host-export")
    allowed = base / "allowed"
    allowed.mkdir()
    eng = LocalEngine(str(base / "engine"), password=ENGINE_PASSWORD, finished_ttl=60.0,
                      export_dirs=[str(allowed)])
    eng.start()
    try:
        with connect(eng) as conn:
            sources = make_sources(str(base), size=2 * MiB)
            vm, disks = make_vm(conn, sources, "hostvm")
        eng.test_vm = vm
        eng.test_disks = disks
        eng.allowed = str(allowed)
        eng.base = base
        yield eng
    finally:
        eng.stop()


def _disk_states(engine):
    with connect(engine) as conn:
        return {d.id: conn.disks.get(d.id).status for d in engine.test_disks.values()}


@pytest.mark.slow
def test_refused_without_export_dir(engine, conn, scratch):
    sources = make_sources(scratch, size=1 * MiB)
    vm, _ = make_vm(conn, {"raw": sources["raw"]}, "noexportdir")
    status, reply = _export(engine, vm.id, scratch, "x.ova")
    assert status == 409, reply
    assert "started without --export-dir" in reply
    assert not os.path.exists(os.path.join(scratch, "x.ova"))
    assert [f for f in os.listdir(scratch) if f.endswith(".ova") or f.endswith(".tmp")] == []


@pytest.mark.parametrize("case", ["outside", "dotdot-dir", "symlink", "dotdot-name",
                                  "slash-name", "relative"])
def test_refused_outside_the_export_dir(host_engine, case):
    outside = host_engine.base / f"outside-{case}"
    outside.mkdir()
    allowed = host_engine.allowed
    filename = "vm.ova"
    if case == "outside":
        directory = str(outside)
    elif case == "dotdot-dir":
        directory = os.path.join(allowed, "..", f"outside-{case}")
    elif case == "symlink":
        os.symlink(str(outside), os.path.join(allowed, "escape"))
        directory = os.path.join(allowed, "escape")
    elif case == "dotdot-name":
        directory, filename = allowed, f"../outside-{case}/vm.ova"
    elif case == "slash-name":
        directory, filename = allowed, "sub/vm.ova"
    else:
        directory = "allowed"
    before = _tree(allowed)
    try:
        status, reply = _export(host_engine, host_engine.test_vm.id, directory, filename)
    finally:
        if case == "symlink":
            os.unlink(os.path.join(allowed, "escape"))
    if case in ("dotdot-name", "slash-name"):
        assert status == 400, reply
        assert "is not a plain file name (no '/' or '..')" in reply
    elif case == "relative":
        assert status == 400, reply
        assert "is not an absolute path" in reply
    else:
        assert status == 409, reply
        assert f"Directory {directory} is not one this engine may write to" in reply
    assert os.listdir(outside) == []
    assert _tree(allowed) == before
    assert set(_disk_states(host_engine).values()) == {"ok"}


def test_existing_file_is_never_overwritten(host_engine):
    path = os.path.join(host_engine.allowed, "taken.ova")
    with open(path, "wb") as f:
        f.write(b"precious")
    status, reply = _export(host_engine, host_engine.test_vm.id, host_engine.allowed,
                            "taken.ova")
    assert status == 409, reply
    assert "File taken.ova already exists in" in reply
    with open(path, "rb") as f:
        assert f.read() == b"precious"
    assert sorted(os.listdir(host_engine.allowed)) == ["taken.ova"]
    os.unlink(path)


def test_export_writes_private_ova_that_reads_back(host_engine):
    from imagetool import ova_info
    from imagetool.transfer.disk_checksum import disk_checksum
    sub = os.path.join(host_engine.allowed, "sub")
    os.makedirs(sub, exist_ok=True)
    status, reply = _export(host_engine, host_engine.test_vm.id, sub + "/")
    assert status == 200, reply
    assert "<status>complete</status>" in reply
    assert _job(host_engine, reply) == "finished"
    assert os.listdir(sub) == ["hostvm.ova"]          # default name, no temporary left
    path = os.path.join(sub, "hostvm.ova")
    assert os.stat(path).st_mode & 0o777 == 0o600
    info = ova_info(path, verify=True)
    assert info["dialect"] == "ovirt" and info["name"] == "hostvm"
    with connect(host_engine) as conn:
        by_id = {d.id: d for d in host_engine.test_disks.values()}
        assert {d["disk_id"] for d in info["disks"]} == set(by_id)
        for d in info["disks"]:
            assert d["member"] == conn.disks.get(d["disk_id"]).image_id
            remote = disk_checksum(conn, d["disk_id"], algorithm=d["algorithm"])
            assert remote["checksum"] == d["checksum"]
    assert set(_disk_states(host_engine).values()) == {"ok"}
    shutil.rmtree(sub)


# --- the SDK example against imagetool serve ------------------------------------------

def _start_serve(data_dir, password_file, export_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagetool", "serve", "--data-dir", str(data_dir),
         "--password-file", str(password_file), "--export-dir", str(export_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = {}
    deadline = time.monotonic() + 60
    while "CA file" not in lines:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"serve exited: {proc.stderr.read()}")
        key, _, value = line.strip().partition(": ")
        lines[key] = value
        assert time.monotonic() < deadline
    return proc, lines


class _Served:
    def __init__(self, url, cafile):
        self.url, self.cafile = url, cafile


@pytest.mark.slow
def test_sdk_example_exports_ova_that_imports(tmp_path, sdk_examples):
    pytest.importorskip("ovirtsdk4")
    from imagetool.transfer.disk_checksum import disk_checksum
    export_dir = tmp_path / "exports"
    export_dir.mkdir()
    pw = tmp_path / "password"
    pw.write_text(ENGINE_PASSWORD + "\n")
    proc, lines = _start_serve(tmp_path / "data", pw, export_dir)
    target = None
    try:
        served = _Served(lines["engine URL"], lines["CA file"])
        with connect(served) as conn:
            vm, disks = make_vm(conn, make_sources(str(tmp_path), size=4 * MiB), "exvm")
            before = {d.id: disk_checksum(conn, d.id) for d in disks.values()}

        text = open(os.path.join(sdk_examples, "export_vm_as_ova.py")).read()
        for old, new in (("url='https://engine40.example.com/ovirt-engine/api'",
                          f"url={served.url!r}"),
                         ("password='redhat123'", f"password={ENGINE_PASSWORD!r}"),
                         ("ca_file='/etc/pki/ovirt-engine/ca.pem'",
                          f"ca_file={served.cafile!r}"),
                         ("search='name=myvm'", "search='name=exvm'"),
                         ("search='name=myhost'", "search='name=local'"),
                         ("directory='/tmp'", f"directory={str(export_dir)!r}")):
            assert old in text, old
            text = text.replace(old, new)
        script = tmp_path / "export_vm_as_ova.py"
        script.write_text(text)
        p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           timeout=300, env={k: v for k, v in os.environ.items()
                                             if k != "PYTHONPATH"})
        assert p.returncode == 0, p.stdout + p.stderr
        ova = export_dir / "myvm2.ova"
        wait_for(lambda: sorted(os.listdir(export_dir)), lambda f: f == ["myvm2.ova"],
                 timeout=120, interval=0.1)
        assert ova.stat().st_mode & 0o777 == 0o600

        target = second_engine(str(tmp_path / "engine2"))
        env = dict(os.environ, IMAGETOOL_HOME=str(tmp_path / "home"),
                   IMAGETOOL_ENGINE_URL=target.url, IMAGETOOL_USERNAME="admin@internal",
                   IMAGETOOL_PASSWORD_FILE=str(pw), IMAGETOOL_CAFILE=target.cafile)
        p = subprocess.run([sys.executable, "-m", "imagetool", "ova", "import", str(ova),
                            "--sd", SD, "--name", "exvm-back"],
                           capture_output=True, text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stdout + p.stderr
        with connect(target) as conn2:
            [back] = [v for v in conn2.vms.list() if v.name == "exvm-back"]
            attached = {a.disk_id for a in conn2.vms.disk_attachments(back.id)}
            assert attached == set(before)
            for disk_id, want in before.items():
                got = disk_checksum(conn2, disk_id, algorithm=want["algorithm"])
                assert got["checksum"] == want["checksum"]
    finally:
        if target is not None:
            target.stop()
        proc.terminate()
        proc.wait(timeout=60)


def test_serve_help_documents_export_dir():
    p = subprocess.run([sys.executable, "-m", "imagetool", "serve", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    assert "--export-dir" in p.stdout
    assert "export_to_path_on_host" in p.stdout


@pytest.mark.slow
def test_server_writes_ova_without_the_client_transfer_code():
    code = ("import sys, imagetool.server.rest.exportdomain, imagetool.server.app; "
            "print(sorted(m for m in sys.modules if m.startswith("
            "('imagetool.transfer', 'imagetool.cli', 'imagetool.engine'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
