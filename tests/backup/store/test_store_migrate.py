"""``imagetool backup migrate OLD NEW``: every point of a qcow2-chain
repository into a chunk repository, byte for byte, OLD untouched."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from backup_helpers import add_point, files_under, point_bytes, rand
from helpers import MiB
from test_store_cli import repo_args

from imagetool.backup.manifest import Manifest, RepositoryError
from imagetool.backup.repo import Repository
from imagetool.backup.store import ChunkStore, PointBackend, list_points, load_index, open_storage


def snapshot(root):
    out = {}
    for path in files_under(root):
        st = os.lstat(path)
        with open(path, "rb") as f:
            out[path] = (hashlib.sha256(f.read()).hexdigest(), st.st_mtime_ns, st.st_mode)
    return out


def old_repository(root):
    """vm1: a full point then two incrementals of two disks (the second
    disk added at the second point, so it starts full there); vm2: one."""
    a0, b0 = rand(6 * MiB, 1), None
    a1 = a0[:MiB] + rand(64 * 1024, 2) + a0[MiB + 64 * 1024:]
    b1 = bytes(2 * MiB) + rand(MiB, 3) + bytes(MiB)
    a2 = a1[:5 * MiB] + bytes(MiB)
    b2 = b1[:100] + b"\x07" * 300 + b1[400:]
    add_point(root, "vm1", {"a": (a0, None)})
    add_point(root, "vm1", {"a": (a1, a0), "b": (b1, b0)})
    add_point(root, "vm1", {"a": (a2, a1), "b": (b2, b1)})
    add_point(root, "vm2", {"c": (rand(3 * MiB + 4096, 9), None)})


@pytest.mark.slow
def test_migrate_moves_every_point_byte_for_byte(cli, target, tmp_path):
    old = str(tmp_path / "old")
    old_repository(old)
    before = snapshot(old)
    assert cli("backup", "init", *repo_args(target), "--chunk-size", "4")[0] == 0
    code, out, err = cli("backup", "migrate", old, *repo_args(target))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("migrated 4 points (") and lines[0].endswith(
        "skipped 0 points already in " + target.url.rstrip("/"))
    assert lines[1] == "verified 4 points as written (chunks and guest checksums): ok"
    assert snapshot(old) == before

    repo = Repository(old)
    store = ChunkStore.open(target.open())
    assert [p for p in list_points(store)] == [
        (v, p.name) for v in repo.vm_ids() for p in repo.points(v)]
    for vm_id in repo.vm_ids():
        for p in repo.points(vm_id):
            ix = load_index(store, vm_id, p.name)
            assert (ix.parent, ix.timestamp) == (p.parent, p.timestamp)
            assert ix.ovf == f"<ovf vm='{vm_id}'/>"
            # What restore checks first: the facts, the OVF's SHA-256 among them.
            assert Manifest.from_index(ix, "x").ovf.sha256 == p.manifest.ovf.sha256
            assert ix.manifest["vm_name"] == "vm" and ix.manifest["mode"] == p.manifest.mode
            assert ix.manifest["migrated_from"] == {"repository": os.path.abspath(old),
                                                    "point": p.name}
            assert [d.disk_id for d in ix.disks] == [d.disk_id for d in p.manifest.disks]
            for d in ix.disks:
                assert d.meta["checksum"] == p.disk(d.disk_id).checksum.to_json()
                assert "file" not in d.meta and "sha256" not in d.meta
                got = PointBackend(store, d).read(0, d.virtual_size)
                assert got == point_bytes(old, vm_id, p.name, d.disk_id)
    # An incremental reads only what its own layer holds: 64 KiB of disk a
    # (its first 4 MiB chunk rebuilt, the second taken from the parent's
    # index), disk b whole (new at that point): 8 MiB, not a's 6 + b's 4.
    second = load_index(store, "vm1", repo.points("vm1")[1].name)
    assert second.stats["data"] == 8 * MiB


def test_a_point_migrated_without_its_ovf_record_still_restores(cli, tmp_path):
    """``backup migrate`` of the previous release wrote no ``ovf`` record;
    restore checks the facts first and refused every such point."""
    from imagetool.backup.store.points import save_index
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    add_point(old, "vm1", {"a": (rand(MiB, 1), None)})
    assert cli("backup", "init", new)[0] == 0
    assert cli("backup", "migrate", old, new)[0] == 0
    store = ChunkStore.open(open_storage(new))
    [(vm_id, name)] = list_points(store)
    ix = load_index(store, vm_id, name)
    del ix.manifest["ovf"]
    save_index(store, ix)
    ix = load_index(store, vm_id, name)
    assert Manifest.from_index(ix, "x").ovf.sha256 == hashlib.sha256(ix.ovf.encode()).hexdigest()
    # Only a migrated point is taken so: another without the record is refused.
    del ix.manifest["migrated_from"]
    with pytest.raises(RepositoryError, match="ovf"):
        Manifest.from_index(ix, "x")


@pytest.mark.slow
def test_migrate_again_skips_what_is_there_and_finishes_an_interrupted_run(cli, tmp_path):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    old_repository(old)
    cli("backup", "init", new, "--chunk-size", "1")
    assert cli("backup", "migrate", old, new)[0] == 0
    last = Repository(old).points("vm1")[-1].name
    os.unlink(os.path.join(new, "points", "vm1", last))     # as if killed before its index
    code, out, err = cli("backup", "migrate", old, new, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["written"] == [{"vm_id": "vm1", "point": last}]
    assert len(doc["skipped"]) == 3 and doc["ok"] is True and doc["failed"] == []
    code, out, _ = cli("backup", "migrate", old, new, "--json")
    assert json.loads(out)["written"] == []


@pytest.mark.slow
def test_migrate_needs_a_chunk_repository_made_first(cli, tmp_path):
    old = str(tmp_path / "old")
    old_repository(old)
    code, _, err = cli("backup", "migrate", old, tmp_path / "new")
    assert code == 2 and "make it first with imagetool backup init" in err
    assert not os.path.exists(tmp_path / "new")


@pytest.mark.slow
def test_a_damaged_old_point_is_named_and_not_kept(cli, tmp_path):
    """A data cluster of vm1's first point changed on disk: that point and
    the incrementals reading it through their chains fail their guest
    checksums and are not kept; vm2 moves; OLD is not touched."""
    from helpers import qemu_map
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    old_repository(old)
    first = Repository(old).points("vm1")[0]
    path = first.file("a.qcow2")
    offset = next(m["offset"] for m in qemu_map(path) if m["data"] and "offset" in m)
    with open(path, "r+b") as f:
        f.seek(offset + 4 * MiB + 123)     # inside disk a's second chunk: kept by all points
        f.write(b"\xee")
    before = snapshot(old)
    cli("backup", "init", new)
    code, out, err = cli("backup", "migrate", old, new, "--json")
    assert code == 1
    doc = json.loads(out)
    names = [p.name for p in Repository(old).points("vm1")]
    assert [(f["vm_id"], f["point"]) for f in doc["failed"]] == [("vm1", n) for n in names]
    assert doc["written"] == [{"vm_id": "vm2", "point": Repository(old).points("vm2")[0].name}]
    assert f"imagetool: error: point vm1 {first.name} not migrated: disk a: guest checksum" in err
    store = ChunkStore.open(open_storage(new))
    assert [v for v, _ in list_points(store)] == ["vm2"]
    assert snapshot(old) == before
