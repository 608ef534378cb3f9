"""Convert an image's guest data to a new raw or qcow2 file.

``convert_backend`` is the one conversion: ``convert`` (the command), an
upload's raw-to-qcow2 step, a download's qcow2-volume-to-raw step and the
local engine's flatten all write their new file through it, and it copies
with the one copier (``imagetool.iocore.copier``).

The destination is written under a temporary name in its own directory,
fsynced, then renamed over ``dst`` (so ``dst`` never holds half an image);
any failure removes the temporary file. An existing ``dst`` is refused
unless ``force``.

Speed and memory: only data extents are read (zero and unallocated ranges
stay holes in a raw destination and unallocated clusters in a qcow2 one;
so do aligned 64 KiB runs of zeros found in the data),
in requests of up to ``request_size`` bytes copied by ``workers`` threads,
each with one reused buffer, so memory stays near ``workers *
request_size`` whatever the image size. For a qcow2 destination requests
are aligned to its clusters, so every cluster is written whole (required
for compression).
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

from imagetool import formats
from imagetool.iocore.copier import CopyOptions, CopyStats, copy_local
from imagetool.errors import DestinationExists, FormatError
from imagetool.iocore.backend import Backend
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.formats.raw import RawBackend
from imagetool.fsutil import fsync_dir

DEFAULT_REQUEST_SIZE = 8 * 1024 * 1024
# Runs of zeros at least this long (and aligned to it within a request) are
# not written, so allocated zeros in the source become holes / unallocated
# clusters, as qemu-img convert does.
ZERO_GRANULARITY = 64 * 1024


def convert(src_path: str | os.PathLike, dst_path: str | os.PathLike,
            out_format: str, compress: bool = False, force: bool = False,
            progress: Callable[[int], None] | None = None,
            workers: int = 2, cluster_size: int = 65536,
            src_format: str | None = None,
            request_size: int = DEFAULT_REQUEST_SIZE) -> dict:
    """Write ``src_path``'s guest data (backing chain included) to ``dst_path``.

    ``out_format``: "raw" (sparse) or "qcow2" (v3; ``compress`` deflates
    clusters). ``progress(nbytes)`` is called as guest bytes are done.
    Returns ``{"virtual_size": ..., "data_bytes": bytes copied}``.
    """
    src_path, dst_path = os.fspath(src_path), os.fspath(dst_path)
    if out_format not in formats.WRITABLE:
        raise ValueError(f"unsupported output format {out_format!r} (use raw or qcow2)")
    if compress and out_format != "qcow2":
        raise ValueError("compression needs the qcow2 output format")
    if workers < 1 or request_size < 4096:
        raise ValueError("workers must be >= 1 and request_size >= 4096")
    if os.path.lexists(dst_path):
        if os.path.exists(src_path) and os.path.samefile(src_path, dst_path):
            raise FormatError("source and destination are the same file", dst_path)
        if not force:
            raise DestinationExists(dst_path)
        if os.path.isdir(dst_path):
            raise DestinationExists(dst_path, "is a directory")

    # try/finally, not with: a Backend need not be a context manager.
    src = formats.open_image(src_path, "r", format=src_format)
    try:
        stats = convert_to_file(src, dst_path, out_format, compress=compress,
                                cluster_size=cluster_size, workers=workers,
                                request_size=request_size, progress=progress)
        return {"virtual_size": src.size, "data_bytes": stats.bytes_copied}
    finally:
        src.close()


def convert_to_file(src: Backend, dst_path: str, out_format: str, *, mode: int = 0o644,
                    **kwargs) -> CopyStats:
    """``convert_backend`` to a new file: written under a temporary name in
    ``dst_path``'s directory, renamed over ``dst_path`` once complete (the
    caller checked whether it may be replaced), removed on any failure;
    a full disk or quota is one line naming ``dst_path``. ``mode``: the new
    file's permissions."""
    dst_dir = os.path.dirname(os.path.abspath(dst_path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst_path)}.",
                               suffix=".tmp", dir=dst_dir)
    os.close(fd)
    try:
        os.chmod(tmp, mode)
        stats = convert_backend(src, tmp, out_format, **kwargs)
        os.replace(tmp, dst_path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        refused = _write_refused(e, dst_path, src.size)
        if refused is not None:
            raise refused from None
        raise
    fsync_dir(dst_dir)
    return stats


_WRITE_REFUSED = {
    errno.EFBIG: "the file system or the file size limit (ulimit -f) refuses a file "
                 "of {size} bytes; write it to another file system or raise the limit",
    errno.ENOSPC: "no space left for {size} bytes; free some or write it elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write it elsewhere",
}


def _write_refused(e: BaseException, dst_path: str, size: int) -> FormatError | None:
    """A one-line error naming ``dst_path`` and what to do, when the
    destination's file system refused the bytes (else None)."""
    if not isinstance(e, OSError) or e.errno not in _WRITE_REFUSED:
        return None
    advice = _WRITE_REFUSED[e.errno].format(size=size)
    return FormatError(f"cannot write: {e.strerror}: {advice}", dst_path)


def convert_backend(src: Backend, dst_path: str, out_format: str, *,
                    size: int | None = None, compress: bool = False,
                    cluster_size: int = 65536, workers: int = 2,
                    request_size: int = DEFAULT_REQUEST_SIZE,
                    progress: Callable[[int], None] | None = None,
                    cancel_event: threading.Event | None = None,
                    offset: int = 0) -> CopyStats:
    """Write the guest data of ``src`` (thread-safe reads) to a new file.

    ``out_format`` "raw" (sparse) or "qcow2" (v3; ``compress`` deflates
    clusters of ``cluster_size``); ``size`` (default ``src.size``) is the
    new file's virtual size. An existing ``dst_path`` is truncated, its
    mode kept (create it first for other permissions); the caller owns
    its name (see ``convert``) and ``src``. The file is flushed. Errors of
    either side are raised as they are: a local conversion has no remote
    side to name. ``offset`` (qcow2 only): the image starts at that byte of
    ``dst_path``, the bytes before it kept (an OVA's tar member).
    """
    size = src.size if size is None else size
    if offset and out_format != "qcow2":
        raise ValueError("an offset is only supported for qcow2 output")
    if out_format == "qcow2":
        dst: Backend = Qcow2Writer.create(dst_path, size, cluster_size, compress=compress,
                                          offset=offset)
        align = cluster_size
    else:
        dst = RawBackend(dst_path, "w", size=size)
        align = 4096
    with dst:
        options = CopyOptions(workers, max(align, request_size // align * align),
                              dst_is_zero=True, detect_zeroes=True, align=align,
                              zero_granularity=max(align, ZERO_GRANULARITY))
        return copy_local(src, dst, options, progress=progress, cancel_event=cancel_event)
