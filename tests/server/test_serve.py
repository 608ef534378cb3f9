"""``imagetool serve`` as a process: lock file, TLS, shutdown, restarts, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import MiB, get_file, make_pattern_image, put_file, wait_phase

sdk = pytest.importorskip("ovirtsdk4")
types = sdk.types

PASSWORD = "serve-secret"


def start_serve(data_dir, password_file, *extra):
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagetool", "serve", "--data-dir", str(data_dir),
         "--password-file", str(password_file), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = {}
    deadline = time.monotonic() + 30
    while "CA file" not in lines:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"serve exited: {proc.stderr.read()}")
        key, _, value = line.strip().partition(": ")
        lines[key] = value
        assert time.monotonic() < deadline
    return proc, lines


def connect(url, cafile):
    return sdk.Connection(url=url, username="admin@internal", password=PASSWORD, ca_file=cafile)


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.mark.slow
def test_serve_lock_file_and_clean_shutdown(tmp_path, password_file):
    data = tmp_path / "data"
    proc, out = start_serve(data, password_file)
    try:
        assert out["engine URL"].startswith("https://127.0.0.1:")
        assert out["engine URL"].endswith("/ovirt-engine/api")
        assert PASSWORD not in json.dumps(out)
        lock = json.loads((data / "serve.json").read_text())
        assert lock["url"] == out["engine URL"]
        assert lock["cafile"] == out["CA file"] and os.path.exists(lock["cafile"])
        assert lock["pid"] == proc.pid
        assert lock["username"] == "admin@internal"
        assert lock["password_file"] == str(password_file)

        from imagetool.server.local import find_running_engine
        assert find_running_engine(str(data))["pid"] == proc.pid

        con = connect(out["engine URL"], out["CA file"])
        disk = con.system_service().disks_service().add(types.Disk(
            name="kept", format=types.DiskFormat.RAW, provisioned_size=MiB,
            storage_domains=[types.StorageDomain(name="data")]))
        con.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not (data / "serve.json").exists()

    # The inventory survives a restart; the CA is reused.
    proc, out2 = start_serve(data, password_file)
    try:
        assert out2["CA file"] == out["CA file"]
        con = connect(out2["engine URL"], out2["CA file"])
        names = [d.name for d in con.system_service().disks_service().list()]
        assert names == ["kept"]
        got = con.system_service().disks_service().disk_service(disk.id).get()
        assert got.status == types.DiskStatus.OK
        con.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_generated_password_file_is_private(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGETOOL_ADMIN_PASSWORD", raising=False)
    from imagetool.server.app import load_or_create_password
    password, path = load_or_create_password(str(tmp_path))
    assert path == str(tmp_path / "admin-password")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(password) >= 16
    assert load_or_create_password(str(tmp_path)) == (password, path)


@pytest.mark.slow
@pytest.mark.parametrize("policy,expected,disk_fmt", [
    ("legacy", "paused_system", "raw"),
    ("pause", "paused_system", "cow"),
    ("cancel", "finished_failure", "raw"),
])
def test_crash_mid_upload_leaves_no_disk_locked(tmp_path, password_file, policy, expected,
                                                disk_fmt):
    """SIGKILL during an upload; the next start settles the transfer per policy.

    A paused upload keeps what the client flushed (into a cow disk too, where
    the qcow2 writer is rebuilt from the volume) and can be resumed."""
    data = tmp_path / "data"
    proc, out = start_serve(data, password_file)
    try:
        con = connect(out["engine URL"], out["CA file"])
        system = con.system_service()
        done = system.disks_service().add(types.Disk(
            name="finished", format=types.DiskFormat.RAW, provisioned_size=MiB,
            storage_domains=[types.StorageDomain(name="data")]))
        disk = system.disks_service().add(types.Disk(
            name="interrupted", format=types.DiskFormat(disk_fmt), provisioned_size=4 * MiB,
            storage_domains=[types.StorageDomain(name="data")]))
        transfer = system.image_transfers_service().add(types.ImageTransfer(
            disk=types.Disk(id=disk.id), direction=types.ImageTransferDirection.UPLOAD,
            format=types.DiskFormat.RAW, timeout_policy=types.ImageTransferTimeoutPolicy(policy),
            # A restored transfer gets its inactivity timeout from the restart
            # before the policy applies: keep the cancel case short.
            inactivity_timeout=3 if policy == "cancel" else None))
        transfer = wait_phase(con, transfer.id, ["transferring"])
        src = make_pattern_image(str(tmp_path / "src.raw"), "raw")
        put_file(transfer.transfer_url, out["CA file"], src)
        assert system.disks_service().disk_service(disk.id).get().status == types.DiskStatus.LOCKED
        con.close(logout=False)
    finally:
        proc.kill()
        proc.wait()
    assert (data / "serve.json").exists()  # a crash leaves the lock file behind

    proc, out = start_serve(data, password_file)
    try:
        con = connect(out["engine URL"], out["CA file"])
        system = con.system_service()
        assert system.disks_service().disk_service(done.id).get().status == types.DiskStatus.OK
        t = wait_phase(con, transfer.id, [expected])
        tsvc = system.image_transfers_service().image_transfer_service(t.id)
        if expected == "paused_system":
            # The user can resume and finish the upload: the data is still there.
            tsvc.resume()
            t = wait_phase(con, transfer.id, ["transferring"])
            tsvc.finalize()
            assert wait_phase(con, transfer.id, ["finished_success", "finished_failure"]) \
                .phase == types.ImageTransferPhase.FINISHED_SUCCESS
            got = system.disks_service().disk_service(disk.id).get()
            assert got.status == types.DiskStatus.OK
            # Everything flushed before the crash is there.
            t = system.image_transfers_service().add(types.ImageTransfer(
                disk=types.Disk(id=disk.id), direction=types.ImageTransferDirection.DOWNLOAD,
                format=types.DiskFormat.RAW))
            t = wait_phase(con, t.id, ["transferring"])
            dst = str(tmp_path / "back.raw")
            get_file(t.transfer_url, out["CA file"], dst)
            system.image_transfers_service().image_transfer_service(t.id).finalize()
            with open(src, "rb") as a, open(dst, "rb") as b:
                assert a.read() == b.read()
        else:
            # A cancelled upload's disk is removed.
            disks = [d.id for d in system.disks_service().list()]
            assert disk.id not in disks and done.id in disks
        con.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_second_engine_on_same_dir_leaves_live_transfers_alone(tmp_path, monkeypatch):
    """Two in-process engines on one data dir (two CLI commands at once):
    the second must not treat the first one's live transfer as interrupted."""
    import helpers
    from imagetool.server.local import LocalEngine
    monkeypatch.setattr(helpers, "ENGINE_PASSWORD", "secret-1")
    api_json, wait_for = helpers.api_json, helpers.wait_for
    with LocalEngine(str(tmp_path), password="secret-1") as first:
        status, disk = api_json(first, "POST", "disks", {
            "name": "live", "format": "raw", "provisioned_size": MiB,
            "storage_domains": {"storage_domain": [{"name": "data"}]}})
        assert status == 201
        status, t = api_json(first, "POST", "imagetransfers", {
            "disk": {"id": disk["id"]}, "direction": "upload", "format": "raw"})
        assert status == 201
        wait_for(lambda: api_json(first, "GET", f"imagetransfers/{t['id']}")[1]["phase"],
                 lambda p: p == "transferring")
        with LocalEngine(str(tmp_path), password="secret-1"):
            pass
        assert api_json(first, "GET", f"imagetransfers/{t['id']}")[1]["phase"] == "transferring"


