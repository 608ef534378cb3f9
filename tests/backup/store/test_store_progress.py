"""``backup export``, ``verify`` and ``migrate`` of chunk repositories draw a
progress bar reaching the bytes they work on, on a terminal only."""

from __future__ import annotations

import pytest
from backup_helpers import add_point as add_old_point
from backup_helpers import rand
from helpers import MiB, cli_env, make_raw, run_cli, run_on_pty
from test_store_cli import add_point

pytestmark = pytest.mark.slow


def test_long_repository_commands_draw_bars_on_a_terminal(tmp_path):
    env = cli_env(tmp_path)
    assert run_cli(env, "backup", "init", "r", "--chunk-size", "4", cwd=tmp_path).returncode == 0
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 12 * MiB, [(0, 5 * MiB)], seed=4)
    add_point(type("T", (), {"url": str(tmp_path / "r"), "endpoint": None})(), "vm1",
              {"d": raw})
    code, drawn = run_on_pty(["backup", "export", "r", "vm1", "out"], env, tmp_path)
    assert code == 0, drawn
    assert "export: 100%" in drawn and "12.0M/12.0M" in drawn, drawn
    code, drawn = run_on_pty(["backup", "verify", "r"], env, tmp_path)
    assert code == 0, drawn
    assert "verify: 100%" in drawn and "8.00M/8.00M" in drawn, drawn   # two 4 MiB chunks
    add_old_point(str(tmp_path / "old"), "vm2", {"c": (rand(3 * MiB, 1), None)})
    code, drawn = run_on_pty(["backup", "migrate", "old", "r"], env, tmp_path)
    assert code == 0, drawn
    assert "migrate: 100%" in drawn and "3.00M/3.00M" in drawn, drawn
    for argv in (["backup", "export", "r", "vm1", "out2"], ["backup", "verify", "r"]):
        piped = run_cli(env, *argv, cwd=tmp_path)
        assert (piped.returncode, piped.stderr) == (0, ""), argv
