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

import threading
from dataclasses import dataclass
from typing import Any, Callable

from imagetool.backup import digests as dg
from imagetool.backup.repo import sha256_file
from imagetool.errors import ChecksumMismatch
from imagetool.formats import open_image
from imagetool.backends import Wrapper
from imagetool.formats.base import Extent
from imagetool.imageio.protocol import DEFAULT_BLOCK_SIZE
from imagetool.transfer.session import TransferSession
from imagetool.transfer.urls import write_file, write_session_file
from imagetool.transfer.verify import pick_algorithm, remote_checksum, verify_download


class _View(Wrapper):
    """A data-plane backend whose extents are a list given once.

    For a dirty context the data plane reports unchanged ranges as not
    dirty; they are given here as holes (nothing to copy), and dirty ranges
    keep their ``zero`` flag.
    """

    def __init__(self, backend: Any, extents: list[Extent]):
        super().__init__(backend)
        self._extents = extents

    def extents(self, context: str = "zero"):
        return iter(self._extents)

    def clone(self) -> "_View":
        return _View(self.inner.clone(), self._extents)


def write_layer(src: Any, out: str, *, dirty: bool, backing: str | None,
                write: Callable[[Any], Any] | None = None,
                workers: int = 4) -> tuple[Any, list[Extent]]:
    """Write a point's qcow2 file from a data-plane backend; (stats, extents).

    ``dirty``: only what the data plane reports dirty since the checkpoint
    (an incremental, over ``backing``); otherwise everything, holes kept.
    ``write(view)`` writes the file (a session's write, which keeps the
    transfer alive); by default :func:`write_file` does. This is the part
    of a backup that meets the data plane: the engine's, or an imageio
    daemon's over an NBD export with a dirty bitmap.
    """
    exts = list(src.extents("dirty" if dirty else "zero"))
    view = _View(src, exts)
    if write is None:
        stats = write_file(view, out, format="qcow2", workers=workers,
                           backing_file=backing,
                           backing_format="qcow2" if backing else None)
    else:
        stats = write(view)
    return stats, exts


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
    transfer_id = None
    if backup_id is not None:
        t = conn.transfers.add(disk_id=disk_id, direction="download", format="raw",
                               inactivity_timeout=inactivity_timeout, backup_id=backup_id)
        transfer_id = t.id
    session = TransferSession(conn, disk_id=disk_id, snapshot_id=snapshot_id,
                              direction="download", format="raw",
                              shallow=True if shallow else None,
                              inactivity_timeout=inactivity_timeout)
    session.reuse_transfer_id = transfer_id
    with session:
        src = session.open_backend()
        algorithm = algorithm or pick_algorithm(src)
        stats, exts = write_layer(
            src, out, dirty=dirty, backing=backing,
            write=lambda view: write_session_file(
                session, view, out, f"download of disk {disk_id}", format="qcow2",
                workers=workers, progress=progress, backing_file=backing))
        # The file is complete: its SHA-256 (the manifest's) is taken while
        # the block digests and the engine's checksum are, not after them.
        file_hash: dict = {}

        def hash_file() -> None:
            try:
                file_hash["value"] = sha256_file(out)
            except BaseException as e:  # reported below
                file_hash["error"] = e
        hasher = threading.Thread(target=hash_file, name="file-sha256", daemon=True)
        hasher.start()
        remote: dict = {}
        checker = None
        if not incremental and engine_checksum:
            def ask() -> None:
                try:
                    remote["value"] = remote_checksum(src, algorithm=algorithm,
                                                      block_size=block_size)[0]["checksum"]
                except BaseException as e:  # reported below
                    remote["error"] = e
            checker = threading.Thread(target=ask, name="engine-checksum", daemon=True)
            checker.start()
        elif incremental and shallow:
            # A snapshot layer: the engine hashes that layer alone (cheap), as
            # the file's own clusters do.
            verify_download(src, out, format="qcow2", shallow=True, what=out,
                            algorithm=algorithm, block_size=block_size)
        with open_image(out, "r", format="qcow2") as local:
            if incremental:
                changed = dg.blocks_touching(
                    [(e.start, e.length) for e in exts if not e.hole], block_size)
            else:
                changed = None
            fresh = dg.compute(local, changed, algorithm=algorithm, block_size=block_size,
                               workers=max(2, min(4, workers)))
            count = dg.block_count(local.size, block_size)
        hasher.join()
        if "error" in file_hash:
            raise file_hash["error"]
        all_digests = dg.merged(previous_digests, fresh, count)
        value = dg.combine(all_digests, algorithm)
        source = "chain"
        if checker is not None:
            checker.join()
            if "error" in remote:
                raise remote["error"]
            if remote["value"] != value:
                raise ChecksumMismatch(value, remote["value"], f"disk {disk_id}")
            source = "engine"
    return Fetched(bytes_copied=stats.bytes_copied, checksum=value, checksum_source=source,
                   digests=all_digests, algorithm=algorithm, sha256=file_hash["value"])
