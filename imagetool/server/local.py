"""The local engine in-process, and discovery of a running ``imagetool serve``.

``imagetool serve`` writes ``<data-dir>/serve.json`` (url, cafile, pid,
username, password_file) and removes it on exit; CLI commands that find a
live one use that server instead of opening the same data dir twice.
"""

from __future__ import annotations

import json
import os
from typing import Any

from imagetool.server.app import EngineServer

LOCK_FILE = "serve.json"
USERNAME = "admin@internal"


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


def write_lock_file(engine: EngineServer) -> str:
    """Publish a running engine in its data dir; returns the lock file path."""
    path = os.path.join(engine.data_dir, LOCK_FILE)
    info = {"url": engine.url, "cafile": engine.cafile, "pid": os.getpid(),
            "username": USERNAME, "password_file": engine.password_file,
            "imageio_url": engine.dataplane_url(), "insecure": False}
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
    os.replace(tmp, path)
    return path


def remove_lock_file(engine: EngineServer) -> None:
    """Remove the lock file if it is ours."""
    path = os.path.join(engine.data_dir, LOCK_FILE)
    try:
        with open(path) as f:
            if json.load(f).get("pid") != os.getpid():
                return
        os.unlink(path)
    except (FileNotFoundError, ValueError):
        pass


class LocalEngine:
    """An engine running in this process on ephemeral loopback ports.

    Use as a context manager, or ``start()``/``stop()``. Attributes after
    start: ``url`` (API base), ``cafile`` (None without TLS), ``username``,
    ``password``, ``server`` (the EngineServer).
    """

    username = USERNAME

    def __init__(self, data_dir: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 imageio_port: int = 0, tls: bool = True, password: str | None = None,
                 **options: Any) -> None:
        self.data_dir = os.path.abspath(data_dir or default_data_dir())
        self.server = EngineServer(self.data_dir, host=host, port=port,
                                   imageio_port=imageio_port, tls=tls, password=password,
                                   **options)
        self.password = self.server.password
        self.url: str | None = None
        self.cafile: str | None = self.server.cafile

    def start(self) -> "LocalEngine":
        """Serve in background threads."""
        self.server.start()
        self.url = self.server.url
        return self

    def stop(self) -> None:
        """Stop serving and close the inventory."""
        self.server.stop()

    def __enter__(self) -> "LocalEngine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
