"""Commands find a running ``imagetool serve`` whatever its data directory.

``imagetool serve --data-dir ./engine`` (as in the README) used to be
missed by every other command, which silently started the default engine.
Each test gets its own HOME and XDG_RUNTIME_DIR (where serves register).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "samples", "data-holes.qcow2")

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
    e.update(HOME=str(tmp_path / "home"), XDG_RUNTIME_DIR=str(tmp_path / "run"),
             XDG_CONFIG_HOME=str(tmp_path / "xdg"),
             PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""))
    return e


@pytest.fixture
def serves(env):
    procs = []

    def start(data_dir) -> list[str]:
        proc = subprocess.Popen([sys.executable, "-m", "imagetool", "serve", "--data-dir",
                                 str(data_dir)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any(line.startswith("other imagetool commands") for line in lines):
            line = proc.stdout.readline()
            assert line, "serve exited"
            assert time.monotonic() < deadline
            lines.append(line.rstrip("\n"))
        return lines

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def imagetool(env, *argv, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagetool", *argv], env={**env, **extra},
                          capture_output=True, text=True, timeout=120)


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
