"""Transfers straight to or from one imageio URL (no engine involved).

Useful with a URL from another tool or a ticket added by hand:
``upload_url`` writes a local image's guest data to the URL,
``download_url`` saves the URL's data as a raw or qcow2 file,
``url_checksum`` and ``url_info`` ask the server about it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from imagetool.errors import ImagetoolError
from imagetool.formats import WRITABLE, open_image
from imagetool.iocore.backend import Backend
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.formats.raw import RawBackend
from imagetool.imageio.backend import HttpBackend
from imagetool.imageio.client import ImageioClient
from imagetool.iocore.copier import DEFAULT_REQUEST_SIZE, CopyOptions, CopyStats, copy
from imagetool.iocore.backends import SharedBackend
from imagetool.transfer import verify as verifying
from imagetool.transfer.output import atomic_output

Progress = Callable[[int], None]


@dataclass
class TransferResult:
    """What one upload or download moved (the CLI's ``--json`` object)."""

    bytes: int
    seconds: float
    format: str
    checksum: str | None = None
    disk_id: str | None = None
    name: str | None = None
    path: str | None = None
    stats: CopyStats | None = field(default=None, repr=False)
    disk: Any = field(default=None, repr=False)     # the engine's Disk, when any
    verification: Any = field(default=None, repr=False)  # transfer.verify.Verification

    def to_dict(self) -> dict:
        """JSON-ready: disk_id, name, format, bytes, seconds, checksum, path."""
        out = {k: getattr(self, k) for k in
               ("disk_id", "name", "format", "bytes", "seconds", "checksum", "path")}
        if self.verification is not None:
            out.update(self.verification.to_dict())
        return out


def open_url(url: str, *, cafile: str | None = None, insecure: bool = False,
             proxy_url: str | None = None, signed_ticket: str | None = None,
             read_timeout: float = 60) -> Backend:
    """An HTTP backend on one imageio URL (OPTIONS done, features known)."""
    client = ImageioClient(url, cafile=cafile, insecure=insecure, proxy_url=proxy_url,
                           signed_ticket=signed_ticket, read_timeout=read_timeout)
    return HttpBackend(client)


def upload_backend(src: Backend, dst: Backend, *, workers: int = 4,
                   request_size: int = DEFAULT_REQUEST_SIZE,
                   dst_is_zero: bool = False, progress: Progress | None = None,
                   cancel_event=None) -> CopyStats:
    """Copy a local backend into an HTTP backend with capped workers."""
    workers = max(1, min(workers, dst.max_writers or workers))   # the server's advice
    return copy(SharedBackend(src), dst, CopyOptions(workers, request_size, dst_is_zero),
                progress=progress, cancel_event=cancel_event)


def new_file(path: str, format: str, backing_file: str | None = None,
             backing_format: str | None = None) -> Callable[[int], Backend]:
    """An opener of the new file ``path`` of a given size: raw (sparse,
    O_DIRECT) or qcow2 (over ``backing_file``, a qcow2 unless told)."""
    if format not in WRITABLE:
        raise ImagetoolError(f"unsupported download format {format!r} (raw or qcow2)")

    def create(size: int) -> Backend:
        if format == "raw":
            return RawBackend(path, "w", size=size, direct=True)
        return Qcow2Writer.create(path, size, backing_file=backing_file,
                                  backing_format=backing_format or (
                                      "qcow2" if backing_file else None))
    return create


def write_file(src: Backend, tmp: str, *, format: str = "raw", workers: int = 4,
               request_size: int = DEFAULT_REQUEST_SIZE,
               progress: Progress | None = None, cancel_event=None,
               backing_file: str | None = None,
               backing_format: str | None = None) -> CopyStats:
    """Write a backend's guest data to the new file ``tmp`` (raw sparse or qcow2).

    Zero ranges are skipped and data that reads as zeros is not written,
    so holes stay holes. With ``backing_file`` (qcow2: ``src`` is one
    layer, read shallow) only the layer's holes are skipped: its zero
    ranges and zero data become zero clusters, which hide the backing
    file's data as the layer hid its parent's. The caller owns renaming
    (see ``atomic_output``).
    """
    workers = max(1, min(workers, src.max_readers or workers))
    create = new_file(tmp, format, backing_file, backing_format)
    with SharedBackend(create(src.size)) as shared:
        # With few connections, writing the local file while the next
        # request is read is faster (benchmarks/transfer_results.md); with
        # more, workers overlap each other anyway.
        options = CopyOptions(workers, request_size, dst_is_zero=True, detect_zeroes=True,
                              overlap=workers <= 2,
                              over_backing=format == "qcow2" and backing_file is not None)
        stats = copy(src, shared, options, progress=progress, cancel_event=cancel_event)
        shared.flush()
    return stats


def _can_verify(backend: Backend, verify: bool):
    """None when ``backend``'s server can be verified against, else the
    skipped Verification saying why not.

    Only the server's own checksum counts here: reading a URL's data back
    over the same connection path would mostly check that path against
    itself, and a server without the feature is not an error.
    """
    if not verify:
        return verifying.skipped("not asked (--no-verify)")
    if "checksum" not in backend.features:
        return verifying.skipped("the server does not offer checksum")
    return None


def upload_url(path: str | os.PathLike, url: str, *, cafile: str | None = None,
               insecure: bool = False, workers: int = 4,
               request_size: int = DEFAULT_REQUEST_SIZE,
               progress: Progress | None = None, format: str | None = None,
               dst_is_zero: bool = False, verify: bool = True) -> TransferResult:
    """Write the guest data of a local raw/qcow2 image to an imageio URL.

    ``format`` None detects the file's format. ``dst_is_zero`` skips zero
    ranges (only when the target is known to read as zeros). Workers are
    capped by the server's ``max_writers``. ``verify`` (when the server
    offers ``checksum``) compares the block checksum of the file's guest
    data with the server's after the copy, as engine uploads do, and
    raises ChecksumMismatch with both values when they differ.
    """
    start = time.monotonic()
    with open_image(path, "r", format=format) as src:
        with open_url(url, cafile=cafile, insecure=insecure) as dst:
            verification = _can_verify(dst, verify)
            local = None
            if verification is None:
                # As engine uploads: hash the source while the copy runs, and
                # let a server that can hash flushed blocks ahead know how.
                algorithm = verifying.pick_algorithm(dst)
                verifying.announce_upload_checksum(dst, algorithm)
                local = verifying.LocalHash(
                    lambda: open_image(path, "r", format=format), algorithm=algorithm)
            try:
                stats = upload_backend(src, dst, workers=workers,
                                       request_size=request_size,
                                       dst_is_zero=dst_is_zero, progress=progress)
            except BaseException:
                if local is not None:
                    local.cancel()
                raise
            if local is not None:
                verification = verifying.verify_upload(
                    dst, os.fspath(path), local=local, algorithm=local.algorithm,
                    what=os.fspath(path))
    return TransferResult(bytes=stats.bytes_total,
                          seconds=time.monotonic() - start, format="raw",
                          path=os.fspath(path), stats=stats,
                          checksum=verification.value, verification=verification)


def download_url(url: str, path: str | os.PathLike, *, format: str = "raw",
                 cafile: str | None = None, insecure: bool = False,
                 workers: int = 4, request_size: int = DEFAULT_REQUEST_SIZE,
                 progress: Progress | None = None,
                 force: bool = False, verify: bool = True) -> TransferResult:
    """Save an imageio URL's data to ``path`` as a sparse raw or a qcow2 file.

    Refuses an existing ``path`` unless ``force``; the file appears only
    when complete (and, with ``verify`` on a server offering ``checksum``,
    only when its block checksum equals the server's: a mismatch raises
    ChecksumMismatch and leaves no file). Workers are capped by the
    server's ``max_readers``.
    """
    start = time.monotonic()
    with open_url(url, cafile=cafile, insecure=insecure) as src:
        verification = _can_verify(src, verify)
        with atomic_output(path, force) as tmp:
            stats = write_file(src, tmp, format=format, workers=workers,
                               request_size=request_size, progress=progress)
            if verification is None:
                verification = verifying.verify_download(src, tmp, format=format,
                                                         what=os.fspath(path))
    return TransferResult(bytes=stats.bytes_total,
                          seconds=time.monotonic() - start, format=format,
                          path=os.fspath(path), stats=stats,
                          checksum=verification.value, verification=verification)


def url_checksum(url: str, *, algorithm: str = "blake2b",
                 block_size: int = 4 << 20, cafile: str | None = None,
                 insecure: bool = False) -> dict:
    """The server's block checksum of the URL's guest data."""
    with ImageioClient(url, cafile=cafile, insecure=insecure) as client:
        return client.checksum(algorithm=algorithm, block_size=block_size)


def url_info(url: str, *, cafile: str | None = None,
             insecure: bool = False, extents: bool = True) -> dict:
    """Size, features and allocation summary of an imageio URL."""
    with ImageioClient(url, cafile=cafile, insecure=insecure) as client:
        opts = client.options()
        info = {"url": _redact(url), "size": client.size(),
                "features": sorted(opts.features), "max_readers": opts.max_readers,
                "max_writers": opts.max_writers}
        if extents and "extents" in opts.features:
            data = zero = 0
            for ext in client.extents("zero"):
                if ext.zero:
                    zero += ext.length
                else:
                    data += ext.length
            info["data_bytes"] = data
            info["zero_bytes"] = zero
        return info


def _redact(url: str) -> str:
    """Hide the ticket id (a secret) in a URL shown to users."""
    head, sep, tail = url.rpartition("/images/")
    return f"{head}/images/***" if sep and tail else url
