"""Repository objects as files under a local directory.

Every object is written to a temporary name (a leading dot, which no
object name can have) in its final directory, fsynced, renamed over the
final name, and the directory fsynced: a crash leaves the old object or the
new one, plus at worst a temporary file that listings skip. Chunks skip
both fsyncs (``durable=False``), have their writeback started as each is
written, and are synced together, with syncfs(2), before the index naming
them is written. Files are
``0600`` and directories ``0700`` whatever the umask (set with fchmod, not
through the creation mode, which the umask trims), because a backup holds
every byte of a VM's disks.

Symbolic links inside the repository are never followed: each path is
walked one component at a time from a descriptor of the root with
``O_NOFOLLOW`` (so a link planted inside a repository cannot send a write
or a delete elsewhere). The root itself is the user's path and may go
through links.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
import time
from typing import Iterator

from imagetool.backup.store.storage import (_COMPONENT, ObjectInfo, ObjectMissing, Storage,
                                            StoreError, check_name, check_prefix)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _syncfs(fd: int) -> int:
    """syncfs(2) where libc has it, else sync(2) (every file system)."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
    if fn is None:
        os.sync()
        return 0
    return fn(fd)


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike, create: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = self.root
        if create and not os.path.lexists(self.root):
            try:
                os.mkdir(self.root, 0o700)
            except OSError as e:
                raise StoreError(f"{self.root}: cannot create: {e.strerror}") from None
            os.chmod(self.root, 0o700)
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise StoreError(f"{self.root}: not a usable repository directory: "
                             f"{e.strerror}") from None
        os.close(fd)

    # --- walking without following links ---------------------------------

    def _open_dir(self, parts: list[str], create: bool, durable: bool = True) -> int:
        """A descriptor of the directory ``parts`` below the root; ``durable``
        False leaves a directory it creates to the next ``sync``."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=fd)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(nfd, 0o700)
                    if durable:
                        os.fsync(fd)
                os.close(fd)
                fd = nfd
            return fd
        except OSError as e:
            os.close(fd)
            if e.errno == errno.ELOOP or e.errno == errno.ENOTDIR:
                raise StoreError(f"{self._path(parts)}: not a directory "
                                 "(symbolic links are not followed in a repository)") from None
            raise

    def _path(self, parts: list[str]) -> str:
        return os.path.join(self.root, *parts)

    def _split(self, name: str) -> tuple[list[str], str]:
        parts = check_name(name).split("/")
        return parts[:-1], parts[-1]

    # --- the interface ----------------------------------------------------

    def put(self, name: str, data: bytes, durable: bool = True) -> None:
        dirs, base = self._split(name)
        try:
            dfd = self._open_dir(dirs, create=True, durable=durable)
        except OSError as e:
            raise StoreError(f"{self._path(dirs)}: cannot create: {e.strerror}") from None
        tmp = f".{base}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
                else:
                    # Starts writing the data back now, without waiting
                    # (Linux's fadvise starts writeback of dirty pages), so
                    # the point's final sync has little left to write.
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            os.rename(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
            if durable:
                os.fsync(dfd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise StoreError(f"{self._path(dirs + [base])}: cannot write: {e.strerror}") from None
        finally:
            os.close(dfd)

    def sync(self) -> None:
        """syncfs(2) of the repository's file system: every object put with
        ``durable=False`` (data and directory entries) reaches the disk."""
        try:
            fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError as e:
            raise StoreError(f"{self.root}: cannot open: {e.strerror}") from None
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise StoreError(f"{self.root}: cannot sync: {os.strerror(err)}")
        finally:
            os.close(fd)

    def _open_file(self, name: str) -> int:
        dirs, base = self._split(name)
        try:
            dfd = self._open_dir(dirs, create=False)
        except FileNotFoundError:
            raise ObjectMissing(f"{self._path(dirs + [base])}: missing") from None
        try:
            return os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            raise ObjectMissing(f"{self._path(dirs + [base])}: missing") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(f"{self._path(dirs + [base])}: is a symbolic link "
                                 "(refused in a repository)") from None
            raise StoreError(f"{self._path(dirs + [base])}: {e.strerror}") from None
        finally:
            os.close(dfd)

    def get(self, name: str) -> bytes:
        fd = self._open_file(name)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{self._path([name])}: not a regular file")
            out = bytearray(st.st_size)
            view, pos = memoryview(out), 0
            while pos < len(out):
                n = os.readv(fd, [view[pos:]])
                if n == 0:
                    break
                pos += n
            view.release()
            if pos < len(out):
                del out[pos:]       # shrunk meanwhile: what was there
            return out              # bytes-like, and no copy of a chunk
        except OSError as e:
            raise StoreError(f"{self._path([name])}: cannot read: {e.strerror}") from None
        finally:
            os.close(fd)

    def stat(self, name: str) -> ObjectInfo | None:
        dirs, base = self._split(name)
        try:
            dfd = self._open_dir(dirs, create=False)
        except FileNotFoundError:
            return None
        try:
            st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(dfd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(name, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        parts = check_prefix(prefix).split("/")[:-1] if prefix else []
        try:
            dfd = self._open_dir(parts, create=False)
        except FileNotFoundError:
            return
        yield from self._walk(dfd, prefix)

    def _walk(self, dfd: int, prefix: str) -> Iterator[ObjectInfo]:
        """Objects below the directory ``dfd`` (closed when done); one
        descriptor per level is open at a time."""
        try:
            with os.scandir(dfd) as it:
                # Temporary files (a leading dot) and names no object can
                # have are not objects.
                entries = [(e.name, e.stat(follow_symlinks=False)) for e in it
                           if _COMPONENT.match(e.name)]
            for name, st in entries:
                if stat.S_ISREG(st.st_mode):
                    yield ObjectInfo(prefix + name, st.st_size, st.st_mtime)
            for name, st in entries:
                if stat.S_ISDIR(st.st_mode):
                    try:
                        sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                    except OSError:
                        continue
                    yield from self._walk(sub, f"{prefix}{name}/")
        finally:
            os.close(dfd)

    def touch(self, name: str) -> bool:
        try:
            fd = self._open_file(name)
        except ObjectMissing:
            return False
        try:
            now = time.time()
            os.utime(fd, (now, now))
        finally:
            os.close(fd)
        return True

    def delete(self, name: str) -> None:
        dirs, base = self._split(name)
        try:
            dfd = self._open_dir(dirs, create=False)
        except FileNotFoundError:
            return
        try:
            os.unlink(base, dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"{self._path(dirs + [base])}: cannot delete: {e.strerror}") from None
        finally:
            os.close(dfd)
