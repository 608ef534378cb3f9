"""README's "From a fresh clone to a restored VM", run as written.

The block is read from README.md (so the test follows the README, not a
copy of it); each line runs as ``python -m imagetool ...`` in a directory
holding the clone's ``samples/``, against a fresh IMAGETOOL_HOME (the
embedded engine). ``pip install .`` is what puts ``imagetool`` on PATH:
here the worktree on PYTHONPATH stands in for it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest

from helpers import ROOT, cli_env, run_cli

HEADING = "## From a fresh clone to a restored VM"

pytestmark = pytest.mark.slow


def walkthrough_lines() -> list[str]:
    """The command lines of the first ``sh`` block under HEADING."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert HEADING in text, "README lost its walkthrough section"
    block = text.split(HEADING, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        command = line.split("  #", 1)[0].strip()
        if command and not command.startswith("#"):
            lines.append(command)
    return lines


def test_walkthrough_block_is_what_the_test_runs():
    lines = walkthrough_lines()
    assert lines[0] == "pip install ."
    assert all(line.startswith("imagetool ") for line in lines[1:]), lines
    assert any(line.startswith("imagetool vms create") for line in lines)
    assert any(line.startswith("imagetool backup restore") for line in lines)


def test_readme_walkthrough_runs_as_written(tmp_path):
    os.symlink(os.path.join(ROOT, "samples"), tmp_path / "samples")
    env = cli_env(tmp_path)

    def imagetool(*argv: str) -> subprocess.CompletedProcess:
        return run_cli(env, *argv, cwd=tmp_path)

    for line in walkthrough_lines()[1:]:
        done = imagetool(*shlex.split(line)[1:])
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, line
    names = {v["name"] for v in json.loads(imagetool("vms", "list", "--json").stdout)}
    assert {"web1", "web1-restored", "appliance"} <= names
    points = json.loads(imagetool("backup", "list", "./backups", "--json").stdout)
    assert "incremental" in json.dumps(points)
