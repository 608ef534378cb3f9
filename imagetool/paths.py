"""Where imagetool keeps its files, and how to find a running ``imagetool serve``.

The data directory holds the local engine's images and inventory and the
upload journals. ``imagetool serve`` writes ``<data-dir>/serve.json`` (url,
cafile, pid, username, password_file) and removes it on exit; CLI commands
that find a live one use that server instead of opening the same data dir
twice.
"""

from __future__ import annotations

import json
import os

LOCK_FILE = "serve.json"


def default_data_dir() -> str:
    """$IMAGETOOL_HOME, else ~/.local/share/imagetool."""
    return os.environ.get("IMAGETOOL_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "imagetool")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_running_engine(data_dir: str | None = None) -> dict | None:
    """The lock file's content if a live ``imagetool serve`` owns ``data_dir``."""
    path = os.path.join(data_dir or default_data_dir(), LOCK_FILE)
    try:
        with open(path) as f:
            info = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return None
    return info
