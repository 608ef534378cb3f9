"""Where imagetool keeps its files, and how to find a running ``imagetool serve``.

The data directory holds the local engine's images and inventory and the
upload journals. ``imagetool serve`` writes ``<data-dir>/serve.json`` (url,
cafile, pid, username, password_file), holds an exclusive ``flock`` on it
while it runs and removes it on exit; CLI commands that find one locked use
that server instead of opening the same data dir twice.

The lock, not the pid, says whether that server lives: the kernel drops it
as the process dies, whereas ``kill(pid, 0)`` still succeeds on a process
killed with SIGKILL until its parent has reaped it, which made a restart
right after a crash refuse with "an engine already serves".
"""

from __future__ import annotations

import fcntl
import json
import os

LOCK_FILE = "serve.json"


def default_data_dir() -> str:
    """$IMAGETOOL_HOME, else ~/.local/share/imagetool."""
    return os.environ.get("IMAGETOOL_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "imagetool")


def _locked(fd: int) -> bool:
    """Whether another open file holds an exclusive flock on ``fd``'s file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def find_running_engine(data_dir: str | None = None) -> dict | None:
    """The lock file's content if a live ``imagetool serve`` owns ``data_dir``
    (it holds the file's flock)."""
    path = os.path.join(data_dir or default_data_dir(), LOCK_FILE)
    try:
        with open(path) as f:
            if not _locked(f.fileno()):
                return None
            info = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return None
    return info
