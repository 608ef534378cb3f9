"""``ova import`` and ``ova export`` draw a progress bar on a terminal
(stderr a pty) and nothing when piped; their text lines and checksums
follow the README's conventions."""

from __future__ import annotations

import json
import os
import re

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


def test_ova_text_lines_and_json_checksums(tmp_path):
    """Counts in the right number, ``0.2 s``, and every checksum as the
    object upload gives: {algorithm, block_size, value, scope}."""
    env = cli_env(tmp_path)
    r = run_cli(env, "ova", "import", SAMPLE_OVA, "--sd", "data", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"imported vm appliance \([0-9a-f-]{36}\): 1 disk, 8\.00 MiB in "
                        r"\d+\.\d s\n", r.stdout), r.stdout
    r = run_cli(env, "ova", "export", "appliance", "a.ova", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"exported a\.ova: 1 disk, 8\.00 MiB in \d+\.\d s",
                        r.stdout.splitlines()[-1]), r.stdout
    r = run_cli(env, "ova", "export", "appliance", "b.ova", "--manifest", "--json",
                cwd=tmp_path)
    [exported] = json.loads(r.stdout)["disks"]
    r = run_cli(env, "ova", "info", "b.ova", "--verify", cwd=tmp_path)
    assert r.stdout.splitlines()[-1] == "manifest: 2 members verified"
    r = run_cli(env, "ova", "info", "b.ova", "--verify", "--json", "--algorithm",
                exported["checksum"]["algorithm"], cwd=tmp_path)
    [info] = json.loads(r.stdout)["disks"]
    r = run_cli(env, "ova", "import", "b.ova", "--sd", "data", "--clone", "--name", "again",
                "--json", cwd=tmp_path)
    [imported] = json.loads(r.stdout)["disks"]
    for d in (exported, info, imported):
        assert set(d["checksum"]) == {"algorithm", "block_size", "value", "scope"}
        assert "algorithm" not in d
        assert (d["checksum"]["block_size"], d["checksum"]["scope"]) == (4 << 20, "guest-data")
    assert info["checksum"] == exported["checksum"]