def test_plain_http_engine_with_sdk(tmp_path):
    """--no-tls: the SDK and the data plane speak plain HTTP."""
    from imagetool.server.local import LocalEngine
    with LocalEngine(str(tmp_path), tls=False, password=PASSWORD) as eng:
        assert eng.url.startswith("http://") and eng.cafile is None
        con = sdk.Connection(url=eng.url, username="admin@internal", password=PASSWORD)
        system = con.system_service()
        disk = system.disks_service().add(types.Disk(
            name="plain", format=types.DiskFormat.RAW, provisioned_size=MiB,
            storage_domains=[types.StorageDomain(name="data")]))
        t = system.image_transfers_service().add(types.ImageTransfer(
            disk=types.Disk(id=disk.id), direction=types.ImageTransferDirection.DOWNLOAD))
        t = wait_phase(con, t.id, ["transferring"])
        assert t.transfer_url.startswith("http://127.0.0.1:")
        system.image_transfers_service().image_transfer_service(t.id).finalize()
        wait_phase(con, t.id, ["finished_success"])
        con.close()


def test_port_in_use_fails_cleanly(tmp_path):
    import socket
    from imagetool.server.local import LocalEngine
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        engine = LocalEngine(str(tmp_path), password=PASSWORD, port=taken.getsockname()[1])
        with pytest.raises(OSError):
            engine.start()
        assert engine.server.dataplane is None        # nothing left serving
    finally:
        taken.close()
    with LocalEngine(str(tmp_path), password=PASSWORD) as again:
        assert again.server._dir_lock is not None     # the data dir lock was released


