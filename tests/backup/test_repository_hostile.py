"""A backup repository someone else could write is untrusted input: hand-edited
manifests, backing files, symlinks and loops give one-line errors, never a
traceback, and never make verify, restore or prune read or delete anything
outside the repository. Built without an engine (``add_point``), so fast."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest

from backup_helpers import add_point, files_under, point_bytes

from imagetool import backup
from imagetool.backup.repo import RepositoryError

VM = "3b1d2c8e-0000-4000-8000-000000000001"
DISK = "aaaaaaaa-0000-4000-8000-000000000001"
SIZE = 1 << 20


@pytest.fixture
def chain(tmp_path):
    """A repository with a full point and two incrementals; (repo, [points], secret)."""
    repo = str(tmp_path / "repo")
    a = os.urandom(SIZE)
    b = a[:SIZE // 2] + os.urandom(SIZE // 4) + a[3 * SIZE // 4:]
    c = bytes(SIZE // 4) + b[SIZE // 4:]
    pts = [add_point(repo, VM, {DISK: (a, None)}), add_point(repo, VM, {DISK: (b, a)}),
           add_point(repo, VM, {DISK: (c, b)})]
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"host secret " * (SIZE // 12) + bytes(SIZE % 12))
    return repo, pts, str(secret)


def manifest_path(repo, point):
    return os.path.join(repo, VM, point, "manifest.json")


def edit_manifest(repo, point, change):
    path = manifest_path(repo, point)
    with open(path) as f:
        doc = json.load(f)
    doc = change(doc)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def qcow2_path(repo, point):
    return os.path.join(repo, VM, point, f"{DISK}.qcow2")


def rebase(path, backing, fmt="raw"):
    subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", backing, "-F", fmt, path],
                   check=True, capture_output=True)


def record_sha(repo, point):
    """The attacker also fixes the manifest's SHA-256 of the file they changed."""
    from imagetool.backup.repo import sha256_file

    def change(doc):
        doc["disks"][0]["sha256"] = sha256_file(qcow2_path(repo, point))
        return doc
    edit_manifest(repo, point, change)


def verify_fails(cli, repo, *expected):
    """verify exits 1 with one error line per expected (path, text), no traceback."""
    code, out, err = cli("backup", "verify", repo)
    assert code == 1, (out, err)
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x]
    for path, text in expected:
        assert any(x.startswith(f"imagetool: error: {path}: ") and text in x
                   for x in lines), (path, text, lines)
    return lines


class NoEngine:
    """A connection a restore must never use: the chain is refused first."""

    def __getattr__(self, name):
        raise AssertionError(f"restore reached the engine ({name})")


# --- backing files ---------------------------------------------------------------

@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_a_backing_file_outside_the_repository_is_refused(chain, cli, where):
    repo, pts, secret = chain
    top = qcow2_path(repo, pts[-1])
    name = secret if where == "absolute" else os.path.relpath(secret, os.path.dirname(top))
    rebase(top, name)
    record_sha(repo, pts[-1])
    verify_fails(cli, repo, (top, f"backing file {name!a} is not the one its manifest names"))
    with pytest.raises(RepositoryError, match="is not the one its manifest names"):
        backup.restore_vm(NoEngine(), repo, VM, storage_domain="data")


def test_a_manifest_backing_outside_the_parent_is_refused(chain, cli):
    repo, pts, secret = chain
    top = qcow2_path(repo, pts[-1])
    rebase(top, secret)
    record_sha(repo, pts[-1])

    def change(doc):
        doc["disks"][0]["backing"] = secret
        return doc
    edit_manifest(repo, pts[-1], change)
    verify_fails(cli, repo, (top, "is not the parent point's file of disk"))
    with pytest.raises(RepositoryError, match="is not the parent point's file"):
        backup.restore_vm(NoEngine(), repo, VM, storage_domain="data")


