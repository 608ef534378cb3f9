"""End-to-end verification of transfers: the server's block checksum vs ours.

After an upload (before finalize, while the ticket lives) the server's
checksum of the ticket (``GET /images/<t>/checksum``) is compared with the
local block checksum of the source; after a download, the written file's
checksum is compared with the server's. A server without the ``checksum``
feature has its data read back over the data plane and hashed here (zero
extents it reports are not read).

What is compared:

- guest-data (``raw`` format) transfers: the source's guest data (raw or
  qcow2, through ``open_image``) against the ticket, which is the disk's
  guest data. Equal checksums prove equal guest bytes.
- volume-bytes (``cow`` format) uploads of a qcow2 file: the ticket is the
  volume as a file, which may be longer than the uploaded file (a block
  volume is an LV sized to ``initial_size``, whose tail we never wrote and
  which need not hold zeros). First the file's bytes, padded with zeros to
  the volume's size, are compared with the server's checksum (true when the
  tail reads as zeros: file storage, fresh volumes); when they differ, the
  volume's first ``len(file)`` bytes are read back and hashed, which is
  exact whatever the tail holds. Only a difference in the file's own bytes
  is a mismatch.

Algorithm: the block checksum works with any hash both sides offer. Where
the server offers it, verification uses whichever of sha256 and blake2b
(imageio's default) hashes faster on this machine
(:mod:`imagetool.transfer.hashspeed`).
The algorithm used is in the result; ``checksum --disk`` keeps blake2b.

Checksum ahead: before an upload's copy, a server listing the
``checksum-ahead`` extension (imagetool's own data plane; never an imageio
daemon) is told the algorithm and block size verification will use, so it
hashes blocks as they are flushed and the final checksum request reads
back only what is left (:func:`announce_upload_checksum`).

A mismatch raises :class:`~imagetool.errors.ChecksumMismatch` with both
values; the workflows raise it inside their transfer session, so an upload
is cancelled (no disk kept as if good) and a download's temporary file is
removed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from imagetool.iocore.backends import Cancellable, PerThread, Window
from imagetool.checksum import DEFAULT_ALGORITHM, DEFAULT_BLOCK_SIZE, checksum
from imagetool.errors import ChecksumMismatch, ImagetoolError
from imagetool.formats import open_image
from imagetool.iocore.backend import Backend
from imagetool.formats.raw import RawBackend
from imagetool.imageio.backend import HttpBackend
from imagetool.imageio.client import ImageioClient
from imagetool.imageio.protocol import CHECKSUM_AHEAD
from imagetool.transfer.hashspeed import fastest_algorithm

log = logging.getLogger(__name__)

# The server hashes the whole image in one request: allow it time for that
# (at least this rate) on top of the usual read timeout.
_MIN_SERVER_RATE = 20 * 1024 * 1024


@dataclass
class Verification:
    """The outcome of one verification (the ``--json`` keys it adds)."""

    verified: bool
    algorithm: str = DEFAULT_ALGORITHM
    block_size: int = DEFAULT_BLOCK_SIZE
    value: str | None = None
    method: str | None = None       # server-checksum | read-back
    scope: str = "guest-data"       # guest-data | volume-bytes
    skipped: str | None = None      # why nothing was compared
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """``{"checksum": {...} | None, "verified": bool, ...}`` for ``--json``."""
        out: dict[str, Any] = {
            "checksum": None if self.value is None else {
                "algorithm": self.algorithm, "block_size": self.block_size,
                "value": self.value, "scope": self.scope},
            "verified": self.verified,
        }
        if self.method:
            out["verify_method"] = self.method
            out["verify_seconds"] = round(self.seconds, 3)
        if self.skipped:
            out["verify_skipped"] = self.skipped
        return out


def skipped(reason: str) -> Verification:
    """A Verification that compared nothing, saying why."""
    return Verification(verified=False, skipped=reason)


# --- the two sides ---------------------------------------------------------

def _fresh_client(backend: HttpBackend, read_timeout: float) -> Any:
    """A new client of ``backend``'s URL: own connection, nothing cached."""
    c = backend.client
    return ImageioClient(c.url, cafile=c.cafile, insecure=c.insecure,
                         proxy_url=c.proxy_url, signed_ticket=c.signed_ticket,
                         connect_timeout=c.connect_timeout, read_timeout=read_timeout)


