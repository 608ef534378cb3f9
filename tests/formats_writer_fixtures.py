"""Helpers for the writer, measure, convert, checksum and format CLI tests."""

from __future__ import annotations

import json
import random
import subprocess
import threading

from imagetool.formats.base import Extent, merge_extents

KiB = 1 << 10
MiB = 1 << 20


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output when ``check`` and it fails."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))}: rc={p.returncode} "
                             f"{p.stderr or p.stdout}")
    return p


def qemu_img_json(*args) -> dict:
    return json.loads(run("qemu-img", *args, "--output", "json").stdout)


def qemu_check(path) -> dict:
    """``qemu-img check --output json``; asserts there are no errors at all."""
    p = run("qemu-img", "check", "--output", "json", path, check=False)
    result = json.loads(p.stdout) if p.stdout.strip() else {}
    assert p.returncode == 0, f"qemu-img check {path}: rc={p.returncode} {p.stdout}{p.stderr}"
    assert result.get("check-errors", 0) == 0, result
    assert result.get("corruptions", 0) == 0, result
    return result


def qemu_compare(a, b, fmt_a: str | None = None, fmt_b: str | None = None) -> None:
    """Assert qemu-img compare finds the two images' guest data identical."""
    args = ["qemu-img", "compare"]
    if fmt_a:
        args += ["-f", fmt_a]
    if fmt_b:
        args += ["-F", fmt_b]
    p = run(*args, a, b, check=False)
    assert p.returncode == 0, f"qemu-img compare {a} {b}: {p.stdout}{p.stderr}"


def qemu_io(path, *commands: str, fmt: str = "qcow2") -> None:
    args = ["qemu-io", "-f", fmt]
    for c in commands:
        args += ["-c", c]
    out = run(*args, path).stdout
    assert "error" not in out.lower() and "failed" not in out.lower(), out


def write_raw(path, data: bytes | bytearray, holes: bool = True) -> None:
    """Write ``data`` as a raw file, leaving 64 KiB runs of zeros as holes."""
    with open(path, "wb") as f:
        f.truncate(len(data))
        step = 64 * KiB
        zero = bytes(step)
        for off in range(0, len(data), step):
            chunk = data[off:off + step]
            if holes and chunk == zero[:len(chunk)]:
                continue
            f.seek(off)
            f.write(chunk)


def random_image(size: int, seed: int, fill: float = 0.5,
                 max_run: int = 300 * KiB) -> bytearray:
    """Guest data: random runs (random bytes or a repeated byte) and zeros."""
    rnd = random.Random(seed)
    data = bytearray(size)
    pos = 0
    while pos < size:
        n = min(rnd.randrange(1, max_run), size - pos)
        if rnd.random() < fill:
            data[pos:pos + n] = (rnd.randbytes(n) if rnd.random() < 0.6
                                 else bytes([rnd.randrange(1, 256)]) * n)
        pos += n
    return data


class MemBackend:
    """A Backend over bytes with explicit extents, recording every read.

    Has no ``clone``: the checksum must work on a shared backend.
    """

    def __init__(self, data: bytes | bytearray, extents: list[Extent] | None = None):
        self._data = bytes(data)
        self._extents = extents if extents is not None else [Extent(0, len(data))]
        self.reads: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self._data)

    def extents(self, context: str = "zero"):
        return iter(self._extents)

    def read_into(self, offset: int, buf) -> int:
        n = max(0, min(len(buf), len(self._data) - offset))
        buf[:n] = self._data[offset:offset + n]
        with self._lock:
            self.reads.append((offset, n))
        return n

    def close(self) -> None:
        pass


def extents_of(data: bytes | bytearray, granularity: int = 4 * KiB) -> list[Extent]:
    """Zero extents for all-zero ``granularity`` runs, data elsewhere."""
    exts = []
    zero = bytes(granularity)
    for off in range(0, len(data), granularity):
        chunk = data[off:off + granularity]
        is_zero = chunk == zero[:len(chunk)]
        exts.append(Extent(off, len(chunk), zero=is_zero, hole=is_zero))
    return list(merge_extents(exts))
