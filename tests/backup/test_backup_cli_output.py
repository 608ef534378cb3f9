"""What the backup commands print: exact text lines (counts in the right
number, ``0.5 s``, VM names with ids), the checksum object of ``--json``
(upload's shape), and the argument order (directory first; the old
``create VM... DIR`` works with a warning)."""

from __future__ import annotations

import json
import re

import pytest

from helpers import MiB
from backup_helpers import engine_checksum, guest_io, make_vm, rand

CHECKSUM_KEYS = {"algorithm", "block_size", "value", "scope"}
POINT = r"\d{8}T\d{6}Z(?:-\d+)?"
SECONDS = r"\d+\.\d s"


@pytest.mark.slow
def test_text_lines_count_in_the_right_number(conn, cli, engine_env, tmp_path):
    vm, (d0,) = make_vm(conn, [("cow", 4 * MiB)])
    guest_io(conn, d0, writes=[(0, rand(MiB, 1))])
    repo = str(tmp_path / "repo")

    code, out, err = cli("backup", "create", repo, vm.name)
    assert (code, err) == (0, "")
    first, disk = out.splitlines()
    assert re.fullmatch(rf"VM {vm.name}: full point ({POINT}) by checkpoint \(no chain yet\): "
                        rf"1\.00 MiB moved in {SECONDS}", first), first
    assert disk == f"  disk {vm.name}-d0: full"
    p1 = re.search(POINT, first).group(0)
    code, out, err = cli("backup", "create", repo, vm.name)
    assert (code, err) == (0, "")
    p2 = re.search(POINT, out).group(0)

    code, out, _ = cli("backup", "list", repo)
    assert out.splitlines()[0] == f"VM {vm.name} ({vm.id}): 2 points"
    code, out, _ = cli("backup", "verify", repo, "--vm", vm.name, "--point", p1)
    assert (code, out) == (0, "verified 1 point, 3 files: ok\n")
    code, out, _ = cli("backup", "verify", repo)
    assert (code, out) == (0, "verified 2 points, 6 files: ok\n")

    code, out, err = cli("backup", "restore", repo, vm.name, "--sd", "data",
                         "--name", f"{vm.name}-r")
    assert (code, err) == (0, "")
    restored = conn.vms.find(f"{vm.name}-r")
    assert re.fullmatch(rf"restored point {p2} as VM {vm.name}-r \({restored.id}\): 1 disk, "
                        rf"1\.00 MiB in {SECONDS}, checksums match the manifest\n", out), out

    code, out, err = cli("backup", "prune", repo, "--keep", "1")
    assert (code, err) == (0, "")
    assert out == (f"VM {vm.name} ({vm.id}): removed 1 point, merged into {p2}, "
                   "kept 1 point\n")
    conn.vms.remove(restored.id)
    conn.vms.remove(vm.id)


@pytest.mark.slow
def test_json_checksums_are_upload_s_object(conn, cli, engine_env, tmp_path):
    vm, (d0, d1) = make_vm(conn, [("cow", 4 * MiB), ("raw", 4 * MiB)])
    guest_io(conn, d0, writes=[(0, rand(MiB, 2))])
    repo = str(tmp_path / "repo")
    code, out, err = cli("backup", "create", repo, vm.id, "--json")
    assert (code, err) == (0, "")
    [r] = json.loads(out)
    for d in r["disks"]:
        c = d["checksum"]
        assert set(c) == CHECKSUM_KEYS and "algorithm" not in d
        assert (c["block_size"], c["scope"]) == (4 * MiB, "guest-data")
        assert c["value"] == engine_checksum(conn, d["disk_id"], c["algorithm"])

    code, out, err = cli("backup", "restore", repo, vm.id, "--sd", "data", "--json")
    assert (code, err) == (0, "")
    got = json.loads(out)
    want = {d["disk_id"]: d["checksum"] for d in r["disks"]}
    assert {d["source_disk_id"]: d["checksum"] for d in got["disks"]} == want
    for d in got["disks"]:
        c = d["checksum"]
        assert c["value"] == engine_checksum(conn, d["disk_id"], c["algorithm"])
    conn.vms.remove(got["vm_id"])
    conn.vms.remove(vm.id)


@pytest.mark.slow
def test_the_directory_comes_first_and_the_old_order_warns(conn, cli, engine_env, tmp_path,
                                                           monkeypatch):
    vm, (d0,) = make_vm(conn, [("cow", 4 * MiB)])
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("backup", "create", "./new", vm.name, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)[0]["path"].startswith(str(tmp_path / "new") + "/")

    # The old order: the directory last, found as a path...
    code, out, err = cli("backup", "create", vm.name, "./new", "--json")
    assert code == 0
    assert err == ("imagetool: warning: the directory last (backup create VM... DIR) is "
                   f"deprecated; put it first: imagetool backup create ./new {vm.name}\n")
    assert json.loads(out)[0]["mode"] == "incremental"
    # ... or, when neither argument is a path, by the VM the engine knows.
    code, out, err = cli("backup", "create", vm.name, "bare", "--json")
    assert code == 0 and "put it first: imagetool backup create bare " in err
    assert json.loads(out)[0]["path"].startswith(str(tmp_path / "bare") + "/")
    assert not (tmp_path / vm.name).exists()

    # Two VM names and no directory: refused, no repository named after a VM.
    other, _ = make_vm(conn, [("cow", MiB)])
    code, out, err = cli("backup", "create", vm.name, other.name)
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == (f"Error: {vm.name!r} is a VM of the engine, not a "
                                    "backup directory: give the directory first: "
                                    "imagetool backup create DIR VM...")
    assert not (tmp_path / vm.name).exists() and not (tmp_path / other.name).exists()
    conn.vms.remove(other.id)

    code, out, err = cli("backup", "create", "./new")
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == ("Error: give the backup directory, then the VMs: "
                                    "imagetool backup create DIR VM...")
    conn.vms.remove(vm.id)
