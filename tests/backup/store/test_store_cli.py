"""``imagetool backup`` on chunk repositories: init, list, export, prune,
gc, verify, end to end, on a directory and on S3 (RGW); and the same
commands on a qcow2-chain repository still behaving as before."""

from __future__ import annotations

import json
import os

import pytest
from helpers import KiB, MiB, make_raw, qemu_check, qemu_compare

from imagetool import checksum as block_checksum
from imagetool.backup.store import ChunkStore, DiskSource, open_storage, read_key_file, write_point
from imagetool.backup.store.chunkstore import chunk_name
from imagetool.formats import open_image


def repo_args(target):
    return [target.url] + (["--endpoint", target.endpoint] if target.endpoint else [])


def add_point(target, vm, disks, *, key=None, name=None, parent=None, vm_name="web"):
    """Write a point of ``vm`` from raw files (``{disk_id: path}``), each
    disk's guest checksum recorded as a backup records it."""
    storage = open_storage(target.url, endpoint=target.endpoint)
    store = ChunkStore.open(storage, read_key_file(key) if key else None)
    sources = []
    for disk_id, path in disks.items():
        c = block_checksum.checksum_file(path, format="raw")
        meta = {"checksum": {"algorithm": c["algorithm"], "block_size": c["block_size"],
                             "value": c["checksum"]}, "name": f"{vm}-{disk_id}"}
        sources.append(DiskSource(disk_id, open_image(path, "r", format="raw"), meta=meta))
    try:
        return write_point(store, vm, sources, ovf=f"<ovf vm='{vm}'/>", name=name,
                           manifest={"vm_name": vm_name, "mode": "full"})
    finally:
        for s in sources:
            s.backend.close()


@pytest.mark.slow
def test_backup_commands_on_a_chunk_repository(cli, target, tmp_path):
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 9 * MiB, [(0, 5 * MiB + 7 * KiB)], seed=5)
    code, out, err = cli("backup", "init", *repo_args(target), "--chunk-size", "1")
    assert code == 0 and out.startswith("initialised repository"), err
    code, _, err = cli("backup", "init", *repo_args(target))
    assert code == 1 and "already a repository" in err
    first = add_point(target, "vm1", {"disk1": raw})
    second = add_point(target, "vm1", {"disk1": raw})

    code, out, err = cli("backup", "list", *repo_args(target), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [(v["vm_id"], v["vm_name"]) for v in doc] == [("vm1", "web")]
    rows = doc[0]["points"]
    assert [r["point"] for r in rows] == [first.name, second.name]
    assert rows[0]["size"] == rows[0]["stored"] and rows[0]["mode"] == "full"
    assert rows[0]["logical"] == 9 * MiB and rows[0]["data"] == 6 * MiB
    assert rows[0]["new"] == 6 * MiB and 0 < rows[0]["stored"] < 6 * MiB
    assert rows[0]["dedup"] == 1.0 and rows[0]["compression"] > 1
    assert rows[1]["new"] == 0 and rows[1]["stored"] == 0 and rows[1]["dedup"] is None
    code, out, _ = cli("backup", "list", *repo_args(target), "--vm", "web")
    lines = out.splitlines()
    assert lines[0] == "VM web (vm1): 2 points"
    assert lines[3].startswith(f"{target.url}: 2 points, 12.00 MiB of data in 6 chunks taking ")
    assert lines[1].startswith(f"  {first.name}  logical  9.00 MiB  data  6.00 MiB  new  6.00 MiB")
    assert lines[2].endswith("stored       0 B  dedup      -  compression      -")

    code, out, err = cli("backup", "export", *repo_args(target), "web", tmp_path / "out",
                         "--format", "raw")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "out" / "disk1.raw")
    qemu_compare(raw, out.strip(), "raw", "raw")
    assert (tmp_path / "out" / "vm.ovf").read_text() == "<ovf vm='vm1'/>"
    code, out, err = cli("backup", "export", *repo_args(target), "vm1", tmp_path / "q",
                         "--point", first.name)
    assert code == 0, err
    assert qemu_check(out.strip()).get("check-errors", 0) == 0
    qemu_compare(raw, out.strip(), "raw", "qcow2")
    assert oct(os.stat(out.strip()).st_mode & 0o777) == "0o600"
    code, _, err = cli("backup", "export", *repo_args(target), "vm1", tmp_path / "q")
    assert code == 1 and "disk1.qcow2" in err          # exists: refused, not replaced

    code, out, err = cli("backup", "verify", *repo_args(target))
    assert (code, out) == (0, "verified 2 points, 6 of 6 chunks read (6.00 MiB): ok\n"), err

    code, out, _ = cli("backup", "prune", *repo_args(target), "--keep-last", "1", "--dry-run",
                       "--json")
    assert json.loads(out) == [{"vm_id": "vm1", "dry_run": True, "kept": [second.name],
                                "removed": [first.name], "merged": [], "decisions": [
                                    {"point": first.name, "keep": False,
                                     "reason": "no rule keeps it"},
                                    {"point": second.name, "keep": True, "reason": "last 1"}]}]
    code, out, _ = cli("backup", "prune", *repo_args(target), "--keep-last", "1", "--dry-run")
    assert out.splitlines() == [f"would remove vm1 {first.name}: no rule keeps it",
                                f"keep   vm1 {second.name}: last 1"]
    code, out, err = cli("backup", "prune", *repo_args(target), "--keep-last", "1")
    assert out.splitlines()[0] == f"remove vm1 {first.name}: no rule keeps it"
    assert "run backup gc" in err
    code, out, _ = cli("backup", "gc", *repo_args(target), "--json")
    assert code == 0 and json.loads(out)["indexes"] == 1
    code, out, _ = cli("backup", "verify", *repo_args(target), "--json")
    assert code == 0 and json.loads(out)["ok"] is True and json.loads(out)["points"] == 1


