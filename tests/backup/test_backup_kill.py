"""``kill -9`` of ``imagetool backup create`` in the middle of a disk: no
visible point, no disk left locked once the engine's inactivity timeout
ends the transfer, and the next run cleans up and says it starts over."""

from __future__ import annotations

import pytest

from helpers import MiB
from backup_helpers import create_after_kill, guest_io, kill_create_when, make_vm, rand

from imagetool import backup

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["snapshot", "checkpoint"])
def test_kill_9_during_create(faulty_engine, tmp_path, method):
    fe = faulty_engine
    repo = str(tmp_path / "repo")
    with fe.connect() as conn:
        vm, (d0,) = make_vm(conn, [("cow", 32 * MiB)])
        guest_io(conn, d0, writes=[(0, rand(32 * MiB, 1))])
    kill_create_when(fe, repo, vm.id, method, lambda: fe.proxy.stats.body_bytes_down >= MiB)
    assert backup.Repository(repo).points(vm.id) == []
    # The engine ends the abandoned transfer: the disk is unlocked.
    create_after_kill(fe, repo, vm.id, method)
    [p] = backup.Repository(repo).points(vm.id)
    assert p.manifest.mode == "full"
    with fe.connect() as conn:
        snaps = [s.id for s in conn.snapshots.list(vm.id) if s.snapshot_type != "active"]
        assert snaps == ([p.manifest.engine["snapshot_id"]] if method == "snapshot" else [])
        assert conn.disks.get(d0).status == "ok"
        conn.vms.remove(vm.id)
