"""The runs a chunk repository records (``runs/VM/POINT``): which ones the
next backup of the VM cleans up after, and which ones stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from helpers import MiB, make_raw

from imagetool import formats
from imagetool.backup.destination import ChunkDestination
from imagetool.backup.repo import RepositoryError
from imagetool.backup.store import ChunkStore, DiskSource, open_storage, write_point
from imagetool.backup.store.gc import LEASE_TTL
from imagetool.errors import ImagetoolError


@pytest.fixture
def store(tmp_path):
    return ChunkStore.init(open_storage(str(tmp_path / "repo"), create=True), chunk_size=MiB)


def record(store, point, host, pid, age=0.0):
    name = f"runs/vm1/{point}"
    store.put_doc(name, {"snapshot_id": "s1", "run": {"host": host, "pid": pid}})
    if age:
        path = os.path.join(store.url, name)
        os.utime(path, (time.time() - age, time.time() - age))
    return name


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_dead_run_of_this_host_is_cleaned_up(store):
    record(store, "p1", socket.gethostname(), dead_pid())
    [run] = ChunkDestination(store).interrupted("vm1")
    assert (run.point, run.state["snapshot_id"]) == ("p1", "s1")
    run.discard()
    assert not list(store.storage.list("runs/"))


def test_a_live_run_stops_the_backup(store):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record(store, "p1", socket.gethostname(), child.pid)
        with pytest.raises(RepositoryError, match=f"another backup of VM vm1 is running "
                                                  f"\\(point p1, host .*, process {child.pid}"):
            ChunkDestination(store).interrupted("vm1")
    finally:
        child.kill()
        child.wait()


def test_another_hosts_run_is_over_once_its_record_is_older_than_a_lease(store):
    record(store, "p1", "elsewhere", 1)
    with pytest.raises(RepositoryError, match="host elsewhere"):
        ChunkDestination(store).interrupted("vm1")
    record(store, "p1", "elsewhere", 1, age=LEASE_TTL + 60)
    assert [r.point for r in ChunkDestination(store).interrupted("vm1")] == ["p1"]


def test_the_record_of_a_point_that_was_made_is_only_dropped(store, tmp_path):
    raw = str(tmp_path / "d.raw")
    make_raw(raw, MiB, [(0, 4096)])
    with formats.open_image(raw, "r") as b:
        write_point(store, "vm1", [DiskSource("d1", b)], name="p1")
    record(store, "p1", socket.gethostname(), dead_pid())
    assert ChunkDestination(store).interrupted("vm1") == []
    assert not list(store.storage.list("runs/"))


def test_a_second_backup_of_a_vm_at_once_is_refused(conn, cli, engine_env, store):
    from backup_helpers import make_vm

    vm, _ = make_vm(conn, [("cow", MiB)])
    with ChunkDestination(store).locked(vm.id):
        code, out, err = cli("backup", "create", store.url, vm.id)
    assert (code, err) == (1, f"imagetool: error: VM {vm.id}: {store.url}: another backup "
                              f"of VM {vm.id} is running\n")
    assert not list(store.storage.list("points/"))
    conn.vms.remove(vm.id)


@pytest.mark.parametrize("run", ["a string", ["a", "list"], 7])
def test_a_record_whose_run_is_not_an_object_is_an_old_run(store, run):
    # The repository is not trusted: a malformed record is a run of no
    # known host, over once older than a lease, never a traceback.
    store.put_doc("runs/vm1/p1", {"snapshot_id": "s1", "run": run})
    path = os.path.join(store.url, "runs/vm1/p1")
    os.utime(path, (time.time() - LEASE_TTL - 60,) * 2)
    assert [r.point for r in ChunkDestination(store).interrupted("vm1")] == ["p1"]


def test_the_lock_files_live_in_a_private_directory_of_the_user(store, tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with ChunkDestination(store).locked("vm1"):
        locks = runtime / "imagetool" / "locks"
        assert locks.is_dir() and os.stat(locks).st_mode & 0o777 == 0o700
        assert len(os.listdir(locks)) == 1
    os.chmod(locks, 0o777)
    with pytest.raises(ImagetoolError, match="not a private directory of this user"):
        with ChunkDestination(store).locked("vm1"):
            pass
