"""Owner-only files and directories of the local engine, and the OS errors of
writing them in a fault's words.

Every directory the engine creates is 0700 and every file 0600 whatever
the umask: volumes hold guests' disks.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager, suppress
from typing import Iterator

from imagetool.errors import FormatError
from imagetool.fsutil import opened

DIR_MODE = 0o700
FILE_MODE = 0o600


# Errors of a file system refusing bytes: the OS reports them without the
# file's name, which the one-line error must give (see ``naming``).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def naming(path: str) -> Iterator[None]:
    """Around writes of ``path``: an out-of-space (or quota, or file size)
    error raised without a file name gets ``path`` as its name, so that the
    fault or message naming it says which file could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno in NO_ROOM:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), path) from None
        raise


def os_reason(e: BaseException) -> str:
    """An OS or data error in one line for a fault: ``<file>: <strerror>``
    when the error names a file, the bare reason otherwise."""
    if isinstance(e, FormatError) or not isinstance(e, OSError):
        return str(e)
    why = e.strerror or str(e)
    return f"{e.filename}: {why}" if e.filename else why


def make_private_dirs(path: str) -> None:
    """``os.makedirs`` with every directory it creates 0700, whatever the umask."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for p in reversed(missing):
        with suppress(FileExistsError):
            os.mkdir(p, DIR_MODE)
        os.chmod(p, DIR_MODE)


def create_private(path: str) -> None:
    """Create (or truncate) ``path`` as an empty 0600 file, whatever the umask.

    Writers that then open it by name (``open(path, "wb")``, the qcow2
    writer) keep the mode of the existing file.
    """
    with opened(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE) as fd:
        os.fchmod(fd, FILE_MODE)
