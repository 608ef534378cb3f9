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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(ROOT, "tests", "resume_harness.py")

pytestmark = pytest.mark.slow


def test_next_run_cancels_the_dead_runs_transfer(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
    env.update(IMAGETOOL_HOME=str(tmp_path / "engine"), XDG_RUNTIME_DIR=str(tmp_path / "run"),
               XDG_CONFIG_HOME=str(tmp_path / "xdg"), RESUME_TEST_STATS=str(tmp_path / "st"),
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))

    def imagetool(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imagetool", *argv], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)

    serve = subprocess.Popen([sys.executable, "-m", "imagetool", "serve"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert serve.stdout.readline().startswith("engine URL")
        (tmp_path / "src.raw").write_bytes(os.urandom(24 << 20))
        assert imagetool("vms", "create", "kb", "--disk", "src.raw", "--sd", "data"
                         ).returncode == 0
        slow = subprocess.Popen([sys.executable, HARNESS, "backup", "create", "kb", "repo"],
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
        done = imagetool("backup", "create", "kb", "repo")
        took = time.monotonic() - start
        assert done.returncode == 0, done.stderr
        assert "cancelling 1 image transfer(s) the interrupted backup" in done.stderr
        assert took < 30, took            # was about 60 s
        left = json.loads(imagetool("transfers", "list", "--json").stdout)
        assert not [t for t in left if t["phase"] in ("transferring", "initializing")]
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
