"""``ova import`` and ``ova export`` draw a progress bar on a terminal
(stderr a pty) and nothing when piped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import ROOT, cli_env, run_cli

SAMPLE_OVA = os.path.join(ROOT, "samples", "appliance.ova")

pytestmark = pytest.mark.slow


def _run_on_pty(argv, env, cwd) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal; (exit code, what it drew)."""
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "imagetool", *argv], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:         # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    return proc.wait(60), drawn.decode(errors="replace")


def test_ova_import_and_export_draw_bars_on_a_terminal(tmp_path):
    env = cli_env(tmp_path)
    code, drawn = _run_on_pty(["ova", "import", SAMPLE_OVA, "--sd", "data"], env, tmp_path)
    assert code == 0, drawn
    assert "ova import" in drawn and "100%" in drawn and "8.00M/8.00M" in drawn
    code, drawn = _run_on_pty(["ova", "export", "appliance", "a.ova"], env, tmp_path)
    assert code == 0, drawn
    assert "ova export" in drawn and "100%" in drawn and "8.00M/8.00M" in drawn
    piped = run_cli(env, "ova", "export", "appliance", "b.ova", cwd=tmp_path)
    assert piped.returncode == 0 and piped.stderr == ""
