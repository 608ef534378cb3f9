"""The backup repository: a directory of restore points, one chain per VM.

Layout::

    DIR/<vm-id>/<point>/manifest.json     what the point holds (below)
    DIR/<vm-id>/<point>/vm.ovf            the VM's OVF when the point was made
    DIR/<vm-id>/<point>/<disk-id>.qcow2   guest data (incremental: backing file
                                          ``../<parent point>/<disk-id>.qcow2``)
    DIR/<vm-id>/<point>/<disk-id>.digests block digests of the guest data
    DIR/<vm-id>/<point>/*.merging         a prune's merge in progress (the
                                          next prune finishes or drops it)
    DIR/<vm-id>/.partial-<point>/         a point being made (invisible)
    DIR/<vm-id>/.lock                     held while a point is made or pruned

Everything is owner-only (directories 0700, files 0600) whatever the umask:
the files are the VMs' disks.

A repository is read as untrusted input: a manifest is checked against its
schema (``manifest.Manifest.from_json``) before any field is used; VM and point
directories and their files must be real directories and regular files
(never symlinks, files opened with ``O_NOFOLLOW``); a manifest names files
by plain names inside its point; and a point's qcow2 file may have as
backing file only the parent point's file of the same disk that the
manifest names (``Repository.open_disk``), whatever its header says.

A point is written in its ``.partial-`` directory, fsynced, and renamed to
its final name only when complete, so a listing never shows a point that is
not whole. The qcow2 files are standard: ``qemu-img info --backing-chain``
and any other qcow2 reader follow the relative backing names.

The ``.digests`` file holds the block digests of imageio's block checksum
(ovirt-imageio docs, "Checksum") of the point's guest data, so that an
incremental point's checksum is computed from the blocks that changed only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from imagetool.backup.manifest import DiskEntry, Manifest, RepositoryError, plain_name
from imagetool.errors import ImagetoolError
from imagetool.fsutil import fsync_dir, opened, write_atomic

MANIFEST = "manifest.json"
PENDING = "manifest.merging"     # a prune's new manifest, until its files are in place
OVF_FILE = "vm.ovf"
STATE = "state.json"
PARTIAL = ".partial-"
LOCK = ".lock"


@dataclass
class Point:
    vm_dir: str
    name: str
    manifest: Manifest = field(repr=False)

    @property
    def path(self) -> str:
        return os.path.join(self.vm_dir, self.name)

    @property
    def vm_id(self) -> str:
        return self.manifest.vm_id

    @property
    def parent(self) -> str | None:
        return self.manifest.parent

    @property
    def timestamp(self) -> float:
        return float(self.manifest.timestamp)

    @property
    def method(self) -> str:
        return self.manifest.method

    @property
    def engine(self) -> dict:
        return self.manifest.engine

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def disk(self, disk_id: str) -> DiskEntry | None:
        return self.manifest.disk(disk_id)


def open_nofollow(path: str) -> int:
    """A read-only descriptor on a regular file that is not a symlink.

    RepositoryError naming the file otherwise (FileNotFoundError when it is
    missing, so callers can tell).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RepositoryError(f"{path}: is a symlink (refused in a backup "
                                  "repository)") from None
        raise RepositoryError(f"{path}: cannot be opened: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RepositoryError(f"{path}: not a regular file")
    return fd


def sha256_file(path: str, bufsize: int = 4 << 20) -> str:
    """SHA-256 of a file's bytes (hex); the file must not be a symlink."""
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    view = memoryview(buf)
    with os.fdopen(open_nofollow(path), "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def read_file(path: str) -> bytes:
    """A regular file's bytes, never through a symlink."""
    with os.fdopen(open_nofollow(path), "rb") as f:
        return f.read()


def write_json(path: str, doc: Any) -> None:
    """Write JSON durably and atomically (temporary file, fsync, rename), 0600."""
    write_atomic(path, json.dumps(doc, indent=2, sort_keys=True) + "\n", mode=0o600,
                 tmp=f"{path}.tmp-{os.getpid()}")


def read_json(path: str) -> Any:
    try:
        data = read_file(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise RepositoryError(f"{path}: unreadable: {e.strerror}") from None
    try:
        return json.loads(data)
    except ValueError as e:
        raise RepositoryError(f"{path}: not valid JSON: {e}") from None


class Repository:
    """A backup directory (created on first use by ``backup create``).

    ``problems`` collects what a scan skipped (symlinked VM or point
    directories, unreadable or malformed manifests) as ``(path, what)``:
    ``verify`` reports them; ``list`` and ``prune`` never follow them.
    """

    def __init__(self, root: str | os.PathLike, create: bool = False) -> None:
        # The root may be reached through a symlink the operator made; below
        # it nothing may be one.
        self.root = os.path.realpath(os.fspath(root))
        if create:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        elif not os.path.isdir(self.root):
            raise RepositoryError(f"{self.root}: no such backup directory")
        self.problems: list[tuple[str, str]] = []

    def _problem(self, path: str, what: str) -> None:
        self.problems.append((path, what))

    def _subdirs(self, directory: str) -> list[str]:
        """Names of the real (not symlinked) directories in ``directory``, no dot names."""
        out = []
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []
        for e in sorted(entries, key=lambda e: e.name):
            if e.name.startswith("."):
                continue
            if e.is_symlink():
                self._problem(e.path, "is a symlink (refused in a backup repository)")
            elif e.is_dir(follow_symlinks=False):
                out.append(e.name)
        return out

    # --- VMs and points ---------------------------------------------------

    def vm_dir(self, vm_id: str) -> str:
        if not plain_name(vm_id):
            raise RepositoryError(f"invalid VM id {vm_id!a}")
        path = os.path.join(self.root, vm_id)
        if os.path.islink(path):
            raise RepositoryError(f"{path}: is a symlink (refused in a backup repository)")
        return path

    def vm_ids(self) -> list[str]:
        """The VM directories (symlinked ones are problems, never followed)."""
        return self._subdirs(self.root)

    def points(self, vm_id: str) -> list[Point]:
        """The VM's complete points with valid manifests, oldest first.

        A point whose manifest is malformed raises RepositoryError; see
        ``scan_points`` to collect them instead.
        """
        seen = len(self.problems)
        pts = self.scan_points(vm_id)
        if len(self.problems) > seen:
            path, what = self.problems[seen]
            raise RepositoryError(f"{path}: {what}")
        return pts

    def scan_points(self, vm_id: str) -> list[Point]:
        """The VM's valid points; what is wrong is added to ``problems``."""
        vdir = self.vm_dir(vm_id)
        out = []
        for name in self._subdirs(vdir):
            mpath = os.path.join(vdir, name, MANIFEST)
            try:
                manifest = Manifest.from_json(read_json(mpath), mpath, vm_id, name)
            except FileNotFoundError:
                continue        # not a point (a leftover directory)
            except RepositoryError as e:
                self._problem(mpath, str(e).removeprefix(f"{mpath}: "))
                continue
            out.append(Point(vdir, name, manifest))
        out.sort(key=lambda p: (p.timestamp, p.name))
        return out

    def find_vm(self, vm: str) -> str:
        """A VM id of the repository from an id or a name (any of its points');
        RepositoryError when none or several VMs are."""
        ids = self.vm_ids()
        if vm in ids:
            return vm
        named = [v for v in ids if any(p.manifest.vm_name == vm for p in self.scan_points(v))]
        if not named:
            raise RepositoryError(f"{self.root}: no backups of VM {vm!r}")
        if len(named) > 1:
            raise RepositoryError(f"{self.root}: several VMs are named {vm!r} "
                                  f"({', '.join(named)}): use the id")
        return named[0]

    def point(self, vm_id: str, name: str | None = None) -> Point:
        """One point (the newest without ``name``)."""
        pts = self.points(vm_id)
        if not pts:
            raise RepositoryError(f"{self.root}: no points for VM {vm_id}")
        if name is None:
            return pts[-1]
        for p in pts:
            if p.name == name:
                return p
        raise RepositoryError(f"{self.root}: VM {vm_id} has no point {name!r}")

    def chain(self, point: Point, points: list[Point] | None = None) -> list[Point]:
        """The point and every point it depends on, oldest first."""
        by_name = {p.name: p for p in (points if points is not None
                                        else self.points(point.vm_id))}
        out = [point]
        while out[-1].parent:
            parent = by_name.get(out[-1].parent)
            if parent is None:
                raise RepositoryError(f"{out[-1].file(MANIFEST)}: parent point "
                                      f"{out[-1].parent} is missing")
            if parent in out:
                raise RepositoryError(f"{point.file(MANIFEST)}: loop in the chain of "
                                      f"parents at {parent.name}")
            out.append(parent)
        return list(reversed(out))

    def disk_files(self, point: Point, disk_id: str,
                   points: list[Point] | None = None) -> list[str]:
        """The qcow2 files of a disk's chain at ``point``, top first, checked.

        Each file must be a regular file of its point (not a symlink), its
        header's backing file exactly the manifest's ``backing``, and that
        either none or ``../<parent point>/<the parent's file of the same
        disk>``. Anything else is a RepositoryError naming the file: a
        repository someone else can write must not make a restore read a
        host file.
        """
        from imagetool.formats import qcow2

        chain = self.chain(point, points)
        by_name = {p.name: p for p in chain}
        out = []
        p = point
        while True:
            entry = p.disk(disk_id)
            if entry is None and not out:
                raise RepositoryError(f"{p.file(MANIFEST)}: no disk {disk_id}")
            if entry is None:
                raise RepositoryError(f"{out[-1]}: its backing point {p.name} has no "
                                      f"disk {disk_id}")
            path = p.file(entry.files.file)
            fd = open_nofollow(path)
            try:
                h = qcow2.parse_header(fd, path)
                qcow2.check_readable(h)     # no external data file, no encryption
            except ImagetoolError as e:
                raise RepositoryError(str(e)) from None
            finally:
                os.close(fd)
            backing = entry.files.backing
            if h.backing_file != backing:
                raise RepositoryError(
                    f"{path}: backing file {h.backing_file!a} is not the one its manifest "
                    f"names ({backing!a})")
            if h.virtual_size != entry.virtual_size:
                raise RepositoryError(f"{path}: virtual size {h.virtual_size} is not the "
                                      f"manifest's {entry.virtual_size}")
            out.append(path)
            if backing is None:
                return out
            parent = by_name.get(p.parent or "")
            low = parent.disk(disk_id) if parent is not None else None
            want = f"../{parent.name}/{low.files.file}" if low is not None else None
            if backing != want:
                raise RepositoryError(
                    f"{path}: backing file {backing!a} is not the parent point's file of "
                    f"disk {disk_id}" + (f" ({want})" if want else ""))
            p = parent

    def open_disk(self, point: Point, disk_id: str,
                  points: list[Point] | None = None) -> Any:
        """A read-only backend over a disk's guest data at ``point``.

        The chain is the one ``disk_files`` checked, opened bottom up with
        each layer given its parent explicitly: the backing name in a
        header is never followed.
        """
        from imagetool.formats.qcow2_reader import Qcow2Backend

        files = self.disk_files(point, disk_id, points)
        backend = None
        try:
            for path in reversed(files):
                before = os.lstat(path)
                backend = Qcow2Backend(path, backing=backend)
                after = os.fstat(backend._fd)
                if (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino) or \
                        not stat.S_ISREG(before.st_mode):
                    raise RepositoryError(f"{path}: changed while being opened")
        except BaseException:
            if backend is not None:
                backend.close()
            raise
        return backend

    # --- making a point -----------------------------------------------------

    def new_point_name(self, vm_id: str, now: float) -> str:
        base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        vdir = self.vm_dir(vm_id)
        name, n = base, 1
        while os.path.lexists(os.path.join(vdir, name)) or \
                os.path.lexists(os.path.join(vdir, PARTIAL + name)):
            n += 1
            name = f"{base}-{n}"
        return name

    def partials(self, vm_id: str) -> list[str]:
        """Staging directories left by interrupted runs."""
        vdir = self.vm_dir(vm_id)
        if not os.path.isdir(vdir):
            return []
        return sorted(os.path.join(vdir, n) for n in os.listdir(vdir) if n.startswith(PARTIAL)
                      and not os.path.islink(os.path.join(vdir, n)))

    def begin(self, vm_id: str, name: str, state: dict) -> str:
        """Create the staging directory of a new point; returns it."""
        vdir = self.vm_dir(vm_id)
        os.makedirs(vdir, mode=0o700, exist_ok=True)
        staging = os.path.join(vdir, PARTIAL + name)
        os.mkdir(staging, 0o700)
        write_json(os.path.join(staging, STATE), state)
        return staging

    def commit(self, staging: str, manifest: Manifest) -> Point:
        """Make a staged point visible: owner-only files, fsync, manifest, rename."""
        for name in os.listdir(staging):
            if name.endswith((".qcow2", ".digests", ".ovf")):
                with opened(os.path.join(staging, name), os.O_RDONLY | os.O_NOFOLLOW) as fd:
                    os.fchmod(fd, 0o600)
                    os.fsync(fd)
        os.chmod(staging, 0o700)
        write_json(os.path.join(staging, MANIFEST), manifest.to_json())
        os.unlink(os.path.join(staging, STATE))
        vdir = os.path.dirname(staging)
        os.rename(staging, os.path.join(vdir, manifest.point))
        fsync_dir(vdir)
        return Point(vdir, manifest.point, manifest)

    @staticmethod
    def discard(staging: str, keep_state: bool = False) -> None:
        """Remove a staging directory; ``keep_state``: all but its state file,
        which names what the engine still holds for the next run to clean up."""
        if not keep_state:
            shutil.rmtree(staging, ignore_errors=True)
            return
        for name in os.listdir(staging):
            if name != STATE:
                path = os.path.join(staging, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)

    @contextmanager
    def locked(self, vm_id: str) -> Iterator[None]:
        """Hold the VM's lock (one writer per VM chain); RepositoryError if busy."""
        vdir = self.vm_dir(vm_id)
        os.makedirs(vdir, mode=0o700, exist_ok=True)
        if os.path.islink(vdir) or not os.path.isdir(vdir):
            raise RepositoryError(f"{vdir}: is a symlink (refused in a backup repository)")
        with exclusive(os.path.join(vdir, LOCK),
                       f"{vdir}: another backup or prune of this VM is running"):
            yield


@contextmanager
def exclusive(path: str, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (made owner-only, never
    followed); RepositoryError(``busy``) if another process holds it."""
    with opened(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600) as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise RepositoryError(busy) from None
            raise
        yield
