"""What a backup does to the engine, on the local engine: a checkpoint backup
never changes the disk it reads."""

from __future__ import annotations


import pytest

from helpers import ENGINE_PASSWORD, MiB
from backup_helpers import engine_checksum, guest_io, make_vm, rand

from imagetool import backup
from imagetool.backup import engine_ops as ops
from imagetool.server.local import LocalEngine


@pytest.fixture
def env(engine, monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGETOOL_ENGINE_URL", engine.url)
    monkeypatch.setenv("IMAGETOOL_USERNAME", LocalEngine.username)
    monkeypatch.setenv("IMAGETOOL_PASSWORD", ENGINE_PASSWORD)
    monkeypatch.setenv("IMAGETOOL_CAFILE", engine.cafile)
    monkeypatch.setenv("IMAGETOOL_HOME", str(tmp_path / "home"))
    for name in ("IMAGETOOL_CONFIG", "IMAGETOOL_PASSWORD_FILE", "IMAGETOOL_INSECURE"):
        monkeypatch.delenv(name, raising=False)


def volumes(engine, disk_id):
    return engine.server.store.list("volume", lambda v: v["disk_id"] == disk_id)


def test_a_checkpoint_backup_leaves_a_raw_disk_raw(conn, engine, tmp_path):
    vm, (cow, raw) = make_vm(conn, [("cow", 8 * MiB), ("raw", 8 * MiB)])
    guest_io(conn, raw, writes=[(0, rand(3 * MiB, 1))])
    guest_io(conn, cow, writes=[(0, rand(MiB, 2))])
    before = conn.disks.get(raw)
    sums = {d: engine_checksum(conn, d, "sha256") for d in (cow, raw)}
    repo = str(tmp_path / "repo")
    for _ in range(3):
        backup.backup_vm(conn, vm.id, repo, method="checkpoint")
    after = conn.disks.get(raw)
    assert (after.format, after.image_id) == ("raw", before.image_id)
    assert after.actual_size == before.actual_size
    assert [v["format"] for v in volumes(engine, raw)] == ["raw"]
    assert len(volumes(engine, cow)) == 1
    assert {d: engine_checksum(conn, d, "sha256") for d in (cow, raw)} == sums
    conn.vms.remove(vm.id)


def test_writes_during_a_backup_reach_the_raw_disk(conn, engine):
    vm, (raw,) = make_vm(conn, [("raw", 4 * MiB)])
    guest_io(conn, raw, writes=[(0, rand(2 * MiB, 3))])
    b = ops.start_backup(conn, vm.id, [raw], None, "t")
    ops.wait_backup(conn, vm.id, b.id, ("ready",))
    assert conn.disks.get(raw).format == "raw"
    guest_io(conn, raw, writes=[(MiB, rand(MiB, 4))], discards=[(3 * MiB, MiB)])
    during = engine_checksum(conn, raw, "sha256")
    assert ops.finalize_backup(conn, vm.id, b.id) == "succeeded"
    assert engine_checksum(conn, raw, "sha256") == during
    assert [v["format"] for v in volumes(engine, raw)] == ["raw"]
    conn.vms.remove(vm.id)