def remote_checksum(backend: HttpBackend, *, algorithm: str = DEFAULT_ALGORITHM,
                    block_size: int = DEFAULT_BLOCK_SIZE, size: int | None = None,
                    workers: int | None = None) -> tuple[dict, str]:
    """The block checksum of an imageio ticket: ``(result, method)``.

    ``backend`` is an HttpBackend. With the server's ``checksum`` feature
    (and no ``size``) one ``GET .../checksum``; otherwise, or when ``size``
    asks for a prefix of the image, its data is read back and hashed here.
    ``method`` is ``server-checksum`` or ``read-back``.
    """
    if size is None and "checksum" in backend.features:
        timeout = backend.client.read_timeout + backend.size / _MIN_SERVER_RATE
        with _fresh_client(backend, timeout) as client:
            return client.checksum(algorithm=algorithm, block_size=block_size), \
                "server-checksum"
    with HttpBackend(_fresh_client(backend, backend.client.read_timeout)) as fresh, \
            PerThread(fresh) as reader:
        view: Any = reader if size is None else Window(reader, size)
        return checksum(view, algorithm=algorithm, block_size=block_size,
                        workers=workers), "read-back"


# Hash an upload's source while the copy runs (True) or after it, while the
# server hashes (False). The copy mostly waits on sockets and storage, so
# hashing beside it is nearly free; after it, our hashing competes with the
# server's for the CPUs (benchmarks/README.md, "Cost of end-to-end
# verification").
PARALLEL_UPLOAD_HASH = True

def pick_algorithm(backend: HttpBackend) -> str:
    """The algorithm to verify ``backend``'s ticket with (see module docstring)."""
    want = fastest_algorithm()
    if want == DEFAULT_ALGORITHM or "checksum" not in backend.features:
        return want     # read back: both sides are hashed here
    with _fresh_client(backend, backend.client.read_timeout) as client:
        try:
            offered = client.checksum_algorithms()
        except (ImagetoolError, KeyError, TypeError, ValueError):
            return DEFAULT_ALGORITHM    # no usable list: imageio's default is offered
    return want if want in offered else DEFAULT_ALGORITHM


class LocalHash:
    """Hash a local image in a background thread (overlapping a copy).

    ``opener`` returns a fresh Backend (closed here when done). ``result()``
    waits and returns the checksum dict, or raises what hashing raised;
    ``cancel()`` stops it early (the copy failed).
    """

    def __init__(self, opener: Callable[[], Backend], *,
                 algorithm: str = DEFAULT_ALGORITHM,
                 block_size: int = DEFAULT_BLOCK_SIZE, workers: int | None = None,
                 start: bool = True):
        self._opener = opener
        self.algorithm = algorithm
        self._kw = dict(algorithm=algorithm, block_size=block_size, workers=workers)
        self._result: dict | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        if start:
            self.start()

    def start(self) -> None:
        """Start hashing (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="verify-hash",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            with self._opener() as backend:
                self._result = checksum(Cancellable(backend, self._cancel), **self._kw)
        except BaseException as e:  # handed to the caller of result()
            self._error = e

    def cancel(self) -> None:
        """Stop hashing soon; ``result()`` then raises."""
        self._cancel.set()

    def result(self) -> dict:
        """The checksum dict; raises the hashing error, if any."""
        self.start()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def _check_equal(mine: dict, remote: dict, what: str, algorithm: str,
                 block_size: int) -> None:
    """Raise ChecksumMismatch with both values unless the checksums are equal."""
    if mine["checksum"] != remote["checksum"]:
        # Name the algorithm: the values are only comparable with the same one.
        how = f"{algorithm}, block size {block_size}"
        raise ChecksumMismatch(mine["checksum"], remote["checksum"],
                               f"{what} ({how})" if what else how)


# --- workflows -------------------------------------------------------------

def open_source(path: str, volume_bytes: bool) -> Callable[[], Backend]:
    """An opener of what an upload sends: guest data, or the file's own bytes."""
    def opener() -> Backend:
        if volume_bytes:
            return RawBackend(path, "r")
        return open_image(path, "r")
    return opener


