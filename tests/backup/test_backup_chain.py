"""Backups on the local engine, end to end through the CLI: full then
incremental points, every point restored and compared with the disk's
checksum taken when the point was made, prune, verify, interruptions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from helpers import MiB, qemu_img
from backup_helpers import (engine_checksum, files_under, guest_io, make_vm, rand,
                            ready_backup)

from imagetool import backup
from imagetool.checksum import checksum_file

pytestmark = pytest.mark.slow

METHODS = ["snapshot", "checkpoint"]


def create(cli, vm, repo, method, *extra):
    code, out, err = cli("backup", "create", repo, vm, "--method", method, "--json", *extra)
    assert code == 0, err
    [r] = json.loads(out)
    return r


def snapshot_states(conn, disk_ids, algorithm):
    return {d: engine_checksum(conn, d, algorithm) for d in disk_ids}


@pytest.mark.parametrize("method", METHODS)
def test_points_restore_to_the_disks_as_they_were(conn, cli, engine_env, tmp_path, method):
    vm, (d0, d1) = make_vm(conn, [("cow", 24 * MiB), ("raw", 8 * MiB)])
    repo = str(tmp_path / "repo")
    guest_io(conn, d0, writes=[(0, rand(6 * MiB, 1)), (16 * MiB, rand(4 * MiB, 2))])
    guest_io(conn, d1, writes=[(MiB, rand(2 * MiB, 3))])

    made = []       # (result, {disk: engine checksum when the point was made})
    r = create(cli, vm.name, repo, method)
    alg = backup.Repository(repo).point(vm.id).manifest.disks[0].checksum.algorithm
    made.append((r, snapshot_states(conn, (d0, d1), alg)))
    assert (r["mode"], r["method"], r["vm_id"], r["vm_name"]) == \
        ("full", method, vm.id, vm.name)
    assert r["bytes"] == (6 + 4 + 2) * MiB        # the data written, no zeros

    # Data, zeros written over data, and discards (the zero operation).
    guest_io(conn, d0, writes=[(8 * MiB, rand(MiB, 4))], zeros=[(0, MiB)],
             discards=[(16 * MiB, 2 * MiB)])
    r = create(cli, vm.name, repo, method)
    made.append((r, snapshot_states(conn, (d0, d1), alg)))
    assert r["mode"] == "incremental"

    guest_io(conn, d0, discards=[(2 * MiB, MiB)], writes=[(20 * MiB, rand(MiB, 5))])
    guest_io(conn, d1, zeros=[(MiB, MiB)])
    r = create(cli, vm.name, repo, method)
    made.append((r, snapshot_states(conn, (d0, d1), alg)))
    assert r["mode"] == "incremental"

    for r, sums in made:
        assert {d["disk_id"]: d["checksum"]["value"] for d in r["disks"]} == sums
    # The incrementals of the cow disk moved its new data only.
    inc = made[1][0]
    cow = backup.Repository(repo).point(vm.id, inc["point"]).disk(d0)
    assert cow.bytes == MiB and cow.files.backing == f"../{made[0][0]['point']}/{d0}.qcow2"

    code, out, err = cli("backup", "verify", repo, "--json")
    assert code == 0, err
    assert json.loads(out)["points"] == 3

    # qemu-img reads the chain as it is: same guest data as the manifest says.
    last = made[-1][0]["disks"][0]
    flat = str(tmp_path / "flat.raw")
    qemu_img("convert", "-O", "raw", last["path"], flat)
    assert checksum_file(flat, algorithm=alg)["checksum"] == last["checksum"]["value"]

    for r, sums in made:
        code, out, err = cli("backup", "restore", repo, vm.name, "--point", r["point"],
                             "--sd", "data", "--json")
        assert code == 0, err
        got = json.loads(out)
        assert sorted(d["checksum"]["value"] for d in got["disks"]) == sorted(sums.values())
        atts = {a.disk_id for a in conn.vms.disk_attachments(got["vm_id"])}
        assert atts == {d["disk_id"] for d in got["disks"]}
        for d in got["disks"]:
            assert engine_checksum(conn, d["disk_id"], alg) == sums[d["source_disk_id"]]
        conn.vms.remove(got["vm_id"])

    # Prune to the newest two: the full point is merged into the next one.
    before = backup.list_points(repo)[0]["points"]
    code, out, err = cli("backup", "prune", repo, "--keep", "2", "--json")
    assert code == 0, err
    [p] = json.loads(out)
    assert p["removed"] == [made[0][0]["point"]] and p["merged"] == [made[1][0]["point"]]
    assert not os.path.exists(made[0][0]["path"])
    after = backup.list_points(repo)[0]["points"]
    assert [x["point"] for x in after] == [made[1][0]["point"], made[2][0]["point"]]
    assert after[0]["mode"] == "full" and after[0]["parent"] is None
    assert sum(x["size"] for x in after) < sum(x["size"] for x in before)
    code, _, err = cli("backup", "verify", repo)
    assert code == 0, err
    for r, sums in made[1:]:
        got = backup.restore_vm(conn, repo, vm.id, point=r["point"], storage_domain="data")
        assert sorted(d.checksum.value for d in got.disks) == sorted(sums.values())
        conn.vms.remove(got.vm_id)
    conn.vms.remove(vm.id)


@pytest.mark.parametrize("method", METHODS)
def test_verify_names_a_flipped_byte_in_any_file(conn, cli, engine_env, tmp_path, method):
    vm, (d0,) = make_vm(conn)
    repo = str(tmp_path / "repo")
    guest_io(conn, d0, writes=[(0, rand(2 * MiB, 7))])
    create(cli, vm.id, repo, method)
    guest_io(conn, d0, writes=[(4 * MiB, rand(MiB, 8))])
    create(cli, vm.id, repo, method)
    code, _, err = cli("backup", "verify", repo)
    assert code == 0, err
    files = [f for f in files_under(repo) if not f.endswith(("manifest.json", ".lock"))]
    assert len(files) == 6      # 2 points x (qcow2, digests, ovf)
    for f in files:
        copy = str(tmp_path / "copy")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(repo, copy)
        target = os.path.join(copy, os.path.relpath(f, repo))
        with open(target, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(size // 2)
            b = fh.read(1)
            fh.seek(size // 2)
            fh.write(bytes([b[0] ^ 0x01]))
        code, out, err = cli("backup", "verify", copy)
        assert code == 1
        assert err.startswith(f"imagetool: error: {target}: "), err
    conn.vms.remove(vm.id)


def test_full_when_the_base_snapshot_is_gone(conn, cli, engine_env, tmp_path):
    vm, (d0,) = make_vm(conn)
    repo = str(tmp_path / "repo")
    guest_io(conn, d0, writes=[(0, rand(MiB, 9))])
    r1 = create(cli, vm.id, repo, "snapshot")
    base = backup.Repository(repo).point(vm.id).manifest.engine["snapshot_id"]
    conn.snapshots.remove(vm.id, base)
    code, out, err = cli("backup", "create", repo, vm.id, "--method", "snapshot")
    assert code == 0, err
    assert f"full backup: the engine no longer has the base snapshot {base}" in err
    assert "full point" in out
    r3 = create(cli, vm.id, repo, "snapshot", "--full")
    assert r3["mode"] == "full" and r3["reason"] == "a full backup was asked"
    # Only the newest point's snapshot stays on the engine.
    kept = backup.Repository(repo).point(vm.id).manifest.engine["snapshot_id"]
    assert [s.id for s in conn.snapshots.list(vm.id) if s.snapshot_type != "active"] == [kept]
    assert r1["point"] != r3["point"]
    conn.vms.remove(vm.id)


@pytest.mark.parametrize("method", METHODS)
def test_interrupted_backup_leaves_no_point_and_nothing_locked(conn, tmp_path, method):
    vm, (d0,) = make_vm(conn)
    repo = str(tmp_path / "repo")
    guest_io(conn, d0, writes=[(0, rand(8 * MiB, 10))])
    backup.backup_vm(conn, vm.id, repo, method=method)
    guest_io(conn, d0, writes=[(8 * MiB, rand(8 * MiB, 11))])
    snaps_before = [s.id for s in conn.snapshots.list(vm.id)]

    def interrupt(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backup.backup_vm(conn, vm.id, repo, method=method, progress=interrupt)
    assert len(backup.Repository(repo).points(vm.id)) == 1
    assert os.listdir(os.path.join(repo, vm.id)) == [backup.Repository(repo).point(vm.id).name,
                                                     ".lock"] or \
        sorted(os.listdir(os.path.join(repo, vm.id))) == sorted(
            [backup.Repository(repo).point(vm.id).name, ".lock"])
    assert [s.id for s in conn.snapshots.list(vm.id)] == snaps_before
    assert conn.disks.get(d0).status == "ok"
    items = conn.backups.list(vm.id)
    assert all(b.phase in ("succeeded", "failed") for b in items)
    assert len(items) == (2 if method == "checkpoint" else 0)
    conn.vms.remove(vm.id)


def test_full_when_the_base_checkpoint_is_gone(conn, cli, engine_env, tmp_path):
    vm, (d0,) = make_vm(conn)
    repo = str(tmp_path / "repo")
    guest_io(conn, d0, writes=[(0, rand(MiB, 15))])
    create(cli, vm.id, repo, "checkpoint")
    cp = backup.Repository(repo).point(vm.id).manifest.engine["checkpoint_id"]
    conn.checkpoints.remove(vm.id, cp)
    code, out, err = cli("backup", "create", repo, vm.id)     # auto: checkpoint here
    assert code == 0, err
    assert f"full backup: the engine no longer has the base checkpoint {cp}" in err
    assert "full point" in out and "by checkpoint" in out
    conn.vms.remove(vm.id)


def test_backup_reads_the_disk_as_it_was_at_the_start(conn, tmp_path):
    """Writes after the backup started do not reach its transfers."""
    from imagetool.backup import engine_ops as ops
    from imagetool.backup.fetch import fetch_disk

    vm, (d0,) = make_vm(conn)
    guest_io(conn, d0, writes=[(0, rand(2 * MiB, 16))])
    before = engine_checksum(conn, d0, "sha256")
    b = ready_backup(conn, vm.id, [d0])
    guest_io(conn, d0, writes=[(0, rand(MiB, 17))], discards=[(MiB, MiB)])
    got = fetch_disk(conn, disk_id=d0, out=str(tmp_path / "d.qcow2"), backup_id=b.id,
                     algorithm="sha256")
    assert got.checksum == before and got.checksum_source == "engine"
    assert ops.finalize_backup(conn, vm.id, b.id) == "succeeded"
    assert engine_checksum(conn, d0, "sha256") != before
    conn.vms.remove(vm.id)


def test_list_shows_points_size_and_data(conn, cli, engine_env, tmp_path):
    vm, (d0,) = make_vm(conn)
    repo = str(tmp_path / "repo")
    guest_io(conn, d0, writes=[(0, rand(3 * MiB, 12))])
    r1 = create(cli, vm.id, repo, "snapshot")
    guest_io(conn, d0, writes=[(8 * MiB, rand(MiB, 13))])
    r2 = create(cli, vm.id, repo, "snapshot")
    code, out, err = cli("backup", "list", repo, "--json")
    assert code == 0, err
    [v] = json.loads(out)
    assert v["vm_id"] == vm.id and v["vm_name"] == vm.name
    assert [(p["point"], p["mode"], p["data"]) for p in v["points"]] == \
        [(r1["point"], "full", 3 * MiB), (r2["point"], "incremental", MiB)]
    assert all(p["size"] >= p["data"] for p in v["points"])
    code, out, _ = cli("backup", "list", repo)
    assert f"  {r2['point']}  incremental" in out and f"<- {r1['point']}" in out
    conn.vms.remove(vm.id)


def test_verify_of_a_missing_directory_fails(cli, tmp_path):
    code, _, err = cli("backup", "verify", str(tmp_path / "nope"))
    assert code == 1
    assert "no such backup directory" in err


def test_qemu_img_check_accepts_every_file(conn, tmp_path):
    vm, (d0,) = make_vm(conn)
    repo = str(tmp_path / "repo")
    guest_io(conn, d0, writes=[(0, rand(2 * MiB, 14))])
    backup.backup_vm(conn, vm.id, repo, method="snapshot")
    guest_io(conn, d0, discards=[(0, MiB)])
    r = backup.backup_vm(conn, vm.id, repo, method="snapshot")
    out = subprocess.run(["qemu-img", "check", "--output=json", r["disks"][0]["path"]],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["check-errors"] == 0
    conn.vms.remove(vm.id)
