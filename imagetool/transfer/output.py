"""Local files written by downloads: temporary name first, final name when complete.

A download never leaves a partial file under the name the user asked for:
bytes go to a hidden temporary file in the same directory (so the final
rename is atomic on the same file system), which is fsynced and renamed only
after the copy succeeded, and removed on any failure.
"""

from __future__ import annotations

import contextlib
import os
import threading
from contextlib import contextmanager
from typing import Iterator

from imagetool.errors import DestinationExists, ImagetoolError
from imagetool.fsutil import fsync_dir, opened



def check_destination(path: str | os.PathLike, force: bool) -> str:
    """Refuse an existing ``path`` unless ``force``; return it as a str."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DestinationExists(path, "is a directory")
    if os.path.exists(path) and not force:
        raise DestinationExists(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ImagetoolError(f"{parent}: no such directory")
    return path


@contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it there on success.

    The caller writes and closes the temporary file inside the ``with``.
    On success the file is fsynced, renamed over ``path`` and the directory
    fsynced; on any exception (Ctrl-C included) it is removed.
    """
    path = check_destination(path, force)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory,
                       f".{os.path.basename(path)}.part-{os.getpid()}-{threading.get_ident()}")
    try:
        yield tmp
        with opened(tmp) as fd:
            os.fsync(fd)
        if os.path.exists(path) and not force:
            raise DestinationExists(path, "file appeared during the download")
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