def test_a_backing_file_of_another_point_is_refused(chain, cli):
    """Only the parent point's file: not an older point's, even inside."""
    repo, pts, _ = chain
    top = qcow2_path(repo, pts[-1])
    rebase(top, f"../{pts[0]}/{DISK}.qcow2", "qcow2")
    record_sha(repo, pts[-1])

    def change(doc):
        doc["disks"][0]["backing"] = f"../{pts[0]}/{DISK}.qcow2"
        return doc
    edit_manifest(repo, pts[-1], change)
    verify_fails(cli, repo, (top, "is not the parent point's file"))


def test_an_external_data_file_is_refused(chain, cli):
    """A qcow2 whose guest data lives in another file (the qcow2 data_file)."""
    repo, pts, secret = chain
    full = qcow2_path(repo, pts[0])
    os.unlink(full)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={secret},data_file_raw=on", full, str(SIZE)],
                   check=True, capture_output=True)
    record_sha(repo, pts[0])
    verify_fails(cli, repo, (full, "external data file"))
    with pytest.raises(RepositoryError, match="external data file"):
        backup.restore_vm(NoEngine(), repo, VM, storage_domain="data")


# --- symlinks --------------------------------------------------------------------

def test_a_qcow2_symlinked_out_of_the_repository(chain, cli, tmp_path):
    repo, pts, _ = chain
    top = qcow2_path(repo, pts[0])
    outside = str(tmp_path / "outside.qcow2")
    shutil.move(top, outside)
    os.symlink(outside, top)
    lines = verify_fails(cli, repo, (top, "is a symlink"))
    assert all(outside not in x for x in lines)
    with pytest.raises(RepositoryError, match="is a symlink"):
        backup.restore_vm(NoEngine(), repo, VM, storage_domain="data")


def test_symlinked_point_and_vm_directories(chain, cli, tmp_path):
    repo, pts, _ = chain
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(os.path.join(repo, VM), elsewhere / VM)
    # A point directory that is a symlink, and a VM directory that is one.
    os.symlink(elsewhere / VM / pts[0], os.path.join(repo, VM, "20300101T000000Z"))
    other = "3b1d2c8e-0000-4000-8000-0000000000ff"
    os.symlink(elsewhere / VM, os.path.join(repo, other))
    verify_fails(cli, repo, (os.path.join(repo, VM, "20300101T000000Z"), "is a symlink"),
                 (os.path.join(repo, other), "is a symlink"))
    # prune never follows them: what they point at is untouched.
    before = files_under(str(elsewhere))
    code, out, err = cli("backup", "prune", repo, "--keep", "1")
    assert code == 1 and "is a symlink" in err and "Traceback" not in err
    os.unlink(os.path.join(repo, VM, "20300101T000000Z"))
    code, out, err = cli("backup", "prune", repo, "--keep", "1")
    assert code == 0, err
    assert files_under(str(elsewhere)) == before
    assert [p.name for p in backup.Repository(repo).points(VM)] == [pts[-1]]


def test_a_parent_loop(chain, cli):
    repo, pts, _ = chain

    def change(doc):
        doc["parent"] = pts[-1]
        return doc
    edit_manifest(repo, pts[0], change)
    verify_fails(cli, repo, (manifest_path(repo, pts[-1]), "loop in the chain of parents"))
    with pytest.raises(RepositoryError, match="loop"):
        backup.restore_vm(NoEngine(), repo, VM, storage_domain="data")


@pytest.mark.parametrize("name", ["/etc/hostname", "../../../../etc/hostname", "..", ".x"])
def test_a_manifest_file_name_outside_its_point(chain, cli, name):
    repo, pts, _ = chain

    def change(doc):
        doc["disks"][0]["file"] = name
        return doc
    path = edit_manifest(repo, pts[0], change)
    verify_fails(cli, repo, (path, "disks[0].file"))


# --- malformed manifests ----------------------------------------------------------

