"""Convert an image's guest data to a new raw or qcow2 file.

The destination is written under a temporary name in its own directory,
fsynced, then renamed over ``dst`` (so ``dst`` never holds half an image);
any failure removes the temporary file. An existing ``dst`` is refused
unless ``force``.

Speed and memory: only data extents are read (zero and unallocated ranges
stay holes in a raw destination and unallocated clusters in a qcow2 one;
so do aligned 64 KiB runs of zeros found in the data),
in requests of up to ``request_size`` bytes copied by ``workers`` threads,
each with one reused buffer; at most two requests per worker are queued, so
memory stays near ``workers * request_size`` whatever the image size. For a
qcow2 destination requests are aligned to its clusters, so every cluster is
written whole (required for compression).
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterator

from imagetool import formats
from imagetool.errors import DestinationExists, FormatError
from imagetool.formats.base import Backend
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.formats.raw import RawBackend
from imagetool.fsutil import fsync_dir

DEFAULT_REQUEST_SIZE = 8 * 1024 * 1024
# Runs of zeros at least this long (and aligned to it within a request) are
# not written, so allocated zeros in the source become holes / unallocated
# clusters, as qemu-img convert does.
ZERO_GRANULARITY = 64 * 1024
OUT_FORMATS = ("raw", "qcow2")


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
    if out_format not in OUT_FORMATS:
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

    src = formats.open_image(src_path, "r", format=src_format)
    try:
        dst_dir = os.path.dirname(os.path.abspath(dst_path))
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst_path)}.",
                                   suffix=".tmp", dir=dst_dir)
        os.close(fd)
        try:
            os.chmod(tmp, 0o644)
            if out_format == "qcow2":
                dst: Backend = Qcow2Writer.create(tmp, src.size, cluster_size,
                                                  compress=compress)
                align = cluster_size
            else:
                dst = RawBackend(tmp, "w", size=src.size)
                align = 4096
            try:
                copied = _copy(src, dst, align, request_size, workers, progress)
                dst.flush()
            finally:
                dst.close()
            os.replace(tmp, dst_path)
        except BaseException as e:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            refused = _write_refused(e, dst_path, src.size)
            if refused is not None:
                raise refused from None
            raise
        fsync_dir(dst_dir)
        return {"virtual_size": src.size, "data_bytes": copied}
    finally:
        src.close()


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


def _copy(src: Backend, dst: Backend, align: int, request_size: int,
          workers: int, progress: Callable[[int], None] | None) -> int:
    """Copy the data extents of ``src`` to ``dst`` with ``workers`` threads."""
    request_size = max(align, request_size // align * align)
    gran = max(align, ZERO_GRANULARITY)
    zeros = bytes(gran)
    local = threading.local()
    report_lock = threading.Lock()

    def report(n: int) -> None:
        if progress and n:
            with report_lock:
                progress(n)

    def copy_one(offset: int, length: int) -> int:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = memoryview(bytearray(request_size))
        view = buf[:length]
        n = src.read_into(offset, view)
        if n != length:
            raise FormatError(f"short read at offset {offset}: {n} of {length} bytes")
        run_start = None  # start of the pending run of non-zero segments
        for seg_start in range(0, length, gran):
            seg = view[seg_start:seg_start + gran]
            if _is_zero(seg, zeros):
                if run_start is not None:
                    dst.write(offset + run_start, view[run_start:seg_start])
                    run_start = None
            elif run_start is None:
                run_start = seg_start
        if run_start is not None:
            dst.write(offset + run_start, view[run_start:])
        return length

    copied = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert") as pool:
        inflight: set[Future] = set()
        try:
            for offset, length, is_data in _plan(src, align, request_size):
                if not is_data:
                    report(length)
                    continue
                if len(inflight) >= 2 * workers:
                    finished, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                    for f in finished:
                        n = f.result()
                        copied += n
                        report(n)
                inflight.add(pool.submit(copy_one, offset, length))
            for f in inflight:
                n = f.result()
                copied += n
                report(n)
        except BaseException:
            for f in inflight:
                f.cancel()
            raise
    return copied


def _plan(src: Backend, align: int, request_size: int) -> Iterator[tuple[int, int, bool]]:
    """``(offset, length, is_data)`` covering the image; data aligned to ``align``.

    A data extent is widened to whole ``align`` blocks (reading a little
    zero data around it), so the zero ranges between shrink accordingly.
    """
    size = src.size
    pos = 0  # everything before pos is planned
    for ext in src.extents():
        if ext.zero or ext.length == 0:
            continue
        start = max(pos, ext.start // align * align)
        end = min(size, -(-(ext.start + ext.length) // align) * align)
        if end <= start:
            continue
        if start > pos:
            yield pos, start - pos, False
        while start < end:
            n = min(request_size, end - start)
            yield start, n, True
            start += n
        pos = end
    if pos < size:
        yield pos, size - pos, False


def _is_zero(seg: memoryview, zeros: bytes) -> bool:
    """True if ``seg`` is all zeros; cheap for data (first/last byte test)."""
    if seg[0] or seg[-1]:
        return False
    # bytes == bytes is a memcmp; memoryview comparison is element-wise.
    return bytes(seg) == zeros[:len(seg)]