def test_verify_checks_guest_checksums_from_chunk_digests(cli, tmp_path):
    """With 4 MiB chunks the checksum is combined from the digests taken
    while the chunks are checked; a recorded checksum that differs is named."""
    repo = str(tmp_path / "r")
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 10 * MiB, [(0, 3 * MiB), (8 * MiB, 2 * MiB)], seed=7)
    assert cli("backup", "init", repo)[0] == 0
    target = type("T", (), {"url": repo, "endpoint": None})()
    good = add_point(target, "vm1", {"d": raw})
    store = ChunkStore.open(open_storage(repo))
    bad = write_point(store, "vm1", [DiskSource("d", open_image(raw, "r", format="raw"),
                                                meta={"checksum": {"algorithm": "blake2b",
                                                                   "block_size": 4 * MiB,
                                                                   "value": "00" * 32}})])
    code, out, err = cli("backup", "verify", repo, "--json")
    assert code == 1
    doc = json.loads(out)
    problem = (f"disk d: guest checksum {good.disks[0].meta['checksum']['value']} differs "
               f"from the recorded {'00' * 32}")
    assert doc["damaged"] == [{"vm_id": "vm1", "point": bad.name, "problems": [problem]}]
    assert doc["errors"] == [{"path": f"vm1/{bad.name}", "error": problem}]
    assert f"point vm1 {bad.name}: disk d: guest checksum" in err


def test_verify_names_damaged_points_and_what_they_lost(cli, tmp_path):
    repo = str(tmp_path / "r")
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 4 * MiB, [(0, 4 * MiB)], seed=6)
    cli("backup", "init", repo, "--chunk-size", "1")
    target = type("T", (), {"url": repo, "endpoint": None})()
    point = add_point(target, "vm1", {"d": raw}).name
    ids = add_point(target, "vm1", {"d": raw}).disks[0].chunks
    os.unlink(os.path.join(repo, chunk_name(ids[0])))
    with open(os.path.join(repo, chunk_name(ids[2])), "r+b") as f:
        f.seek(20)
        f.write(b"\xff" * 8)
    code, out, err = cli("backup", "verify", repo)
    assert code == 1
    assert out.startswith("verified 2 points, 3 of 4 chunks read")
    assert out.endswith("1 missing, 1 damaged, 2 damaged points\n")
    assert (f"imagetool: error: point vm1 {point}: disk d: 2 chunks (2097152 guest bytes "
            "from offset 0) lost: 1 missing, 1 damaged") in err
    code, out, _ = cli("backup", "verify", repo, "--sample", "50", "--json")
    doc = json.loads(out)
    assert doc["checked"] == 2 and doc["sample"] == 50 and doc["missing"] == 1


def test_encrypted_repository_key_errors_and_json_verify(cli, tmp_path):
    repo, key = str(tmp_path / "r"), str(tmp_path / "k")
    code, _, err = cli("backup", "init", repo, "--encrypt", "--key-file", key)
    assert code == 0 and "new key in" in err
    code, _, err = cli("backup", "list", repo)
    assert code == 1
    assert err == f"imagetool: error: {repo}: the repository is encrypted; give its --key-file\n"
    other = str(tmp_path / "other")
    with open(other, "w") as f:
        f.write("x" * 64)
    code, _, err = cli("backup", "list", repo, "--key-file", other)
    assert (code, err) == (1, f"imagetool: error: {repo}: wrong key for this repository\n")
    code, out, _ = cli("backup", "verify", repo, "--key-file", other, "--json")
    assert code == 1
    assert json.loads(out) == {"ok": False, "points": 0, "repository": repo, "errors": [
        {"path": repo, "error": f"{repo}: wrong key for this repository"}]}
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 1 * MiB, [(0, 1 * MiB)], seed=2)
    add_point(type("T", (), {"url": repo, "endpoint": None})(), "vm1", {"d": raw}, key=key)
    code, out, _ = cli("backup", "verify", repo, "--key-file", key)
    assert code == 0 and out.endswith(": ok\n")
    code, _, err = cli("backup", "init", str(tmp_path / "r2"), "--encrypt")
    assert code == 2 and "--encrypt needs --key-file" in err
    assert not os.path.exists(tmp_path / "r2")


