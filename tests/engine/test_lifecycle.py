"""The one snapshot lifecycle (engine/lifecycle.py) against the local engine.
Its temporary snapshot is proved by OVA export (tests/ova), its cleanup
after a failed wait by tests/vms and tests/backup."""

from __future__ import annotations

import pytest

from imagetool.engine import lifecycle as life
from imagetool.engine.wait import wait_for_disk
from imagetool.errors import Conflict


@pytest.mark.slow
def test_removal_is_asked_again_while_the_engine_answers_409(conn, monkeypatch):
    v = conn.vms.add(name="life-409")
    d = wait_for_disk(conn, conn.disks.add(name="life-409-d0", provisioned_size=1 << 20,
                                           storage_domain="data", format="qcow2").id)
    conn.vms.attach_disk(v.id, d.id)
    snap = life.take_snapshot(conn, v.id, "s1")
    real_remove = conn.snapshots.remove
    answers = [Conflict("disks locked", status=409)] * 2

    def busy(vm_id, snap_id):
        if answers:
            raise answers.pop()
        real_remove(vm_id, snap_id)

    monkeypatch.setattr(conn.snapshots, "remove", busy)
    life.remove_snapshot(conn, v.id, snap.id, timeout=30)
    assert answers == []
    assert [s.snapshot_type for s in conn.snapshots.list(v.id)] == ["active"]
    life.remove_snapshot(conn, v.id, snap.id, timeout=30)    # gone already is fine
    assert conn.disks.get(d.id).status == "ok"
    conn.vms.remove(v.id)
