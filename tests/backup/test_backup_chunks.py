"""``backup create`` and ``backup restore`` with a chunk repository
(backup repository v2) on the local engine, through the CLI: full and
incremental points by both methods, each restored and compared byte for
byte with the disk as it was; encryption and wrong keys; two VMs backed
up at once by two processes; a kill in the middle of a create."""

from __future__ import annotations

import json
import os

import pytest

from helpers import MiB, cli_process, qemu_compare
from backup_helpers import create_after_kill, guest_io, kill_create_when, make_vm, rand

from imagetool.backup.store import (ChunkStore, collect, list_points, load_index,
                                    new_key_file, open_storage, read_key_file, verify)
from imagetool.transfer.disk_checksum import disk_checksum

pytestmark = pytest.mark.slow

METHODS = ["snapshot", "checkpoint"]


@pytest.fixture
def chunk_repo(tmp_path):
    """``make(encrypted=False, chunk_size=1 MiB)``: a new chunk repository
    (path, key file or None). 1 MiB chunks: small disks have many."""
    def make(encrypted: bool = False, chunk_size: int = MiB, name: str = "repo"):
        path = str(tmp_path / name)
        key = None
        if encrypted:
            key = str(tmp_path / f"{name}.key")
            new_key_file(key)
        ChunkStore.init(open_storage(path, create=True), chunk_size=chunk_size,
                        secret=read_key_file(key) if key else None)
        return path, key
    return make


def open_store(path, key=None):
    return ChunkStore.open(open_storage(path), read_key_file(key) if key else None)


def create(cli, repo, vm, *extra):
    code, out, err = cli("backup", "create", repo, vm, "--json", *extra)
    assert code == 0, err
    [r] = json.loads(out)
    return r


def download(cli, disk_id, dest):
    code, _, err = cli("download", disk_id, str(dest))
    assert code == 0, err
    return str(dest)


@pytest.mark.parametrize("method", METHODS)
def test_points_restore_byte_for_byte(conn, cli, engine_env, tmp_path, chunk_repo, method):
    repo, _ = chunk_repo()
    vm, (d0, d1) = make_vm(conn, [("cow", 12 * MiB), ("raw", 4 * MiB)])
    guest_io(conn, d0, writes=[(0, rand(3 * MiB, 1)), (8 * MiB, rand(2 * MiB, 2))])
    guest_io(conn, d1, writes=[(MiB, rand(MiB, 3))])

    made = []       # (result, {disk: image of the disk when the point was made})

    def point(*extra):
        r = create(cli, repo, vm.name, "--method", method, *extra)
        images = {d: download(cli, d, tmp_path / f"{d}-{len(made)}.raw") for d in (d0, d1)}
        made.append((r, images))
        return r

    r = point()
    assert (r["mode"], r["method"], r["vm_id"]) == ("full", method, vm.id)
    assert r["bytes"] == 6 * MiB                  # the data, never the zeros
    # A partly dirty chunk (half of [0, 1 MiB)), a whole one, zeros over data.
    guest_io(conn, d0, writes=[(512 * 1024, rand(512 * 1024, 4)), (5 * MiB, rand(MiB, 5))],
             zeros=[(8 * MiB, MiB)])
    r = point()
    assert r["mode"] == "incremental"
    cow = next(d for d in r["disks"] if d["disk_id"] == d0)
    assert cow["mode"] == "incremental"

    guest_io(conn, d0, discards=[(MiB, MiB)], writes=[(11 * MiB, rand(MiB, 6))])
    guest_io(conn, d1, zeros=[(MiB, MiB)])
    point()

    store = open_store(repo)
    [full, inc1, inc2] = [load_index(store, vm.id, r["point"]) for r, _ in made]
    assert inc1.parent == full.name and inc2.parent == inc1.name
    if method == "checkpoint":      # the point says why its raw disk is full
        m = inc1.disk(d1).meta
        assert m["mode"] == "full" and "not enabled for incremental" in m["reason"]
    f0, i0 = full.disk(d0).chunks, inc1.disk(d0).chunks
    # Chunks no write touched are the parent's; the half-written one is new.
    assert [i for i in range(12) if f0[i] != i0[i]] == [0, 5, 8]
    assert i0[8] is None
    # The dirty ranges only: 1.5 MiB of data and 1 MiB of zero bytes
    # written as data; a discard (a zero extent) is zeroed, not read.
    assert inc1.disk(d0).meta["bytes"] == 1536 * 1024 + MiB
    assert inc2.disk(d0).meta["bytes"] == MiB
    assert verify(store, checksums=True).ok

    for r, images in made:
        code, out, err = cli("backup", "restore", repo, vm.name, "--point", r["point"],
                             "--sd", "data", "--json")
        assert code == 0, err
        restored = json.loads(out)
        for d in restored["disks"]:
            got = download(cli, d["disk_id"], tmp_path / f"restored-{d['disk_id']}.raw")
            qemu_compare(images[d["source_disk_id"]], got)
        conn.vms.remove(restored["vm_id"])
    conn.vms.remove(vm.id)


