"""A disk's block checksum from the engine's data plane (``checksum --disk``)."""

from __future__ import annotations

from typing import Any

from imagetool.checksum import (DEFAULT_ALGORITHM, DEFAULT_BLOCK_SIZE, hash_factory,
                                validate_block_size)
from imagetool.errors import ImagetoolError
from imagetool.transfer.disk import DiskOptions, open_session
from imagetool.transfer.verify import remote_checksum


def disk_checksum(conn: Any, disk_id: str, *, algorithm: str = DEFAULT_ALGORITHM,
                  block_size: int = DEFAULT_BLOCK_SIZE, use_proxy: bool = False,
                  inactivity_timeout: int = 60) -> dict:
    """A disk's server-side block checksum through a short download transfer.

    Creates a download transfer (format raw: guest data), asks the data plane
    for the checksum (or reads the data back when the server cannot hash),
    then finalizes. Returns ``{"algorithm", "block_size", "checksum",
    "disk_id", "method"}``.
    """
    hash_factory(algorithm)          # ValueError before the engine locks anything
    validate_block_size(block_size)
    if getattr(conn, "legacy", False):
        raise ImagetoolError("this engine (4.1) only moves volume bytes: "
                             "it cannot give a disk's guest-data checksum")
    with open_session(conn, disk_id, "download", DiskOptions(
            inactivity_timeout=inactivity_timeout, use_proxy=use_proxy)) as session:
        backend = session.open_backend()
        result, method = remote_checksum(backend, algorithm=algorithm,
                                         block_size=block_size)
    out = dict(result)
    out["disk_id"] = disk_id
    out["method"] = method
    return out
