"""The small interface a chunk repository keeps its objects behind.

A repository is a flat namespace of objects named by ``/``-separated
paths (``config``, ``chunks/1a2b/1a2b...``, ``points/VM/NAME``). Two
implementations: a local directory (``imagetool.backup.store.local``) and
S3-compatible object storage (``imagetool.backup.store.s3``). Everything a
repository needs is here: an atomic whole-object ``put`` (a reader sees
the old object or the new one, never half; one PUT has that property on
S3, a rename on a POSIX file system), ``get``, ``stat``, ``list`` by
prefix with sizes and modification times (for the garbage collector's
grace period), ``touch`` and ``delete``.

Names are validated here, at the door, before any storage sees them: each
component is 1-128 characters of ``[A-Za-z0-9._-]`` not starting with a
dot, so ``..``, absolute paths, empty components and temporary names
(which start with a dot) cannot be named by anything a repository file
says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from imagetool.errors import ImagetoolError

_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")
MAX_NAME = 1024


class StoreError(ImagetoolError):
    """The repository's storage is missing, unreachable, refused an
    operation, or holds something malformed."""


class ObjectMissing(StoreError):
    """A named object does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    mtime: float


def check_name(name: str) -> str:
    """``name`` if it is a valid object name, else StoreError naming it."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not all(
            _COMPONENT.match(c) for c in name.split("/")):
        raise StoreError(f"invalid object name {name!r}")
    return name


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or valid components ending with ``/``."""
    if prefix == "":
        return prefix
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise StoreError(f"invalid prefix {prefix!r}")
    check_name(prefix[:-1])
    return prefix


class Storage:
    """Objects by name. Implementations are safe to share between threads."""

    url: str = ""
    # The chunk size a new repository gets here unless told. 1 MiB, not
    # Proxmox Backup Server's 4 MiB: on ten clones of one template with 3%
    # unique writes the repository holds 1.29x the template's data against
    # 1.71x, an incremental stores a quarter of the bytes, and a full point
    # is no slower (benchmarks/README.md, "Chunk size"). But each chunk is
    # one object, and on object storage each object is a request.
    default_chunk_size: int = 1 << 20

    def put(self, name: str, data: bytes, durable: bool = True) -> None:
        """Store ``data`` under ``name`` atomically and durably, replacing any.
        ``durable=False``: durable only after the next ``sync()``."""
        raise NotImplementedError

    def sync(self) -> None:
        """Make every object put with ``durable=False`` durable."""

    def get(self, name: str) -> bytes:
        """The object's bytes (bytes-like: the local one returns a bytearray it
        made, saving a copy); ObjectMissing if there is none."""
        raise NotImplementedError

    def stat(self, name: str) -> ObjectInfo | None:
        """Size and modification time, or None if there is no such object."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        return self.stat(name) is not None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix`` (a directory-like
        prefix ending with ``/``, or empty for all), in no particular order."""
        raise NotImplementedError

    def touch(self, name: str) -> bool:
        """Set the object's modification time to now; False if it is gone.

        The garbage collector spares recently modified chunks, so a backup
        that reuses an old chunk touches it first (as Proxmox Backup
        Server's chunk store does with atime)."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Remove the object; a missing one is not an error."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""
