"""Small file-system helpers shared by every layer that writes files."""

from __future__ import annotations

import os


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