def _state(pid):
    """The process state letter of ``pid`` (``Z``: dead, not yet reaped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow
def test_restart_right_after_kill_9(tmp_path, password_file):
    """A serve killed with SIGKILL and not yet reaped (kill(pid, 0) still
    succeeds on it) no longer counts as serving the data dir: its lock died
    with it, so a new serve starts at once."""
    from imagetool.server.local import find_running_engine
    data = tmp_path / "data"
    proc, _ = start_serve(data, password_file)
    proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _state(proc.pid) != "Z":              # dead, and deliberately not reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # Its other threads may take a moment more to let go of its files.
    while find_running_engine(str(data)) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, 0)                        # what the old check saw: "alive"
    assert (data / "serve.json").exists()
    again, _ = start_serve(data, password_file)
    try:
        assert find_running_engine(str(data))["pid"] == again.pid
        # A second serve on the live engine's dir is still refused.
        p = subprocess.run([sys.executable, "-m", "imagetool", "serve", "--data-dir", str(data),
                            "--password-file", str(password_file)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1
        assert f"an engine already serves {data} (pid {again.pid}" in p.stderr
        assert "Traceback" not in p.stderr
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=30) == 0
        proc.wait()
    assert not (data / "serve.json").exists()


@pytest.mark.slow
def test_storage_dir_allows_domains_there_only(tmp_path, password_file):
    """serve --storage-dir DIR: a storage domain may be added in DIR or below
    it; any other path is a 409 naming the option, and nothing is created."""
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    (allowed / "sub").mkdir()
    other.mkdir()
    proc, out = start_serve(tmp_path / "data", password_file, "--storage-dir", str(allowed))
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("storage dir: "):
            line = proc.stdout.readline()
        assert line.strip() == f"storage dir: {allowed}"
        con = connect(out["engine URL"], out["CA file"])
        sds = con.system_service().storage_domains_service()

        def add(name, path):
            return sds.add(types.StorageDomain(
                name=name, type=types.StorageDomainType.DATA, host=types.Host(name="local"),
                storage=types.HostStorage(type=types.StorageType.LOCALFS, path=str(path))))
        sd = add("in-sub", allowed / "sub")
        assert (allowed / "sub" / sd.id / "dom_md" / "metadata").is_file()
        with pytest.raises(sdk.Error) as e:
            add("elsewhere", other)
        assert e.value.code == 409
        assert (f"Directory {other} is not one this engine may write to (allowed: the "
                "--storage-dir directories and their subdirectories).") in str(e.value)
        assert os.listdir(other) == []
        assert "elsewhere" not in {s.name for s in sds.list()}
        con.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _serve_and_connect(data, password_file):
    """(serve process, SDK connection); the process is killed if the connection fails."""
    proc, out = start_serve(data, password_file)
    try:
        return proc, connect(out["engine URL"], out["CA file"])
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def _backup_phase(vm_service, backup_id: str, phases: set[str], timeout: float = 30.0):
    """The backup once its phase is one of ``phases``."""
    svc = vm_service.backups_service().backup_service(backup_id)
    deadline = time.monotonic() + timeout
    while (b := svc.get()).phase.value not in phases:
        assert time.monotonic() < deadline, f"backup {backup_id} stays {b.phase}"
        time.sleep(0.1)
    return b


def _full_backup(vm_service, disk_id: str, from_cp: str | None = None):
    """A backup of the disk, ready (through the SDK)."""
    b = vm_service.backups_service().add(types.Backup(
        disks=[types.Disk(id=disk_id)], from_checkpoint_id=from_cp))
    return _backup_phase(vm_service, b.id, {"ready"})


@pytest.mark.slow
def test_kill_during_a_checkpoint_backup_then_the_next_backup_works(tmp_path, password_file):
    """SIGKILL while a checkpoint backup is transferring; after the restart
    the backup ends (failed, its checkpoint dropped) and the VM's next
    checkpoint backup starts and finalizes (it was refused for good:
    "A backup of the VM is already running")."""
    data = tmp_path / "data"
    proc, con = _serve_and_connect(data, password_file)
    try:
        system = con.system_service()
        disk = system.disks_service().add(types.Disk(
            name="kb", format=types.DiskFormat.COW, provisioned_size=4 * MiB,
            backup=types.DiskBackup.INCREMENTAL,
            storage_domains=[types.StorageDomain(name="data")]))
        vm = system.vms_service().add(types.Vm(name="kb-vm",
                                               cluster=types.Cluster(name="Default")))
        vm_service = system.vms_service().vm_service(vm.id)
        vm_service.disk_attachments_service().add(types.DiskAttachment(
            disk=types.Disk(id=disk.id), interface=types.DiskInterface.VIRTIO_SCSI,
            bootable=True, active=True))
        first = _full_backup(vm_service, disk.id)
        vm_service.backups_service().backup_service(first.id).finalize()
        cp = _backup_phase(vm_service, first.id, {"succeeded"}).to_checkpoint_id
        second = _full_backup(vm_service, disk.id, cp)
        t = system.image_transfers_service().add(types.ImageTransfer(
            disk=types.Disk(id=disk.id), backup=types.Backup(id=second.id),
            direction=types.ImageTransferDirection.DOWNLOAD, format=types.DiskFormat.RAW))
        wait_phase(con, t.id, ["transferring"])
        con.close(logout=False)
    finally:
        proc.kill()
        proc.wait()

    proc, con = _serve_and_connect(data, password_file)
    try:
        system = con.system_service()
        vm_service = system.vms_service().vm_service(vm.id)
        assert _backup_phase(vm_service, second.id, {"failed", "succeeded"}).phase.value \
            == "failed"
        assert [c.id for c in vm_service.checkpoints_service().list()] == [cp]
        third = _full_backup(vm_service, disk.id, cp)
        vm_service.backups_service().backup_service(third.id).finalize()
        assert _backup_phase(vm_service, third.id, {"failed", "succeeded"}).phase.value \
            == "succeeded"
        assert system.disks_service().disk_service(disk.id).get().status == types.DiskStatus.OK
        con.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
