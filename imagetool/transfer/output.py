"""Local files written by downloads: temporary name first, final name when complete.

A download never leaves a partial file under the name the user asked for:
bytes go to a hidden temporary file in the same directory (so the final
rename is atomic on the same file system), which is fsynced and renamed only
after the copy succeeded, and removed on any failure.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from contextlib import contextmanager
from typing import Iterator

from imagetool.errors import DestinationExists, ImagetoolError
from imagetool.formats.base import Backend
from imagetool.fsutil import fsync_dir


# The library's name for it here, kept for callers.
OutputExists = DestinationExists


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
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if os.path.exists(path) and not force:
            raise DestinationExists(path, "file appeared during the download")
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_ALIGN = 4096      # O_DIRECT alignment that every local file system accepts


class SharedBackend:
    """Let worker threads share one thread-safe local backend.

    ``clone()`` returns views whose ``close()`` and ``flush()`` do nothing:
    the owner flushes and closes the real backend once, after the copy
    (a qcow2 writer writes its metadata then, not once per worker).

    ``writeback_path``: a raw file whose guest offsets are file offsets.
    After each write the kernel is told to write those pages back and drop
    them (POSIX_FADV_DONTNEED): dirty pages no longer pile up until the
    kernel throttles every writer, and a download does not evict the page
    cache (faster for multi-GiB downloads: benchmarks/transfer_results.md).
    Better still, writes whose offset, length and buffer address are
    page-aligned (the copier's buffers are) go through a second O_DIRECT
    descriptor: no copy into the page cache, which was half of a
    download's CPU time. Others, and file systems refusing O_DIRECT
    (tmpfs), use the ordinary path.
    """

    def __init__(self, backend: Backend, owner: bool = True,
                 writeback_path: str | None = None):
        self._b = backend
        self._owner = owner
        self._wb_fd: int | None = None
        # {"fd": O_DIRECT descriptor, "on": usable}, shared with the clones.
        self._direct: dict = {}
        if writeback_path is not None and hasattr(os, "posix_fadvise"):
            self._wb_fd = os.open(writeback_path, os.O_RDONLY)
        if writeback_path is not None and hasattr(os, "O_DIRECT"):
            try:
                flags = os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC
                self._direct = {"fd": os.open(writeback_path, flags),
                                "on": True}
            except OSError:
                pass    # e.g. tmpfs: buffered writes only

    @property
    def size(self) -> int:
        return self._b.size

    def extents(self, context: str = "zero"):
        return self._b.extents(context)

    def read_into(self, offset: int, buf: memoryview) -> int:
        return self._b.read_into(offset, buf)

    def write(self, offset: int, data) -> None:
        if self._direct.get("on") and self._write_direct(offset, data):
            return
        self._b.write(offset, data)
        if self._wb_fd is not None:
            try:
                os.posix_fadvise(self._wb_fd, offset, len(data), os.POSIX_FADV_DONTNEED)
            except OSError:
                pass  # advice only

    def _write_direct(self, offset: int, data) -> bool:
        """Write with O_DIRECT if everything is aligned; False if not done."""
        view = memoryview(data).cast("B")
        if offset % _ALIGN or len(view) % _ALIGN or view.readonly:
            return False
        if ctypes.addressof(ctypes.c_char.from_buffer(view)) % _ALIGN:
            return False
        fd = self._direct["fd"]
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._direct["on"] = False    # the file system refuses it after all
            if done:
                self._b.write(offset + done, view[done:])
            else:
                return False
        return True

    def zero(self, offset: int, length: int) -> None:
        self._b.zero(offset, length)

    def flush(self) -> None:
        if self._owner:
            self._b.flush()

    def clone(self) -> "SharedBackend":
        view = SharedBackend(self._b, owner=False)
        view._wb_fd = self._wb_fd
        view._direct = self._direct
        return view

    def close(self) -> None:
        if self._owner:
            if self._wb_fd is not None:
                os.close(self._wb_fd)
                self._wb_fd = None
            if self._direct:
                os.close(self._direct.pop("fd"))
                self._direct.clear()
            self._b.close()

    def __getattr__(self, name):
        # features, max_readers, ... of the wrapped backend
        return getattr(self._b, name)
