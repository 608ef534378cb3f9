"""What the local engine does to the bytes of volume layers: sparsify one,
merge one into the layer above (or commit the layer above into it), copy
a chain's guest data into a new volume. Every layer is read through the
chain the inventory records (a reader the caller opened), never through
the backing file named in a header.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from imagetool.iocore.copier import CopyOptions, copy_local
from imagetool.errors import FormatError, UnsupportedFeature
from imagetool.formats import allocated_ranges
from imagetool.iocore.backend import Extent, union_ranges
from imagetool.formats.convert import convert_backend
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.formats.raw import PUNCH_HOLE, RawBackend, fallocate
from imagetool.fsutil import opened
from imagetool.server.files import create_private, naming


def sparsify_layer(path: str, fmt: str, size: int, reader: Any,
                   parent_id: str | None = None, parent_fmt: str | None = None,
                   parent: Any = None) -> int:
    """Free the blocks of one volume whose guest data is all zeros; bytes freed.

    ``reader``: this layer alone (``Storage.open_volume(vol, shallow=True)``),
    owned and closed here. A raw volume gets holes punched in place (a hole
    reads as zeros). A qcow2 layer is rewritten through a temporary file:
    its zero clusters become unallocated when it has no parent, or carry the
    qcow2 zero flag over one (``parent``: the parent chain's reader, owned),
    so what the guest reads never changes. The oVirt REST API guide's
    ``sparsify`` action frees the unused space of a disk this way.
    """
    before = os.stat(path).st_blocks * 512
    if fmt == "raw":
        zero = bytes(4 << 20)
        with reader, opened(path, os.O_RDWR) as fd:
            for ext in reader.extents():
                if not ext.hole:
                    _punch_zeros(fd, ext.start, ext.end, zero)
        return max(0, before - os.stat(path).st_blocks * 512)
    tmp = path + ".sparsifying"
    create_private(tmp)
    try:
        with _layer_writer(tmp, size, parent_id, parent_fmt, parent) as writer:
            parent = None   # the writer owns it now
            # The layer's own extents only (holes stay unallocated); zero
            # extents and zero runs of a cluster inside data become zero
            # clusters over a parent, nothing without one.
            step = writer.cluster_size
            options = CopyOptions(request_size=max(step, 4 << 20) // step * step,
                                  dst_is_zero=True, detect_zeroes=True,
                                  zero_granularity=step, over_backing=parent_id is not None)
            copy_local(reader, writer, options, extents=[e for e in reader.extents() if not e.hole])
            writer.flush()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _close_layers(reader, parent)
    os.replace(tmp, path)
    return max(0, before - os.stat(path).st_blocks * 512)


def _punch_zeros(fd: int, start: int, end: int, zero: bytes) -> None:
    """Punch a hole over every 4 KiB block of ``[start, end)`` that reads as zeros."""
    block = 4096
    pos = start
    while pos < end:
        n = min(len(zero), end - pos)
        data = os.pread(fd, n, pos)
        if not data:
            break
        run = None
        for i in range(0, len(data), block):
            if data[i:i + block] == zero[:len(data[i:i + block])]:
                run = i if run is None else run
            elif run is not None:
                _punch(fd, pos + run, i - run)
                run = None
        if run is not None:
            _punch(fd, pos + run, len(data) - run)
        pos += len(data)


def _punch(fd: int, offset: int, length: int) -> None:
    if not fallocate(fd, PUNCH_HOLE, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


def merge_layer(lower: str, upper: str, parent_id: str | None, parent_fmt: str | None,
                size: int, reader: Any, parent: Any = None) -> None:
    """Merge qcow2 layer ``lower`` into the layer above it (``upper``), in place.

    The result replaces ``upper``: a qcow2 backed by ``parent_id`` (the layer
    below ``lower``) holding every cluster allocated in either layer, the
    upper one winning; with no parent it is a standalone qcow2 of the whole
    chain's guest data. Written to a temporary file first, so a crash leaves
    the chain as it was.

    ``reader``: ``upper``'s guest data through the recorded chain and
    ``parent``: the parent's (``Storage.open_volume``), never the headers'
    backing file names; both are owned and closed here.
    """
    tmp = upper + ".merging"
    create_private(tmp)
    try:
        try:
            if parent_id is None:
                ranges = [(e.start, e.end) for e in reader.extents() if not e.zero]
            else:
                ranges = allocated_ranges(lower) + allocated_ranges(upper)
            with _layer_writer(tmp, size, parent_id, parent_fmt, parent) as writer:
                parent = None   # the writer owns it now
                # Only those ranges: the rest stays unallocated (the parent's).
                _copy_ranges(reader, writer, ranges, dst_is_zero=True)
        finally:
            _close_layers(reader, parent)
        os.replace(tmp, upper)
    except BaseException:
        # A failed merge leaves the chain as it was, and no half file.
        Path(tmp).unlink(missing_ok=True)
        raise


def _copy_ranges(reader: Any, writer: Any, ranges: list[tuple[int, int]],
                 dst_is_zero: bool = False) -> None:
    """Copy only the guest data of ``ranges`` (``(start, end)`` pairs that may
    overlap) from a layer's reader into the layer being written."""
    copy_local(reader, writer, CopyOptions(dst_is_zero=dst_is_zero, check_size=False),
               extents=[Extent(a, b - a) for a, b in union_ranges(ranges)])


def _close_layers(reader: Any, parent: Any) -> None:
    """Close a merge's reader and, unless a writer took it over, its parent."""
    reader.close()
    if parent is not None:
        parent.close()


def _layer_writer(path: str, size: int, parent_id: str | None, parent_fmt: str | None,
                  parent: Any) -> Qcow2Writer:
    """A new qcow2 layer backed by ``parent_id``, reading unallocated clusters
    through ``parent`` (the parent chain's reader, owned by the writer from
    then on) when given."""
    writer = Qcow2Writer.create(path, size, backing_file=parent_id,
                                backing_format=parent_fmt if parent_id else None)
    if parent is not None:
        writer.use_backing(parent)
    return writer


def commit_layer(lower: str, upper: str, reader: Any, parent: Any = None) -> bool:
    """Merge qcow2 layer ``upper`` down into ``lower``; the result replaces ``upper``.

    The same result as ``merge_layer`` (``upper``'s path then holds every
    cluster of both layers, the upper one winning, backed by ``lower``'s
    parent), but only the clusters allocated in ``upper`` are copied: what
    was written since ``lower`` was frozen, not the whole disk, as the
    engine's live merge (block commit) of oVirt does. ``lower`` is changed
    copy on write (``Qcow2Writer.open_existing``): until its header is
    rewritten it still reads as before, and a failure before that leaves
    both files as they were. Then ``lower``'s file is renamed over
    ``upper``'s.

    ``reader``: ``upper``'s guest data through the recorded chain, and
    ``parent``: the parent's (for partial clusters); both owned and closed
    here. Returns False, doing nothing (but closing them), when ``lower`` is
    not a qcow2 image this writer can change in place: then ``merge_layer``
    is the way.
    """
    try:
        try:
            writer = Qcow2Writer.open_existing(lower)
        except (UnsupportedFeature, FormatError):
            return False
        try:
            if parent is not None:
                writer.use_backing(parent)
                parent = None
            _copy_ranges(reader, writer, allocated_ranges(upper))
        except BaseException:
            writer.abort()
            raise
        writer.close()
    finally:
        _close_layers(reader, parent)
    os.replace(lower, upper)
    return True


def copy_guest_data(reader: Any, dst: str, fmt: str, size: int) -> None:
    """Copy the guest data ``reader`` gives (a chain opened through the
    recorded parents; owned, closed here) into a new raw or qcow2 ``dst``."""
    with reader, naming(dst):
        convert_backend(reader, dst, "qcow2" if fmt != "raw" else "raw", size=size)


def allocate(path: str, offset: int, length: int) -> None:
    """Allocate a range of a file without changing its data."""
    with open(path, "r+b") as f:
        os.posix_fallocate(f.fileno(), offset, length)


def sparse_copy(src: str, dst: str) -> None:
    """Copy a file as it is allocated: holes stay holes, zero blocks are skipped.

    The file's bytes as a raw image through the one conversion: only its
    data regions (``SEEK_DATA``/``SEEK_HOLE``) are read, and 64 KiB blocks
    of zeros inside them are left unwritten, so the copy never takes more
    space than the original.
    """
    with naming(dst):
        create_private(dst)
        with RawBackend(src, "r") as reader:
            convert_backend(reader, dst, "raw")