def test_init_refuses_a_directory_holding_something_else(cli, tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "vm1").mkdir()
    code, _, err = cli("backup", "init", tmp_path / "old", "--encrypt", "--key-file",
                       tmp_path / "k")
    assert code == 1 and "exists and is not an empty directory" in err
    assert os.listdir(tmp_path / "old") == ["vm1"] and not os.path.exists(tmp_path / "k")


def test_options_of_the_other_format_are_usage_errors(cli, tmp_path):
    from backup_helpers import add_point as add_old_point
    old = str(tmp_path / "old")
    add_old_point(old, "vm1", {"d": (b"\1" * MiB, None)})
    code, _, err = cli("backup", "prune", old, "--keep-daily", "3")
    assert code == 2 and "--keep-daily: for chunk repositories only" in err
    code, _, err = cli("backup", "list", old, "--endpoint", "http://x")
    assert code == 2 and "--endpoint: for chunk repositories only" in err
    code, _, err = cli("backup", "prune", old)
    assert code == 2 and "give --keep N" in err
    new = str(tmp_path / "new")
    cli("backup", "init", new)
    code, _, err = cli("backup", "prune", new)
    assert code == 2 and "give at least one of --keep-last" in err
    code, _, err = cli("backup", "gc", old)
    assert code == 2 and "not a chunk repository" in err


def test_export_of_a_qcow2_chain_repository(cli, tmp_path):
    from backup_helpers import add_point as add_old_point
    from backup_helpers import point_bytes, rand
    old = str(tmp_path / "old")
    a = rand(2 * MiB, 1)
    b = a[:MiB] + rand(MiB, 2)
    add_old_point(old, "vm1", {"d": (a, None)})
    p2 = add_old_point(old, "vm1", {"d": (b, a)})
    code, out, err = cli("backup", "export", old, "vm1", tmp_path / "out", "--format", "raw")
    assert code == 0, err
    with open(out.strip(), "rb") as f:
        assert f.read() == b == point_bytes(old, "vm1", p2, "d")
    assert (tmp_path / "out" / "vm.ovf").read_text() == "<ovf vm='vm1'/>"


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_failed_export_leaves_no_image(cli, tmp_path, fmt):
    repo = str(tmp_path / "r")
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 2 * MiB, [(0, 2 * MiB)], seed=3)
    cli("backup", "init", repo, "--chunk-size", "1")
    ix = add_point(type("T", (), {"url": repo, "endpoint": None})(), "vm1", {"d": raw})
    os.unlink(os.path.join(repo, chunk_name(ix.disks[0].chunks[1])))
    code, _, err = cli("backup", "export", repo, "vm1", tmp_path / "out", "--format", fmt)
    assert code == 1 and "missing" in err
    assert os.listdir(tmp_path / "out") == []


def test_unknown_vm_and_point_are_one_line_errors(cli, tmp_path):
    repo = str(tmp_path / "r")
    raw = str(tmp_path / "d.raw")
    make_raw(raw, MiB, [(0, MiB)], seed=8)
    cli("backup", "init", repo)
    add_point(type("T", (), {"url": repo, "endpoint": None})(), "vm1", {"d": raw})
    code, _, err = cli("backup", "export", repo, "nosuch", tmp_path / "o")
    assert (code, err) == (1, f"imagetool: error: {repo}: no points of VM 'nosuch' "
                              "(backup list shows the VMs)\n")
    code, _, err = cli("backup", "export", repo, "vm1", tmp_path / "o", "--point", "../x")
    assert (code, err) == (1, "imagetool: error: invalid point name '../x'\n")
    code, _, err = cli("backup", "serve", repo, "vm1", "--point", "20200101T000000Z",
                       "--nbd", tmp_path / "s")
    assert (code, err) == (1, f"imagetool: error: {repo}: VM vm1 has no point "
                              "'20200101T000000Z'\n")
    assert not os.path.exists(tmp_path / "s") and not os.path.exists(tmp_path / "o")
    code, _, err = cli("backup", "verify", repo, "--point", "x")
    assert code == 1 and "give the VM too" in err



def test_init_picks_the_chunk_size_of_its_storage(cli, target):
    """Unless told, 1 MiB chunks on a directory (the dedup benchmark's
    pick) and 4 MiB on S3 (a request per chunk); --chunk-size overrides."""
    expected = 4 * MiB if target.url.startswith("s3://") else MiB
    assert cli("backup", "init", *repo_args(target))[0] == 0
    assert ChunkStore.open(target.open()).chunk_size == expected
    other = target.url + "2"
    endpoint = ["--endpoint", target.endpoint] if target.endpoint else []
    assert cli("backup", "init", other, *endpoint, "--chunk-size", "2")[0] == 0
    assert ChunkStore.open(open_storage(other, endpoint=target.endpoint)).chunk_size == 2 * MiB
