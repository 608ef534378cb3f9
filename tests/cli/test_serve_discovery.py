"""Commands find a running ``imagetool serve`` whatever its data directory.

``imagetool serve --data-dir ./engine`` (as in the README) used to be
missed by every other command, which silently started the default engine.
Each test gets its own HOME and XDG_RUNTIME_DIR (where serves register).
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import ExitStack

import pytest

from helpers import ROOT, cli_env, run_cli, serve_process

SAMPLE = os.path.join(ROOT, "samples", "data-holes.qcow2")

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path):
    """No IMAGETOOL_HOME: commands must find the serve on their own."""
    e = cli_env(tmp_path, HOME=str(tmp_path / "home"))
    del e["IMAGETOOL_HOME"]
    return e


@pytest.fixture
def serves(env):
    with ExitStack() as stack:
        yield lambda data_dir: stack.enter_context(
            serve_process(env, "--data-dir", data_dir)).lines


def imagetool(env, *argv, **extra) -> subprocess.CompletedProcess:
    return run_cli({**env, **extra}, *argv, timeout=120)


def test_commands_use_a_serve_of_another_data_dir(env, serves, tmp_path):
    lines = serves(tmp_path / "engine")
    assert f"export IMAGETOOL_HOME={tmp_path / 'engine'}" in lines[-1]
    done = imagetool(env, "upload", SAMPLE, "--sd", "data", "--name", "via-serve")
    assert done.returncode == 0, done.stderr
    # No engine was started on the default data dir: the serve got the disk.
    default = tmp_path / "home" / ".local" / "share" / "imagetool"
    assert not os.path.exists(default / "inventory.db")
    listed = imagetool(env, "disks", "list", "--json", IMAGETOOL_HOME=str(tmp_path / "engine"))
    assert [d["name"] for d in json.loads(listed.stdout)] == ["via-serve"]


def test_several_serves_ask_to_choose(env, serves, tmp_path):
    serves(tmp_path / "a")
    serves(tmp_path / "b")
    done = imagetool(env, "disks", "list")
    assert done.returncode == 2
    assert str(tmp_path / "a") in done.stderr and str(tmp_path / "b") in done.stderr
    assert "IMAGETOOL_HOME" in done.stderr and done.stderr.count("\n") == 1
    chosen = imagetool(env, "disks", "list", "--json", IMAGETOOL_HOME=str(tmp_path / "b"))
    assert chosen.returncode == 0 and json.loads(chosen.stdout) == []