def test_encrypted_repository_and_wrong_key(conn, cli, engine_env, tmp_path, chunk_repo):
    repo, key = chunk_repo(encrypted=True)
    vm, (d0,) = make_vm(conn, [("cow", 8 * MiB)])
    guest_io(conn, d0, writes=[(MiB, rand(2 * MiB, 7))])
    original = download(cli, d0, tmp_path / "original.raw")
    r = create(cli, repo, vm.id, "--key-file", key)
    assert r["mode"] == "full"
    # Nothing in the repository holds the guest bytes in clear.
    needle = rand(2 * MiB, 7)[:64]
    for root, _, files in os.walk(repo):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert needle not in fh.read()

    other = str(tmp_path / "other.key")
    new_key_file(other)
    for argv in (("backup", "create", repo, vm.id, "--key-file", other),
                 ("backup", "restore", repo, vm.id, "--sd", "data", "--key-file", other)):
        code, out, err = cli(*argv)
        assert (code, err) == (1, f"imagetool: error: {repo}: wrong key for this "
                                  "repository\n")
    code, out, err = cli("backup", "restore", repo, vm.id, "--sd", "data")
    assert (code, err) == (1, f"imagetool: error: {repo}: the repository is encrypted; "
                              "give its --key-file\n")
    assert [n for _, n in list_points(open_store(repo, key), vm.id)] == [r["point"]]

    code, out, err = cli("backup", "restore", repo, vm.id, "--sd", "data", "--key-file", key,
                         "--json")
    assert code == 0, err
    [d] = json.loads(out)["disks"]
    qemu_compare(original, download(cli, d["disk_id"], tmp_path / "restored.raw"))


def test_two_processes_back_up_two_vms_at_once(conn, engine, engine_env, tmp_path, chunk_repo):
    repo, _ = chunk_repo()
    vms = []
    for i in range(2):
        vm, (d,) = make_vm(conn, [("cow", 16 * MiB)])
        # Shared data (a template's) and data of each VM's own.
        guest_io(conn, d, writes=[(0, rand(8 * MiB, 100)), (8 * MiB, rand(4 * MiB, i))])
        vms.append((vm, d))
    procs = [cli_process(dict(os.environ), "backup", "create", repo, vm.id, "--json")
             for vm, _ in vms]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    store = open_store(repo)
    rep = verify(store, checksums=True)
    assert rep.ok and rep.points == 2
    # Each says what it stored: 12 MiB of data, and what it added (the
    # shared chunks may be written by both when they race for them).
    stored = [json.loads(out)[0]["stored"] for out, _ in outs]
    assert [s["data"] for s in stored] == [12 * MiB] * 2
    on_disk = sum(i.size for i in store.storage.list("chunks/"))
    assert on_disk <= sum(s["written"] for s in stored) <= on_disk + 8 * MiB + 4096
    # The shared 8 MiB is stored once: 8 + 4 + 4 chunks.
    assert rep.chunks == 16
    for (vm, d), (out, _) in zip(vms, outs):
        [r] = json.loads(out)
        [disk] = r["disks"]
        c = disk["checksum"]
        assert c["block_size"] == MiB     # the chunk size
        assert c["value"] == disk_checksum(conn, d, algorithm=c["algorithm"],
                                           block_size=MiB)["checksum"]
        conn.vms.remove(vm.id)


@pytest.mark.parametrize("method", METHODS)
def test_kill_9_during_create_leaves_a_consistent_repository(
        faulty_engine, tmp_path, chunk_repo, method):
    fe = faulty_engine
    repo, _ = chunk_repo()
    with fe.connect() as conn:
        vm, (d0,) = make_vm(conn, [("cow", 32 * MiB)])
        guest_io(conn, d0, writes=[(0, rand(32 * MiB, 1))])
    chunks = os.path.join(repo, "chunks")
    kill_create_when(fe, repo, vm.id, method, lambda: os.path.isdir(chunks) and sum(
        len(f) for _, _, f in os.walk(chunks)) >= 2)
    store = open_store(repo)
    assert list_points(store) == []
    rep = verify(store)
    assert rep.ok and rep.points == 0
    orphans = {i.name for i in store.storage.list("chunks/")}
    assert orphans
    # The run's record names what it left on the engine, for the next run.
    assert [i.name.split("/")[1] for i in store.storage.list("runs/")] == [vm.id]
    # Chunks without a point go only in a gc after their grace period.
    assert collect(store).deleted == 0
    create_after_kill(fe, repo, vm.id, method)
    [(_, name)] = list_points(store)
    ix = load_index(store, vm.id, name)
    assert ix.manifest["mode"] == "full"
    assert not list(store.storage.list("runs/"))
    assert verify(store, checksums=True).ok
    with fe.connect() as conn:
        snaps = [s.id for s in conn.snapshots.list(vm.id) if s.snapshot_type != "active"]
        assert snaps == ([ix.manifest["engine"]["snapshot_id"]] if method == "snapshot"
                         else [])
        assert conn.disks.get(d0).status == "ok"
        conn.vms.remove(vm.id)


@pytest.mark.parametrize("method", METHODS)
def test_a_failed_create_leaves_nothing(faulty_engine, fast_backoff, chunk_repo, method):
    from fault_proxy import Respond, Rule

    from imagetool.backup import backup_vm
    from imagetool.errors import ImagetoolError

    fe = faulty_engine
    repo, _ = chunk_repo()
    store = open_store(repo)
    with fe.connect() as conn:
        # Three reads of 8 MiB (runs of chunks are read together): the
        # second fails, after chunks were stored.
        vm, (d0,) = make_vm(conn, [("cow", 24 * MiB)])
        guest_io(conn, d0, writes=[(0, rand(24 * MiB, 1))])
        fe.proxy.add_rule(Rule(method="GET", path_re=r"^/images/[^/?]+$", skip=1,
                               every=True, action=Respond(500)))
        with pytest.raises(ImagetoolError):
            backup_vm(conn, vm.id, store, method=method)
        fe.proxy.clear_rules()
        assert list_points(store) == []
        assert [i.name for i in store.storage.list("runs/")] == []
        assert [i.name for i in store.storage.list("leases/")] == []
        assert [s.id for s in conn.snapshots.list(vm.id) if s.snapshot_type != "active"] == []
        assert [c.id for c in conn.checkpoints.list(vm.id)] == []
        assert conn.disks.get(d0).status == "ok"
        conn.vms.remove(vm.id)
