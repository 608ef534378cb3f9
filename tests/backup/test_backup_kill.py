"""``kill -9`` of ``imagetool backup create`` in the middle of a disk: no
visible point, no disk left locked once the engine's inactivity timeout
ends the transfer, and the next run cleans up and says it starts over."""

from __future__ import annotations

import signal
import time

import pytest

from fault_proxy import Delay, Rule
from helpers import MiB, cli_process, wait_settled
from backup_helpers import guest_io, make_vm, rand

from imagetool import backup

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["snapshot", "checkpoint"])
def test_kill_9_during_create(faulty_engine, tmp_path, method):
    fe = faulty_engine
    repo = str(tmp_path / "repo")
    with fe.connect() as conn:
        vm, (d0,) = make_vm(conn, [("cow", 32 * MiB)])
        guest_io(conn, d0, writes=[(0, rand(32 * MiB, 1))])
    # Slow reads of image data: the copy lasts long enough to aim the kill.
    fe.proxy.add_rule(Rule(method="GET", path_re=r"^/images/[^/?]+$", every=True,
                           action=Delay(0.3)))
    proc = cli_process(fe.env, "backup", "create", repo, vm.id, "--method", method,
                       "--workers", "1", "--inactivity-timeout", "1")
    deadline = time.monotonic() + 60
    while fe.proxy.stats.body_bytes_down < MiB:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no data moved"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert backup.Repository(repo).points(vm.id) == []
    # The engine ends the abandoned transfer: the disk is unlocked.
    wait_settled(fe, timeout=30)
    fe.proxy.clear_rules()
    proc = cli_process(fe.env, "backup", "create", repo, vm.id, "--method", method)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"an interrupted backup of VM {vm.id}" in err and "starting over" in err
    [p] = backup.Repository(repo).points(vm.id)
    assert p.manifest["mode"] == "full"
    with fe.connect() as conn:
        snaps = [s.id for s in conn.snapshots.list(vm.id) if s.snapshot_type != "active"]
        assert snaps == ([p.manifest["engine"]["snapshot_id"]] if method == "snapshot" else [])
        assert conn.disks.get(d0).status == "ok"
        conn.vms.remove(vm.id)
