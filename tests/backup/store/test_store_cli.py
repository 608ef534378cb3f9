"""``imagetool repo``: init, add, list, export, prune, gc, verify, end to end."""

from __future__ import annotations

import json
import os

from helpers import KiB, MiB, make_raw, qemu_compare

from imagetool.backup.store.chunkstore import chunk_name


def repo_args(target):
    return [target.url] + (["--endpoint", target.endpoint] if target.endpoint else [])


def test_repo_commands(cli, target, tmp_path):
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 9 * MiB, [(0, 5 * MiB + 7 * KiB)], seed=5)
    code, out, err = cli("repo", "init", *repo_args(target))
    assert code == 0 and out.startswith("initialised repository"), err
    assert cli("repo", "init", *repo_args(target))[0] == 1
    code, out, err = cli("repo", "add", *repo_args(target), "vm1", f"disk1={raw}", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert first["stats"]["logical"] == 9 * MiB and first["stats"]["written"] > 0
    code, out, _ = cli("repo", "add", *repo_args(target), "vm1", f"disk1={raw}", "--json")
    assert json.loads(out)["stats"]["written"] == 0            # all reused
    code, out, _ = cli("repo", "list", *repo_args(target), "--json")
    assert [r["point"] for r in json.loads(out)] == sorted([first["point"],
                                                           json.loads(out)[1]["point"]])
    code, out, err = cli("repo", "export", *repo_args(target), "vm1", tmp_path / "out",
                         "--format", "raw")
    assert code == 0, err
    qemu_compare(raw, out.strip(), "raw", "raw")
    code, out, _ = cli("repo", "prune", *repo_args(target), "--keep-last", "1", "--dry-run")
    assert out.splitlines()[0] == f"would remove vm1 {first['point']}: no rule keeps it"
    code, out, _ = cli("repo", "prune", *repo_args(target), "--keep-last", "1")
    assert out.splitlines()[0] == f"remove vm1 {first['point']}: no rule keeps it"
    code, out, _ = cli("repo", "gc", *repo_args(target), "--json")
    assert code == 0 and json.loads(out)["indexes"] == 1
    code, out, _ = cli("repo", "verify", *repo_args(target))
    assert code == 0 and out.endswith("0 missing, 0 damaged\n")


def test_repo_verify_names_damage_and_exits_1(cli, tmp_path):
    repo = str(tmp_path / "r")
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 4 * MiB, [(0, 4 * MiB)], seed=6)
    cli("repo", "init", repo)
    code, out, _ = cli("repo", "add", repo, "vm1", f"d={raw}", "--json")
    point = json.loads(out)["point"]
    victim = sorted(os.listdir(os.path.join(repo, "chunks")))[0]
    name = os.listdir(os.path.join(repo, "chunks", victim))[0]
    os.unlink(os.path.join(repo, chunk_name(name)))
    code, out, err = cli("repo", "verify", repo)
    assert code == 1
    assert f"damaged vm1 {point}: disk d: 1 chunks" in out


def test_repo_encrypted_key_errors(cli, tmp_path):
    repo, key = str(tmp_path / "r"), str(tmp_path / "k")
    code, _, err = cli("repo", "init", repo, "--encrypt", "--key-file", key)
    assert code == 0 and "new key in" in err
    code, _, err = cli("repo", "list", repo)
    assert code == 1
    assert err == f"imagetool: error: {repo}: the repository is encrypted; give its --key-file\n"
    other = str(tmp_path / "other")
    with open(other, "w") as f:
        f.write("x" * 64)
    code, _, err = cli("repo", "list", repo, "--key-file", other)
    assert (code, err) == (1, f"imagetool: error: {repo}: wrong key for this repository\n")
    assert cli("repo", "list", repo, "--key-file", key)[0] == 0
    code, _, err = cli("repo", "init", str(tmp_path / "r2"), "--encrypt")
    assert code == 2 and "--encrypt needs --key-file" in err
