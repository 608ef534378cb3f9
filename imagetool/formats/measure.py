"""How many bytes an image needs once converted (``qemu-img measure``).

Returns the same two numbers as ``qemu-img measure --output json``:
``required`` (the file size a sparse conversion needs: the initial size an
engine wants for a sparse cow disk) and ``fully-allocated`` (every cluster
written).

qcow2 output: the metadata of a fully allocated image (header cluster,
L2 tables, L1 table, refcount table and blocks, reckoned the way qemu does)
plus the data clusters: every cluster holding at least one byte that is not
in a zero extent counts whole. Like qemu, ``required`` keeps the metadata of
the fully allocated image, so it is a safe upper bound rather than the exact
size a converter produces.

raw output: the virtual size rounded up to 512 bytes, for both numbers
(qemu counts holes of a raw image as needed space, and it sees whole
sectors only).
"""

from __future__ import annotations

import os

from imagetool.formats import WRITABLE, open_image
from imagetool.formats.qcow2 import refcount_clusters
from imagetool.iocore.backend import Backend

_L2E = 8          # bytes per L2 entry (no extended L2)
_L1E = 8


def measure(source: Backend | str | os.PathLike, out_format: str = "qcow2",
            cluster_size: int = 65536) -> dict:
    """Bytes needed to convert ``source`` to ``out_format`` ("qcow2" or "raw").

    ``source`` is a Backend (its guest data is measured) or a path, opened
    with ``open_image`` (the whole backing chain counts). Returns
    ``{"required": int, "fully-allocated": int}``.
    """
    if out_format not in WRITABLE:
        raise ValueError(f"unsupported output format {out_format!r} (use raw or qcow2)")
    if cluster_size < 512 or cluster_size > 2 * 1024 * 1024 or cluster_size & (cluster_size - 1):
        raise ValueError(f"invalid cluster size {cluster_size}")
    if isinstance(source, (str, os.PathLike)):
        with open_image(source, "r") as backend:
            return measure(backend, out_format, cluster_size)
    size = source.size
    if out_format == "raw":
        n = _round_up(size, 512)
        return {"required": n, "fully-allocated": n}
    virtual = _round_up(size, cluster_size)
    data = _data_clusters(source, cluster_size) * cluster_size
    full = qcow2_fully_allocated_size(virtual, cluster_size)
    return {"required": full - virtual + data, "fully-allocated": full}


def qcow2_fully_allocated_size(virtual_size: int, cluster_size: int) -> int:
    """Size of a qcow2 image (v3, 16-bit refcounts) with every cluster allocated."""
    virtual = _round_up(virtual_size, cluster_size)
    meta = cluster_size  # header cluster
    entries_per_table = cluster_size // _L2E
    l2_entries = _round_up(virtual // cluster_size, entries_per_table)
    meta += l2_entries * _L2E
    l1_entries = _round_up(l2_entries * _L2E // cluster_size, cluster_size // _L1E)
    meta += l1_entries * _L1E
    refcount = refcount_clusters((meta + virtual) // cluster_size, cluster_size)
    meta += sum(refcount) * cluster_size
    return meta + virtual


def _data_clusters(backend: Backend, cluster_size: int) -> int:
    """Clusters that hold any byte of a non-zero extent."""
    count = 0
    last = -1  # last cluster counted
    for ext in backend.extents():
        if ext.zero or ext.length == 0:
            continue
        first = ext.start // cluster_size
        end = (ext.start + ext.length - 1) // cluster_size
        if first <= last:
            first = last + 1
        if end >= first:
            count += end - first + 1
            last = end
    return count


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m
