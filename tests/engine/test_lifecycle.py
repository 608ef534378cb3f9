"""The one snapshot lifecycle (engine/lifecycle.py) against the local engine:
a snapshot taken is ready, one removed is gone with its disks unlocked, and
nothing is left behind when the work around it fails."""

from __future__ import annotations

import uuid

import pytest

from imagetool.engine import lifecycle as life
from imagetool.engine.wait import wait_for_disk
from imagetool.errors import Conflict


@pytest.fixture
def vm(conn):
    name = f"life-{uuid.uuid4().hex[:8]}"
    v = conn.vms.add(name=name)
    d = conn.disks.add(name=f"{name}-d0", provisioned_size=1 << 20, storage_domain="data",
                       format="qcow2")
    wait_for_disk(conn, d.id, timeout=20)
    conn.vms.attach_disk(v.id, d.id)
    yield v, d.id
    conn.vms.remove(v.id)


def _kinds(conn, vm_id):
    return [s.snapshot_type for s in conn.snapshots.list(vm_id)]


def test_a_temporary_snapshot_is_ready_inside_and_gone_after(conn, vm):
    v, disk_id = vm
    with life.temporary_snapshot(conn, v.id, "tmp") as snap:
        assert conn.snapshots.get(v.id, snap.id).snapshot_status == "ok"
        assert conn.disks.get(disk_id).status == "ok"
        assert [d.id for d in conn.snapshots.disks(v.id, snap.id)] == [disk_id]
    assert _kinds(conn, v.id) == ["active"]
    assert conn.disks.get(disk_id).status == "ok"
    assert len(conn.disks.snapshots(disk_id)) == 1


def test_a_failed_block_removes_the_snapshot_and_keeps_its_error(conn, vm):
    v, disk_id = vm
    with pytest.raises(KeyError, match="the work failed"):
        with life.temporary_snapshot(conn, v.id, "tmp"):
            raise KeyError("the work failed")
    assert _kinds(conn, v.id) == ["active"]
    assert conn.disks.get(disk_id).status == "ok"


def test_removal_is_asked_again_while_the_engine_answers_409(conn, vm, monkeypatch):
    v, disk_id = vm
    snap = life.take_snapshot(conn, v.id, "s1")
    real_remove = conn.snapshots.remove
    answers = [Conflict("disks locked", status=409)] * 2

    def busy(vm_id, snap_id):
        if answers:
            raise answers.pop()
        real_remove(vm_id, snap_id)

    monkeypatch.setattr(conn.snapshots, "remove", busy)
    life.remove_snapshot(conn, v.id, snap.id, timeout=30)
    assert answers == [] and _kinds(conn, v.id) == ["active"]
    # Gone already is fine.
    life.remove_snapshot(conn, v.id, snap.id, timeout=30)
    assert conn.disks.get(disk_id).status == "ok"
