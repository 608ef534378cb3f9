"""``backup create``, ``backup verify`` and ``backup restore`` draw a
progress bar on a terminal (stderr a pty), full and incremental points
alike reaching their VM's size, and nothing when piped."""

from __future__ import annotations

import os

import pytest

from helpers import ROOT, cli_env, run_cli, run_on_pty

pytestmark = pytest.mark.slow


def web1(tmp_path):
    """The CLI's environment with VM web1 (20 MiB of disks) on its local engine."""
    os.symlink(os.path.join(ROOT, "samples"), tmp_path / "samples")
    env = cli_env(tmp_path)
    made = run_cli(env, "vms", "create", "web1", "--disk", "samples/data-holes.qcow2",
                   "--disk", "4M", "--sd", "data", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    return env


def test_backup_commands_draw_bars_on_a_terminal(tmp_path):
    env = web1(tmp_path)
    for mode in ("full", "incremental"):
        code, drawn = run_on_pty(["backup", "create", "./backups", "web1"], env, tmp_path)
        assert code == 0, drawn
        assert "web1: 100%" in drawn and "20.0M/20.0M" in drawn, (mode, drawn)
    code, drawn = run_on_pty(["backup", "verify", "./backups"], env, tmp_path)
    assert code == 0, drawn
    assert "verify: 100%" in drawn and "40.0M/40.0M" in drawn     # two points
    code, drawn = run_on_pty(["backup", "restore", "./backups", "web1", "--sd", "data",
                              "--name", "web1-r"], env, tmp_path)
    assert code == 0, drawn
    assert "restore: 100%" in drawn and "20.0M/20.0M" in drawn

    for argv in (["backup", "create", "./backups", "web1"], ["backup", "verify", "./backups"],
                 ["backup", "restore", "./backups", "web1", "--sd", "data"]):
        piped = run_cli(env, *argv, cwd=tmp_path)
        assert (piped.returncode, piped.stderr) == (0, ""), argv


def test_bars_with_a_chunk_repository(tmp_path):
    from imagetool.backup.store import ChunkStore, open_storage

    env = web1(tmp_path)
    ChunkStore.init(open_storage(str(tmp_path / "chunks"), create=True))
    for mode in ("full", "incremental"):
        code, drawn = run_on_pty(["backup", "create", "./chunks", "web1"], env, tmp_path)
        assert code == 0, drawn
        assert "web1: 100%" in drawn and "20.0M/20.0M" in drawn, (mode, drawn)
    code, drawn = run_on_pty(["backup", "restore", "./chunks", "web1", "--sd", "data",
                              "--name", "web1-r"], env, tmp_path)
    assert code == 0, drawn
    assert "restore: 100%" in drawn and "20.0M/20.0M" in drawn
