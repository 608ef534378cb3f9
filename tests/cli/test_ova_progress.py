"""``ova import`` and ``ova export`` draw a progress bar on a terminal
(stderr a pty) and nothing when piped."""

from __future__ import annotations

import os

import pytest

from helpers import ROOT, cli_env, run_cli, run_on_pty

SAMPLE_OVA = os.path.join(ROOT, "samples", "appliance.ova")

pytestmark = pytest.mark.slow


def test_ova_import_and_export_draw_bars_on_a_terminal(tmp_path):
    env = cli_env(tmp_path)
    code, drawn = run_on_pty(["ova", "import", SAMPLE_OVA, "--sd", "data"], env, tmp_path)
    assert code == 0, drawn
    assert "ova import" in drawn and "100%" in drawn and "8.00M/8.00M" in drawn
    code, drawn = run_on_pty(["ova", "export", "appliance", "a.ova"], env, tmp_path)
    assert code == 0, drawn
    assert "ova export" in drawn and "100%" in drawn and "8.00M/8.00M" in drawn
    piped = run_cli(env, "ova", "export", "appliance", "b.ova", cwd=tmp_path)
    assert piped.returncode == 0 and piped.stderr == ""
