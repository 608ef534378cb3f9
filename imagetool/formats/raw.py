"""A raw image file as a Backend: guest byte N is file byte N.

Thread safety: all I/O uses positional calls (``os.pread``/``os.pwrite``) on
one descriptor, so threads never share a file position. Platforms without
``pread`` (Windows) fall back to seek+read under a lock.

Direct I/O (``direct=True``): reads and writes whose offset, length and
buffer address are aligned to 4096 bytes go through a second descriptor
opened with O_DIRECT, skipping the page cache (no copy into it, no
gigabytes of dirty pages for the final fsync, other cached pages not
evicted); the unaligned edges of a request go through the ordinary
descriptor (the kernel keeps both views coherent), followed by write-back
advice (POSIX_FADV_DONTNEED). A file system that refuses O_DIRECT (tmpfs)
gets only the ordinary path. The buffers of the copier and of the data
plane are page aligned, so whole requests go direct. ovirt-imageio's file
backend works the same way.

Sparseness (``sparse``): ``zero()`` punches holes when True (the default),
and zeroes in place keeping the blocks allocated when False (a
preallocated volume must stay allocated).

Size: ``size`` is the exact file length. qemu reports a raw image's virtual
size rounded up to 512 bytes; we keep the exact length so that a copy
reproduces the file byte for byte.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
import sys
import threading
from typing import Iterator

from imagetool.errors import FormatError
from imagetool.iocore.backend import BackendBase, Extent, undo_on_error

_HAVE_PREAD = hasattr(os, "pread") and hasattr(os, "pwrite")
_HAVE_PREADV = hasattr(os, "preadv")
_SEEK_DATA = getattr(os, "SEEK_DATA", None)
_SEEK_HOLE = getattr(os, "SEEK_HOLE", None)

# linux/falloc.h
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10

_ALIGN = 4096       # O_DIRECT alignment that every local file system accepts
_ZERO_CHUNK = 1 << 20
_ZEROS = bytes(_ZERO_CHUNK)


def _load_fallocate():
    """libc's fallocate(2) via ctypes, or None where it does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                           use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()
PUNCH_HOLE = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE


def fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """fallocate(2) on ``fd``: False where the platform or the file system
    does not offer ``mode`` (the caller falls back), OSError on any other
    failure."""
    if _fallocate is None:
        return False
    if _fallocate(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


def fd_size(fd: int) -> int:
    """Length of an open file or block device (fstat says 0 for devices)."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return st.st_size


def open_readonly(path: str, label: str | None = None) -> int:
    """A read-only descriptor on ``path``; FormatError naming ``label`` (default:
    the path) when it cannot be opened."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise FormatError(f"cannot open: {e.strerror}", label or path) from e


@contextlib.contextmanager
def reading(path: str, label: str | None = None) -> Iterator[int]:
    """``open_readonly`` as a with-statement: closed on the way out."""
    fd = open_readonly(path, label)
    try:
        yield fd
    finally:
        os.close(fd)


_SEEK_LOCK = threading.Lock()


def pread(fd: int, length: int, offset: int) -> bytes:
    """Positional read; seek+read under a lock where pread is missing."""
    if _HAVE_PREAD:
        return os.pread(fd, length, offset)
    with _SEEK_LOCK:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, length)


