"""Download one disk of a backup into a point's qcow2 file.

Full: the guest data into a standalone qcow2. Incremental: only what
changed into a qcow2 whose backing file is the previous point's file; the
ranges that changed to zeros become zero clusters so the older data stays
hidden, the rest is left unallocated and reads through the backing file.
"What changed" is the layer of a snapshot read shallow (snapshot method),
or the dirty extents of a VM backup (checkpoint method: the ovirt-imageio
docs' ``extents?context=dirty``). One copier does both (a source whose
extents say what to copy), as the ovirt-imageio client's incremental
download does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from imagetool.backup import digests as dg
from imagetool.backup.repo import sha256_file
from imagetool.errors import ChecksumMismatch
from imagetool.formats import open_image
from imagetool.threads import Background
from imagetool.imageio.protocol import DEFAULT_BLOCK_SIZE
from imagetool.transfer.disk import DiskOptions, receive
from imagetool.transfer.urls import new_file
from imagetool.transfer.verify import pick_algorithm, remote_checksum, verify_download


@dataclass
class Fetched:
    bytes_copied: int
    checksum: str
    checksum_source: str     # engine | chain
    digests: list[bytes]
    algorithm: str
    sha256: str | None = None    # of the written file's bytes


def fetch_disk(conn: Any, *, disk_id: str, out: str, backing: str | None = None,
               snapshot_id: str | None = None, shallow: bool = False,
               backup_id: str | None = None, dirty: bool = False,
               previous_digests: list[bytes] | None = None, workers: int = 4,
               inactivity_timeout: int = 60, engine_checksum: bool = True,
               progress: Callable[[int], None] | None = None,
               algorithm: str | None = None,
               block_size: int = DEFAULT_BLOCK_SIZE) -> Fetched:
    """Download one disk into ``out`` (a new qcow2); see the module docstring.

    ``backing``: the previous point's file (relative name) for an
    incremental. ``engine_checksum``: for a full copy, ask the engine for
    the guest-data checksum and compare it with the file's (reading the
    whole disk on the engine side; an incremental's checksum is computed
    from the previous point's block digests and the blocks that changed).
    """
    incremental = backing is not None
    if incremental and previous_digests is None:
        raise ValueError("an incremental needs the previous point's digests")

    def check(src: Any) -> Fetched:
        algo = algorithm or pick_algorithm(src)
        # The file is complete: its SHA-256 (the manifest's) is taken while
        # the block digests and the engine's checksum are, not after them.
        file_hash = Background(lambda: sha256_file(out), name="file-sha256")
        remote = None
        if not incremental and engine_checksum:
            remote = Background(lambda: remote_checksum(
                src, algorithm=algo, block_size=block_size)[0]["checksum"],
                name="engine-checksum")
        elif incremental and shallow:
            # A snapshot layer: the engine hashes that layer alone (cheap), as
            # the file's own clusters do.
            verify_download(src, out, format="qcow2", shallow=True, what=out,
                            algorithm=algo, block_size=block_size)
        with open_image(out, "r", format="qcow2") as local:
            if incremental:
                exts = src.extents("dirty" if dirty else "zero")
                changed = dg.blocks_touching(
                    [(e.start, e.length) for e in exts if not e.hole], block_size)
            else:
                changed = None
            fresh = dg.compute(local, changed, algorithm=algo, block_size=block_size,
                               workers=max(2, min(4, workers)))
            count = dg.block_count(local.size, block_size)
        sha256 = file_hash.result()
        all_digests = dg.merged(previous_digests, fresh, count)
        value = dg.combine(all_digests, algo)
        source = "chain"
        if remote is not None:
            if remote.result() != value:
                raise ChecksumMismatch(value, remote.result(), f"disk {disk_id}")
            source = "engine"
        return Fetched(bytes_copied=0, checksum=value, checksum_source=source,
                       digests=all_digests, algorithm=algo, sha256=sha256)

    got = receive(conn, disk_id, new_file(out, "qcow2", backing), DiskOptions(
        snapshot_id=snapshot_id, shallow=shallow, backup_id=backup_id, dirty=dirty,
        workers=workers, inactivity_timeout=inactivity_timeout, flush=False,
        over_backing=incremental, verify=False), progress=progress, after=check)
    got.after.bytes_copied = got.stats.bytes_copied
    return got.after
