"""What a caller chooses about one upload or download, as one value.

The CLI, the ``*_result`` functions and their wrappers used to repeat the
same dozen keywords; now each builds or passes one frozen options object
(as httpx's ``Timeout`` and ``Limits`` group a client's settings). The
keyword form still works: ``upload_disk(conn, path, sd, workers=8)`` is
``upload_disk(conn, path, sd, UploadOptions(workers=8))``, and keywords
given with an options object override its fields.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from imagetool.checksum import DEFAULT_BLOCK_SIZE
from imagetool.iocore.copier import DEFAULT_REQUEST_SIZE

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class UploadOptions:
    """How to upload one file as a new disk (see ``upload.upload_disk``).

    ``name`` of the disk (default: the file's name), ``disk_format``
    raw|qcow2 (default: the file's), ``sparse`` thin or preallocated,
    ``disk_id`` of the new disk, ``transfer_format`` raw (guest data) or
    cow (volume bytes), ``workers`` connections, ``buffer_size`` bytes per
    request, ``timeout_policy`` legacy|pause|cancel (default: cancel, or
    pause with ``resume``), ``inactivity_timeout`` seconds, ``use_proxy``,
    ``description`` of the disk, ``verify`` the block checksum before
    finalizing, ``resume`` an interrupted upload of the same file,
    ``host`` (name or id) to transfer through (default: chosen as
    ``imagetool.engine.hosts`` says; ``host_index`` spreads a batch over the
    data center's hosts), ``allow_outside_backing`` a qcow2 chain whose
    backing files lie outside the top image's directory.
    """

    name: str | None = None
    disk_format: str | None = None
    sparse: bool = True
    disk_id: str | None = None
    transfer_format: str | None = None
    workers: int = 4
    buffer_size: int = DEFAULT_REQUEST_SIZE
    timeout_policy: str | None = None
    inactivity_timeout: int = 60
    use_proxy: bool = False
    description: str | None = None
    verify: bool = True
    resume: bool = False
    host: str | None = None
    host_index: int = 0
    allow_outside_backing: bool = False


@dataclass(frozen=True)
class DownloadOptions:
    """How to download one disk (see ``download.download_disk``).

    ``format`` raw|qcow2 of the file, ``snapshot_id`` a disk snapshot to
    download (``shallow``: that layer only, with ``backing_file`` naming
    the previous layer in the qcow2), ``force`` overwrite, ``workers``
    connections, ``buffer_size`` bytes per request,
    ``inactivity_timeout`` seconds, ``use_proxy``, ``verify`` the block
    checksum before finalizing, ``resume`` an interrupted raw download,
    ``host`` and ``host_index`` as for uploads.
    """

    format: str = "raw"
    snapshot_id: str | None = None
    shallow: bool = False
    backing_file: str | None = None
    force: bool = False
    workers: int = 4
    buffer_size: int = DEFAULT_REQUEST_SIZE
    inactivity_timeout: int = 60
    use_proxy: bool = False
    verify: bool = True
    resume: bool = False
    host: str | None = None
    host_index: int = 0


@dataclass(frozen=True)
class DiskOptions:
    """How one disk moves (one frozen value for :func:`send` and :func:`receive`).

    The session: ``format`` raw (guest data) or cow (volume bytes),
    ``inactivity_timeout``, ``timeout_policy``, ``use_proxy``, ``host_id``,
    ``snapshot_id`` and ``shallow`` (receive a disk snapshot, or that layer
    only), ``backup_id`` (receive through a VM backup). The copy:
    ``workers`` (capped by the server's), ``buffer_size``, ``dst_is_zero``
    (send: the new disk reads as zeros), ``detect_zeroes`` and
    ``over_backing`` (receive into a qcow2 over a backing file),
    ``dirty`` (receive only what a VM backup reports changed). Around it:
    ``retries`` per request, ``flush`` every so many bytes as the copy goes
    (a server hashing ahead then hashes beside the copy), ``journal`` (send:
    an ``UploadResume``, receive: a download ``Journal``) recording durable
    ranges so a killed run continues. ``verify`` compares the server's
    block checksum before finalizing, with ``algorithm`` (None: picked) and
    ``block_size``; ``expected`` (send) is the checksum the disk must get,
    compared instead of hashing the source; ``volume_bytes`` (send) says
    the source is a qcow2 file's own bytes. ``what`` names the disk in
    errors.
    """

    format: str = "raw"
    workers: int = 4
    buffer_size: int = DEFAULT_REQUEST_SIZE
    inactivity_timeout: int = 60
    timeout_policy: str | None = None
    use_proxy: bool = False
    host_id: str | None = None
    snapshot_id: str | None = None
    shallow: bool = False
    backup_id: str | None = None
    dst_is_zero: bool = True
    detect_zeroes: bool = True
    over_backing: bool = False
    dirty: bool = False
    retries: bool = True
    flush: bool = True
    journal: Any = None
    verify: bool = True
    algorithm: str | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    expected: str | None = None
    volume_bytes: bool = False
    what: str = ""


def resolve(cls: type[T], options: T | None, keywords: dict[str, Any]) -> T:
    """``options`` (default: ``cls()``) with ``keywords`` set on top.

    An unknown keyword raises TypeError, as it did when the functions
    listed their keywords.
    """
    if options is None:
        return cls(**keywords)
    if not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__name__}, "
                        f"not {type(options).__name__}")
    return dataclasses.replace(options, **keywords) if keywords else options


def keywords_of(cls: type) -> Callable[[F], F]:
    """Show ``cls``'s fields as keyword-only parameters of the decorated
    function (``def f(..., options=None, *, progress=None, **keywords)``).

    ``help()``, editors and ``inspect.signature`` then list every keyword
    with its default, as when the functions spelled them out, while the
    list itself lives only in the dataclass.
    """
    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values()
                  if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in params}
        params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                     default=f.default, annotation=f.type)
                   for f in dataclasses.fields(cls) if f.name not in taken]
        fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return fn
    return decorate