def read_full(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from file ``offset``; bytes read, fewer only at end of file."""
    done = 0
    while done < len(view):
        if _HAVE_PREADV:
            n = os.preadv(fd, [view[done:]], offset + done)
        else:
            chunk = pread(fd, len(view) - done, offset + done)
            n = len(chunk)
            view[done:done + n] = chunk
        if n == 0:
            break
        done += n
    return done


def seek_extents(fd: int, start: int, end: int, base: int = 0) -> Iterator[Extent]:
    """Data and holes of ``[start, end)``, file bytes from ``base + start``,
    from SEEK_DATA/SEEK_HOLE.

    Holes are ``Extent(zero=True, hole=True)``, data ``Extent()``. Where
    the OS or filesystem cannot report holes, the range is one data extent.
    """
    if start < end and (_SEEK_DATA is None or _SEEK_HOLE is None):
        yield Extent(start, end - start)
        return
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, base + pos, _SEEK_DATA) - base
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole left up to EOF
                data = end
            elif pos == start and e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield Extent(start, end - start)
                return
            else:
                raise
        data = min(max(data, pos), end)
        if data > pos:
            yield Extent(pos, data - pos, zero=True, hole=True)
        if data >= end:
            break
        try:
            hole = os.lseek(fd, base + data, _SEEK_HOLE) - base
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            hole = end  # file shrank under us: treat the rest as data
        hole = min(max(hole, data + 1), end)
        yield Extent(data, hole - data)
        pos = hole

_MODES = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
}


class RawBackend(BackendBase):
    """Random access to a raw file.

    ``mode``: ``"r"`` read only, ``"r+"`` read/write an existing file, ``"w"``
    create or truncate. ``size``: with ``"w"`` the initial length (sparse);
    with ``"r+"`` the file is extended (never shrunk) to at least ``size``.
    ``direct`` and ``sparse``: see the module docstring.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r",
                 size: int | None = None, *, direct: bool = False, sparse: bool = True):
        if mode not in _MODES:
            raise ValueError(f"invalid mode {mode!r} (use 'r', 'r+' or 'w')")
        if size is not None and size < 0:
            raise ValueError(f"invalid size {size}")
        self.path = os.fspath(path)
        self.mode = mode
        self.sparse = sparse
        self._want_direct = direct
        self._dfd: int | None = None
        self._direct_ok = False
        flags = _MODES[mode] | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            raise FormatError(f"cannot open: {e.strerror}", self.path) from e
        self._lock = threading.Lock()
        self._closed = False
        # None = not tried yet; False = the filesystem cannot punch holes.
        self._can_punch: bool | None = None if _fallocate else False
        # The same for zeroing with allocation (ZERO_RANGE, then fallocate).
        self._can_zero_range: bool | None = None if _fallocate else False
        self._can_allocate: bool | None = None if _fallocate else False
        if size is not None and mode != "r":
            with undo_on_error(lambda: os.close(self._fd)):
                if size > fd_size(self._fd) or mode == "w":
                    os.ftruncate(self._fd, size)
        if direct and hasattr(os, "O_DIRECT"):
            access = os.O_RDONLY if mode == "r" else os.O_RDWR
            try:
                self._dfd = os.open(self.path, access | os.O_DIRECT | os.O_CLOEXEC)
                self._direct_ok = True
            except OSError:
                pass        # tmpfs and some file systems refuse O_DIRECT

    @property
    def direct(self) -> bool:
        """Whether aligned I/O goes through O_DIRECT (asked for and allowed)."""
        return self._direct_ok

    # --- Backend protocol ------------------------------------------------

    @property
    def size(self) -> int:
        """Current file length in bytes (exact, not rounded)."""
        return fd_size(self._fd)

    def extents(self, context: str = "zero") -> Iterator[Extent]:
        """Data and holes of the file (``seek_extents``). Only the "zero"
        context is meaningful for a raw file."""
        if context != "zero":
            raise ValueError(f"unsupported extents context {context!r}")
        # Mapped whole before the first extent is yielded.
        yield from list(seek_extents(self._fd, 0, self.size))

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; fewer bytes only at end of file."""
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        view = memoryview(buf).cast("B")
        done = self._read_direct(offset, view) if self._direct_ok else 0
        return done + read_full(self._fd, view[done:], offset + done)

    def write(self, offset: int, data: memoryview | bytes) -> None:
        """Write all of ``data`` at ``offset``, extending the file if needed."""
        self._check_writable()
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        view = memoryview(data).cast("B")
        done = start = self._write_direct(offset, view) if self._direct_ok else 0
        while done < len(view):
            done += self._pwrite(offset + done, view[done:])
        if self._want_direct and done > start:
            try:    # write the cached pages back now and drop them
                os.posix_fadvise(self._fd, offset + start, done - start,
                                 os.POSIX_FADV_DONTNEED)
            except (OSError, AttributeError):
                pass    # advice only

    def zero(self, offset: int, length: int, allocate: bool | None = None) -> None:
        """Make the range read as zeros.

        A sparse backend punches holes where possible, and a range past the
        end extends the file with a hole. Otherwise (or with ``allocate``)
        the range keeps (or gets) disk space, as a preallocated volume
        needs: the blocks are zeroed in place, never deallocated.
        """
        self._check_writable()
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range offset={offset} length={length}")
        if length == 0:
            return
        if not self.sparse if allocate is None else allocate:
            self._zero_allocated(offset, length)
            return
        end = offset + length
        size = self.size
        if end > size:
            # Grow by writing the last byte: unlike ftruncate it never shrinks
            # a file another thread has just extended further (concurrent
            # zeros past the end lost data that way). [size, end - 1) stays
            # a hole.
            self._pwrite(end - 1, memoryview(b"\0"))
            end = min(end, max(size, offset))
            if end <= offset:
                return
            length = end - offset
        if not self._punch(offset, length):
            self._write_zeros(offset, end)

    def flush(self) -> None:
        os.fsync(self._fd)

    def clone(self) -> "RawBackend":
        """Another backend with its own descriptor on the same file."""
        return RawBackend(self.path, "r" if self.mode == "r" else "r+",
                          direct=self._want_direct, sparse=self.sparse)

    def close(self) -> None:
        """Close the descriptors; safe to call twice."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)
            if self._dfd is not None:
                os.close(self._dfd)

    def __repr__(self) -> str:
        return f"RawBackend({self.path!r}, mode={self.mode!r})"

    # --- helpers ---------------------------------------------------------

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise PermissionError(f"{self.path}: opened read-only")

    def _direct_span(self, offset: int, view: memoryview) -> int:
        """Bytes at the start of ``view`` that O_DIRECT may move (0: none)."""
        n = len(view) - len(view) % _ALIGN
        if offset % _ALIGN or not n or view.readonly:
            return 0
        if ctypes.addressof(ctypes.c_char.from_buffer(view)) % _ALIGN:
            return 0
        return n

    def _direct_refused(self, e: OSError) -> None:
        """EINVAL: the file system refuses this O_DIRECT I/O after all (larger
        sectors); stop trying. Other errors are the file's and are raised."""
        if e.errno != errno.EINVAL:
            raise e
        self._direct_ok = False     # the descriptor is closed with the backend

    def _read_direct(self, offset: int, view: memoryview) -> int:
        """Read the aligned start of ``view`` with O_DIRECT; bytes read."""
        n = self._direct_span(offset, view)
        if not n:
            return 0
        try:
            return os.preadv(self._dfd, [view[:n]], offset)
        except OSError as e:
            self._direct_refused(e)
            return 0

    def _write_direct(self, offset: int, view: memoryview) -> int:
        """Write the aligned start of ``view`` with O_DIRECT; bytes written."""
        n = self._direct_span(offset, view)
        done = 0
        try:
            while done < n:
                done += os.pwrite(self._dfd, view[done:n], offset + done)
        except OSError as e:
            self._direct_refused(e)
        return done

    def _pwrite(self, offset: int, view: memoryview) -> int:
        if _HAVE_PREAD:
            return os.pwrite(self._fd, view, offset)
        with self._lock:
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.write(self._fd, view)

    def _zero_allocated(self, offset: int, length: int) -> None:
        """Zero a range leaving it allocated (past the end: grows the file).

        ZERO_RANGE marks the blocks unwritten in one call; filesystems without
        it (tmpfs, NFS) get a punched hole allocated again, the way qemu does;
        the last resort writes the zeros. None of these shrinks the file, so
        concurrent writers past the end are safe.
        """
        if self._can_zero_range is not False:
            self._can_zero_range = self._fallocate(_FALLOC_FL_ZERO_RANGE, offset, length)
            if self._can_zero_range:
                return
        if self._can_allocate is not False:
            size = self.size
            punched = offset >= size or self._punch(offset, min(length, size - offset))
            self._can_allocate = punched and self._fallocate(0, offset, length)
            if self._can_allocate:
                return
        self._write_zeros(offset, offset + length)

    def _write_zeros(self, offset: int, end: int) -> None:
        for pos in range(offset, end, _ZERO_CHUNK):
            self.write(pos, memoryview(_ZEROS)[:min(_ZERO_CHUNK, end - pos)])

    def _fallocate(self, mode: int, offset: int, length: int) -> bool:
        """fallocate(2); False if the file system refuses this mode."""
        try:
            return fallocate(self._fd, mode, offset, length)
        except OSError as e:
            raise OSError(e.errno, e.strerror, self.path) from None

    def _punch(self, offset: int, length: int) -> bool:
        """Deallocate the range inside the file; False if not supported."""
        if not self._can_punch and self._can_punch is not None:
            return False
        self._can_punch = self._fallocate(PUNCH_HOLE, offset, length)
        return self._can_punch
