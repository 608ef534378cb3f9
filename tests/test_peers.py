"""The test run's own guard: without qemu-utils it stops at once, in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_a_run_without_qemu_utils_stops_with_one_line_saying_what_to_install(tmp_path):
    # PATH holds only the interpreter's directory: no qemu-img anywhere.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          os.path.join(HERE, "test_peers.py")],
                         cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 4, res.stdout + res.stderr      # pytest's usage error
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert lines == ["ERROR: qemu-img, qemu-io, qemu-nbd not found: install Debian's "
                     "qemu-utils (apt-get install -y qemu-utils), as the README's test "
                     "command does"], lines
