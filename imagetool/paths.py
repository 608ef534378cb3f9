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

``serve`` also registers its data directory under the user's runtime
directory (:func:`serves_dir`), so that commands find it whatever
directory it serves (``imagetool serve --data-dir ./engine``): with
``$IMAGETOOL_HOME`` set, only the serve of that directory is used; else
the serve of the default directory, else the one registered serve
(several: the command asks to choose with ``$IMAGETOOL_HOME``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat

from imagetool.errors import ImagetoolError, UsageError
from imagetool.fsutil import write_atomic

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


def serves_dir() -> str:
    """Where running serves register: ``$XDG_RUNTIME_DIR/imagetool/serves``,
    else ``~/.cache/imagetool/serves``."""
    return _runtime("serves")


def locks_dir() -> str:
    """The user's lock files (``$XDG_RUNTIME_DIR/imagetool/locks``, else
    under ``~/.cache``), made 0700 if missing. Not under /tmp, where
    another user could make the directory first and own the locks."""
    path = _runtime("locks")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ImagetoolError(f"{path}: not a private directory of this user (mode 0700); "
                             "remove it and run again")
    return path


def _runtime(name: str) -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imagetool", name)


def _entry(data_dir: str) -> str:
    key = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:32]
    return os.path.join(serves_dir(), key + ".json")


def register_serve(data_dir: str) -> None:
    """Record that this process serves ``data_dir`` (owner-only files)."""
    os.makedirs(serves_dir(), mode=0o700, exist_ok=True)
    path = _entry(data_dir)
    entry = {"data_dir": os.path.abspath(data_dir), "pid": os.getpid()}
    write_atomic(path, json.dumps(entry), sync=False, tmp=f"{path}.tmp-{os.getpid()}")


def unregister_serve(data_dir: str) -> None:
    """Drop this process's entry for ``data_dir``."""
    try:
        with open(_entry(data_dir)) as f:
            if json.load(f).get("pid") != os.getpid():
                return
        os.unlink(_entry(data_dir))
    except (OSError, ValueError):
        pass


def registered_serves() -> list[tuple[str, dict]]:
    """(data dir, lock file content) of every live registered serve."""
    try:
        names = sorted(os.listdir(serves_dir()))
    except OSError:
        return []
    found = []
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(serves_dir(), name)) as f:
                data_dir = json.load(f)["data_dir"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        info = find_running_engine(data_dir) if isinstance(data_dir, str) else None
        if info is not None:
            found.append((data_dir, info))
    return found


def locate_engine() -> tuple[str, dict | None]:
    """The data directory commands use, and its running serve's lock (or None).

    ``$IMAGETOOL_HOME`` set: that directory, served or not. Else the default
    directory when a serve runs there, else the one registered serve;
    several are a usage error naming them, none the default directory.
    """
    data_dir = default_data_dir()
    info = find_running_engine(data_dir)
    if info is not None or os.environ.get("IMAGETOOL_HOME"):
        return data_dir, info
    running = registered_serves()
    if len(running) == 1:
        return running[0]
    if len(running) > 1:
        dirs = ", ".join(d for d, _ in running)
        raise UsageError(f"{len(running)} imagetool serve processes are running "
                         f"({dirs}): choose one with IMAGETOOL_HOME=DIR or --engine-url")
    return data_dir, None
