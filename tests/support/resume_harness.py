"""Run the imagetool CLI with a slowed, counting data-plane client (for resume tests).

``python tests/support/resume_harness.py ARGS...`` behaves like ``python -m imagetool
ARGS...`` except that every PUT/GET of a transfer first sleeps
``RESUME_TEST_DELAY`` seconds (so a test can kill the process mid-way) and
the bytes sent (PUT bodies) and received (GET ranges) are written to the
JSON file ``RESUME_TEST_STATS`` after each request (a kill -9 leaves the
last count there). Counts are taken when a request starts.
"""

from __future__ import annotations

import sys

try:
    import json
    import os
    import threading
    import time

    from imagetool.cli.main import entry
    from imagetool.imageio import client as _client
except KeyboardInterrupt:       # Ctrl-C while loading, as python -m imagetool
    sys.stderr.write("imagetool: interrupted\n")
    sys.exit(130)

_DELAY = float(os.environ.get("RESUME_TEST_DELAY", "0") or 0)
_STATS = os.environ.get("RESUME_TEST_STATS")
_lock = threading.Lock()
_counts = {"put": 0, "get": 0}


def _count(key: str, n: int) -> None:
    if _DELAY:
        time.sleep(_DELAY)
    with _lock:
        _counts[key] += n
        if _STATS:
            tmp = _STATS + ".tmp"
            with open(tmp, "w") as f:
                json.dump(_counts, f)
            os.replace(tmp, _STATS)


_write = _client.ImageioClient.write
_read_into = _client.ImageioClient.read_into


def write(self, offset, data, flush=False):
    _count("put", len(memoryview(data).cast("B")))
    return _write(self, offset, data, flush)


def read_into(self, offset, buf):
    _count("get", len(buf))
    return _read_into(self, offset, buf)


_client.ImageioClient.write = write
_client.ImageioClient.read_into = read_into

if __name__ == "__main__":
    try:
        entry(sys.argv[1:])
    except KeyboardInterrupt:   # at entry's first instruction, as python -m imagetool
        sys.stderr.write("imagetool: interrupted\n")
        sys.exit(130)
