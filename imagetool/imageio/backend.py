"""The Backend protocol over an imageio transfer URL (one connection each)."""

from __future__ import annotations

from typing import Iterator

from imagetool.iocore.backend import BackendBase, Extent, undo_on_error
from imagetool.imageio.client import ImageioClient


class HttpBackend(BackendBase):
    """Adapts an ``ImageioClient`` to ``imagetool.iocore.backend.Backend``.

    ``features``, ``max_readers`` and ``max_writers`` come from the server's
    OPTIONS so the copier can pick worker counts and whether to send zeros.
    Writes use ``flush=n``; call ``flush()`` once at the end.
    """

    def __init__(self, client: ImageioClient):
        """Takes ``client`` over: it is closed with this backend, or at once
        when the OPTIONS request fails (no backend to close it then)."""
        self.client = client
        with undo_on_error(client.close):
            opts = client.options()
        self.features = opts.features
        self.max_readers = opts.max_readers
        self.max_writers = opts.max_writers

    @property
    def size(self) -> int:
        return self.client.size()

    def extents(self, context: str = "zero") -> Iterator[Extent]:
        """The server's extents; one data extent when it cannot report them."""
        if "extents" in self.features:
            yield from self.client.extents(context)
        elif context == "zero":
            size = self.size
            if size:
                yield Extent(0, size)
        else:
            raise NotImplementedError(f"server cannot report {context} extents")

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; short only at the end of the image."""
        length = max(0, min(len(buf), self.size - offset))
        if length == 0:
            return 0
        return self.client.read_into(offset, memoryview(buf).cast("B")[:length])

    def write(self, offset: int, data: memoryview | bytes) -> None:
        self.client.write(offset, data, flush=False)

    def zero(self, offset: int, length: int) -> None:
        self.client.zero(offset, length, flush=False)

    def flush(self) -> None:
        self.client.flush()

    def clone(self) -> "HttpBackend":
        """Same URL, new connection: one per worker thread."""
        return HttpBackend(self.client.clone())

    def close(self) -> None:
        self.client.close()