def announce_upload_checksum(dst: Any, algorithm: str,
                             block_size: int = DEFAULT_BLOCK_SIZE) -> bool:
    """Tell the server which checksum :func:`verify_upload` will ask for.

    Call before the copy, with nothing else running on the ticket. Only a
    server listing the ``checksum-ahead`` extension is asked (others see
    nothing); a refusal is not an error (the final checksum then reads
    everything back). True when the server accepted.
    """
    client = getattr(dst, "client", None)
    if client is None or "checksum" not in dst.features:
        return False
    try:
        if CHECKSUM_AHEAD not in getattr(client.options(), "extensions", ()):
            return False
        client.checksum_ahead(algorithm, block_size)
    except ImagetoolError as e:
        log.debug("checksum ahead not used: %s", e)
        return False
    return True


def verify_upload(dst: Any, source_path: str | None = None, *, volume_bytes: bool = False,
                  local: LocalHash | None = None, what: str = "",
                  algorithm: str | None = None,
                  block_size: int = DEFAULT_BLOCK_SIZE,
                  opener: Callable[[], Backend] | None = None) -> Verification:
    """Compare an upload's ticket with its source; raise ChecksumMismatch if they differ.

    Call after the copy (flushed) and before finalize. ``dst`` is the
    session's HttpBackend; ``local`` a LocalHash started on the same source
    (one is run here when None); ``volume_bytes`` for cow transfers of a
    qcow2 file (see the module docstring). ``algorithm`` None: picked.
    ``opener`` returns a fresh backend on what the upload sent (without
    it, ``source_path`` is opened).
    """
    start = time.monotonic()
    algorithm = algorithm or pick_algorithm(dst)
    opener = opener or open_source(source_path, volume_bytes)
    if local is not None and local.algorithm != algorithm:
        local.cancel()
        local = None
    if local is None:
        local = LocalHash(opener, algorithm=algorithm, block_size=block_size)
    kw = dict(algorithm=algorithm, block_size=block_size)
    if not volume_bytes:
        remote, method = remote_checksum(dst, **kw)
        mine = local.result()
        _check_equal(mine, remote, what, algorithm, block_size)
        return Verification(True, algorithm, block_size, mine["checksum"], method,
                            seconds=time.monotonic() - start)

    mine = local.result()       # the file's bytes
    with opener() as source:
        file_size = source.size
    # The ticket's current size: a cow volume grows as its bytes arrive.
    with _fresh_client(dst, dst.client.read_timeout) as client:
        volume_size = client.size()
    if volume_size >= file_size:
        remote, method = remote_checksum(dst, **kw)
        with opener() as b:
            padded = checksum(Window(b, volume_size), **kw)["checksum"]
        if padded == remote["checksum"]:
            return Verification(True, algorithm, block_size, padded, method,
                                scope="volume-bytes", seconds=time.monotonic() - start)
    # The volume's tail may hold old bytes: compare the file's extent only.
    remote, _ = remote_checksum(dst, size=file_size, **kw)
    _check_equal(mine, remote, what, algorithm, block_size)
    return Verification(True, algorithm, block_size, mine["checksum"], "read-back",
                        scope="volume-bytes", seconds=time.monotonic() - start)


def verify_download(src: Any, local_path: str | Callable[[], Backend], *,
                    format: str = "raw",
                    shallow: bool = False, what: str = "",
                    algorithm: str | None = None,
                    block_size: int = DEFAULT_BLOCK_SIZE) -> Verification:
    """Compare a downloaded file with the ticket it came from.

    Call after the file is written and closed, before finalize. ``format``
    is the file's (raw, or qcow2 read as guest data; ``shallow`` reads only
    that layer, for files given a backing file). The server hashes while we
    hash the file. ``algorithm`` None: picked (module docstring). Raises ChecksumMismatch when they differ.
    ``local_path`` may instead be an opener of what was written.
    """
    start = time.monotonic()
    algorithm = algorithm or pick_algorithm(src)
    opener = local_path if callable(local_path) else (
        lambda: open_image(local_path, "r", format=format, shallow=shallow))
    local = LocalHash(opener, algorithm=algorithm, block_size=block_size)
    remote, method = remote_checksum(src, algorithm=algorithm, block_size=block_size)
    mine = local.result()
    _check_equal(mine, remote, what, algorithm, block_size)
    return Verification(True, algorithm, block_size, mine["checksum"], method,
                        seconds=time.monotonic() - start)
