"""Helpers for the formats tests: build images with qemu and ask qemu about them."""

from __future__ import annotations

import json
import os
import random
import subprocess

from imagetool.formats.base import Extent

KiB = 1 << 10
MiB = 1 << 20


def run(*cmd: str) -> str:
    """Run a command; return stdout; fail the test with stderr on error."""
    p = subprocess.run(list(cmd), capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {p.stderr or p.stdout}")
    return p.stdout


def qemu_img(*args: str) -> str:
    return run("qemu-img", *args)


def qemu_img_create_encrypted(*args: str) -> str:
    """qemu-img create for LUKS key material, retried: its PBKDF timing probe
    can fail with "Unable to get accurate CPU usage" on a loaded machine."""
    for attempt in range(5):
        try:
            return run("qemu-img", "create", *args)
        except AssertionError as e:
            if "accurate CPU usage" not in str(e) or attempt == 4:
                raise
    raise AssertionError("unreachable")


def qemu_io(path, *commands: str, fmt: str = "qcow2") -> None:
    """Run qemu-io commands (e.g. "write -P 0xaa 0 64k") on an image."""
    args = ["qemu-io", "-f", fmt]
    for c in commands:
        args += ["-c", c]
    out = run(*args, str(path))
    if "error" in out.lower() or "failed" in out.lower():
        raise AssertionError(f"qemu-io: {out}")


def make_raw(path, size: int, data_ranges, seed: int = 0) -> bytes:
    """A sparse raw file with random bytes in ``data_ranges``; return its bytes."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for start, length in data_ranges:
            f.seek(start)
            f.write(rnd.randbytes(length))
    with open(path, "rb") as f:
        return f.read()


def qemu_info(path) -> dict:
    return json.loads(qemu_img("info", "--output", "json", str(path)))


def qemu_raw_bytes(path, tmp_path, opts: str | None = None) -> bytes:
    """Guest bytes as ``qemu-img convert -O raw`` sees them.

    ``opts``: a json: filename (e.g. to drop the backing file) instead of path.
    """
    out = tmp_path / f"qemu-{os.path.basename(str(path))}.raw"
    src = opts or str(path)
    qemu_img("convert", "-O", "raw", src, str(out))
    with open(out, "rb") as f:
        data = f.read()
    out.unlink()
    return data


def shallow_json(path) -> str:
    """A qemu json: filename opening a qcow2 layer without its backing file."""
    return "json:" + json.dumps({
        "driver": "qcow2", "backing": None,
        "file": {"driver": "file", "filename": str(path)}})


def qemu_map(path_or_json: str) -> list[dict]:
    return json.loads(qemu_img("map", "--output", "json", str(path_or_json)))


def boundaries(*lists) -> list[int]:
    pts: set[int] = set()
    for lst in lists:
        for e in lst:
            pts.add(e[0])
            pts.add(e[0] + e[1])
    return sorted(pts)


def assert_extents_match_qemu(ours: list[Extent], qmap: list[dict],
                              size: int, check_hole: bool = True) -> None:
    """Our zero flag must equal qemu's "not data" everywhere; hole = not present."""
    assert ours, "no extents"
    assert ours[0].start == 0 and ours[-1].end == size
    for a, b in zip(ours, ours[1:]):
        assert a.end == b.start, (a, b)
        assert (a.zero, a.hole) != (b.zero, b.hole), f"not merged: {a} {b}"
    q = [(m["start"], m["length"], m) for m in qmap]
    o = [(e.start, e.length, e) for e in ours]
    for p in boundaries(q, o)[:-1]:
        qm = next(m for s, n, m in q if s <= p < s + n)
        oe = next(e for s, n, e in o if s <= p < s + n)
        assert oe.zero == (not qm["data"]), f"at {p}: ours {oe} qemu {qm}"
        if check_hole:
            assert oe.hole == (not qm["present"]), f"at {p}: ours {oe} qemu {qm}"
