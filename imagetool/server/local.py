"""The local engine in-process, and the lock file of ``imagetool serve``.

``imagetool.paths`` says where the data dir is and reads the lock file;
this module writes and removes it.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Any

from imagetool.paths import (LOCK_FILE, default_data_dir, find_running_engine,
                             register_serve, unregister_serve)
from imagetool.server.app import EngineServer

__all__ = ["LOCK_FILE", "USERNAME", "LocalEngine", "default_data_dir",
           "find_running_engine", "remove_lock_file", "write_lock_file"]

USERNAME = "admin@internal"


def write_lock_file(engine: EngineServer) -> str:
    """Publish a running engine in its data dir; returns the lock file path.

    The file is flocked (exclusive) before it gets its name and stays so
    until ``remove_lock_file`` or the process's death: readers take a held
    lock as the sign of a live engine (``imagetool.paths``).
    """
    path = os.path.join(engine.data_dir, LOCK_FILE)
    info = {"url": engine.url, "cafile": engine.cafile, "pid": os.getpid(),
            "username": USERNAME, "password_file": engine.password_file,
            "imageio_url": engine.dataplane_url(), "insecure": False}
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps(info, indent=2).encode())
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    engine.serve_lock = fd
    register_serve(engine.data_dir)
    return path


def remove_lock_file(engine: EngineServer) -> None:
    """Remove the lock file if it is ours, and drop its lock."""
    unregister_serve(engine.data_dir)
    path = os.path.join(engine.data_dir, LOCK_FILE)
    with suppress(FileNotFoundError, ValueError), open(path) as f:
        if json.load(f).get("pid") == os.getpid():
            os.unlink(path)
    fd = getattr(engine, "serve_lock", None)
    if fd is not None:
        engine.serve_lock = None
        os.close(fd)


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
        self.server.start()
        self.url = self.server.url
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> "LocalEngine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