MALFORMED = {
    "disks missing": (lambda d: {k: v for k, v in d.items() if k != "disks"},
                      "disks is missing"),
    "disks a string": (lambda d: dict(d, disks="sda"), "disks is a string, expected a list"),
    "checksum missing": (lambda d: dict(d, disks=[{k: v for k, v in d["disks"][0].items()
                                                   if k != "checksum"}]),
                         "disks[0].checksum is missing"),
    "text timestamp": (lambda d: dict(d, timestamp="yesterday"),
                       "timestamp is a string, expected a number"),
    "a list": (lambda d: [d], "the manifest is a list, expected an object"),
    "merged a string": (lambda d: dict(d, merged="x"), "merged is a string, expected a list"),
    "not JSON": (None, "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("command", ["verify", "list", "prune", "restore"])
def test_a_malformed_manifest_is_one_line(chain, cli, case, command):
    repo, pts, _ = chain
    change, text = MALFORMED[case]
    path = manifest_path(repo, pts[-1])
    if change is None:
        with open(path, "w") as f:
            f.write("{not json")
    else:
        edit_manifest(repo, pts[-1], change)
    argv = {"verify": ["verify", repo], "list": ["list", repo],
            "prune": ["prune", repo, "--keep", "1"]}.get(command)
    if argv is None:
        with pytest.raises(RepositoryError) as e:
            backup.restore_vm(NoEngine(), repo, VM, storage_domain="data")
        assert str(e.value).startswith(f"{path}: ") and text in str(e.value)
        return
    code, out, err = cli("backup", *argv)
    assert code == 1 and "Traceback" not in err
    assert f"imagetool: error: {path}: " in err and text in err, err
    if command != "verify":
        assert err.count("\n") == 1
    # Nothing was pruned.
    assert sorted(n for n in os.listdir(os.path.join(repo, VM)) if n != ".lock") == pts


# --- verify's report ---------------------------------------------------------------

def test_verify_reports_every_bad_file_and_json_on_failure(chain, cli):
    repo, pts, _ = chain
    bad = [qcow2_path(repo, pts[1]), os.path.join(repo, VM, pts[2], "vm.ovf")]
    for f in bad:
        with open(f, "r+b") as fh:
            fh.seek(os.path.getsize(f) // 2)
            fh.write(b"\xff\xfe")
    verify_fails(cli, repo, (bad[0], "SHA-256"), (bad[1], "SHA-256"),
                 (qcow2_path(repo, pts[2]), f"its chain holds the bad file {bad[0]}"))
    code, out, err = cli("backup", "verify", repo, "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False and doc["points"] == 3
    assert {e["path"] for e in doc["errors"]} == set(bad) | {qcow2_path(repo, pts[2])}


@pytest.mark.parametrize("content", ["empty", "files"])
def test_verify_refuses_a_directory_that_is_not_a_repository(cli, tmp_path, content):
    d = tmp_path / "notrepo"
    d.mkdir()
    if content == "files":
        (d / "notes.txt").write_text("hello")
        (d / "photos").mkdir()
        (d / "photos" / "2024").mkdir()
        os.symlink(tmp_path, d / "elsewhere")
    code, out, err = cli("backup", "verify", str(d))
    assert code == 1 and out == ""
    assert err == f"imagetool: error: {d}: not a backup repository (no VM directory with " \
                  "restore points)\n"
    code, out, err = cli("backup", "verify", str(d), "--json")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False and "not a backup repository" in doc["errors"][0]["error"]


def test_list_skips_the_folder_a_failed_first_backup_leaves(chain, cli):
    repo, pts, _ = chain
    other = "3b1d2c8e-0000-4000-8000-0000000000aa"
    os.makedirs(os.path.join(repo, other, ".partial-20300101T000000Z"))
    open(os.path.join(repo, other, ".lock"), "w").close()
    code, out, err = cli("backup", "list", repo)
    assert code == 0, err
    assert "None" not in out and other not in out
    assert out.startswith(f"VM vm ({VM}): 3 points")


# --- permissions -------------------------------------------------------------------

def test_repository_files_are_owner_only_whatever_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        repo = str(tmp_path / "repo")
        a = os.urandom(SIZE)
        for i in range(3):
            b = a[:i * 4096] + os.urandom(4096) + a[(i + 1) * 4096:]
            add_point(repo, VM, {DISK: (b, a if i else None)})
            a = b
        backup.prune(repo, 1)
    finally:
        os.umask(old)
    for d, dirs, files in os.walk(repo):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700 or d == repo, d
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode) == 0o600, f
    assert point_bytes(repo, VM, backup.Repository(repo).point(VM).name, DISK) == a
