"""The local engine in-process, and the lock file of ``imagetool serve``.

``imagetool.paths`` says where the data dir is and reads the lock file;
this module writes and removes it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from imagetool.fsutil import write_atomic
from imagetool.paths import (LOCK_FILE, default_data_dir, find_running_engine,
                             register_serve, unregister_serve)
from imagetool.server.app import EngineServer

__all__ = ["LOCK_FILE", "USERNAME", "LocalEngine", "default_data_dir",
           "find_running_engine", "remove_lock_file", "write_lock_file"]

USERNAME = "admin@internal"


def write_lock_file(engine: EngineServer) -> str:
    """Publish a running engine in its data dir; returns the lock file path."""
    path = os.path.join(engine.data_dir, LOCK_FILE)
    info = {"url": engine.url, "cafile": engine.cafile, "pid": os.getpid(),
            "username": USERNAME, "password_file": engine.password_file,
            "imageio_url": engine.dataplane_url(), "insecure": False}
    write_atomic(path, json.dumps(info, indent=2), sync=False)
    register_serve(engine.data_dir)
    return path


def remove_lock_file(engine: EngineServer) -> None:
    """Remove the lock file if it is ours."""
    unregister_serve(engine.data_dir)
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
