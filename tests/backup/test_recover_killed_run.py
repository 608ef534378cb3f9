"""A ``backup create`` killed mid-download, then run again against a
``serve`` that outlived it: the transfer the dead run left open is
cancelled at once, with a word, instead of a silent wait of about 60 s
for the engine's inactivity timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import HARNESS, cli_env, run_cli, serve_process


pytestmark = pytest.mark.slow


def test_next_run_cancels_the_dead_runs_transfer(tmp_path):
    env = cli_env(tmp_path, RESUME_TEST_STATS=str(tmp_path / "st"))
    with serve_process(env):
        (tmp_path / "src.raw").write_bytes(os.urandom(24 << 20))
        assert run_cli(env, "vms", "create", "kb", "--disk", "src.raw", "--sd", "data",
                       cwd=tmp_path).returncode == 0
        slow = subprocess.Popen([sys.executable, HARNESS, "backup", "create", "repo", "kb"],
                                env={**env, "RESUME_TEST_DELAY": "0.5"}, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (tmp_path / "st").exists() or not json.loads(
                (tmp_path / "st").read_text() or "{}").get("get"):
            assert slow.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        slow.send_signal(signal.SIGKILL)
        slow.wait()
        start = time.monotonic()
        done = run_cli(env, "backup", "create", "repo", "kb", cwd=tmp_path)
        took = time.monotonic() - start
        assert done.returncode == 0, done.stderr
        assert "cancelling 1 image transfer the interrupted backup" in done.stderr
        assert took < 30, took            # was about 60 s
        left = json.loads(run_cli(env, "transfers", "list", "--json").stdout)
        assert not [t for t in left if t["phase"] in ("transferring", "initializing")]
