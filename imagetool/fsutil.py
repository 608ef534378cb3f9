"""Small file-system helpers shared by every layer that writes files."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


def fsync_dir(directory: str) -> None:
    """Make a rename or a new file in ``directory`` durable.

    Skipped silently where directories cannot be opened or synced (some
    platforms and file systems refuse): the data itself was already synced.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str, text: str, *, mode: int = 0o600, sync: bool = True,
                 tmp: str | None = None) -> None:
    """Replace ``path`` with ``text`` through a temporary file and a rename,
    so a reader (or a crash) sees the old file or the new one, never half.

    ``mode`` applies to a new file (before the umask): owner-only by
    default, as the local engine's files are. ``sync`` makes the new
    content and the rename durable (fsync of the file, then its directory)
    before returning. ``tmp`` names the temporary file (default
    ``path.tmp``).
    """
    tmp = tmp or path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def opened(path: str | os.PathLike, flags: int = os.O_RDONLY,
           mode: int = 0o600) -> Iterator[int]:
    """``os.open`` as a with-statement: the descriptor is closed on the way out."""
    fd = os.open(path, flags | os.O_CLOEXEC, mode)
    try:
        yield fd
    finally:
        os.close(fd)
