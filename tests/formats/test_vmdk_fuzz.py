"""Fuzz the VMDK reader with mutated headers, tables, markers and descriptors.

A seeded RNG mutates small VMDK images made by qemu-img (and a stream with
its grain directory behind a footer, as VMware writes them); each mutant
goes through inspect/open/extents/read, as a plain file and from a byte
window inside a bigger file, in a child process with an address-space
limit. Only ImagetoolError subclasses may escape, every case must finish in
bounded time, and traced memory per case stays small.

Run directly (``python tests/formats/test_vmdk_fuzz.py DIR SEED COUNT``)
this file is the child; pytest runs the parent test.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys

import pytest

CASE_SECONDS = 5
PEAK_LIMIT = 24 << 20
READ_LIMIT = 1 << 20
PREFIX = 1536           # bytes before the image in the windowed copy

_HEADER_FIELDS = [(4, "<I"), (8, "<I"), (12, "<Q"), (20, "<Q"), (28, "<Q"),
                  (36, "<Q"), (44, "<I"), (48, "<Q"), (56, "<Q"), (64, "<Q"),
                  (77, "<H")]


# --- child -------------------------------------------------------------

def _interesting(rnd: random.Random, file_size: int) -> int:
    sectors = max(1, file_size // 512)
    return rnd.choice([
        0, 1, 2, 3, 7, 8, 128, 511, 512, 513, 2048, 4096, sectors - 1, sectors,
        sectors + 1, file_size, 1 << 31, (1 << 32) - 1, 1 << 40, 1 << 55,
        1 << 62, (1 << 64) - 1, rnd.getrandbits(64), rnd.getrandbits(32),
        rnd.randrange(sectors), rnd.randrange(sectors * 2),
    ])


def _tables(data: bytes):
    """(header offsets, GD entry offsets, GT entry offsets, grain offsets)."""
    headers = [0]
    gd_sector = struct.unpack_from("<Q", data, 56)[0]
    if gd_sector == 0xFFFFFFFFFFFFFFFF and len(data) >= 1024:
        headers.append(len(data) - 1024)
        gd_sector = struct.unpack_from("<Q", data, len(data) - 1024 + 56)[0]
    capacity, grain = struct.unpack_from("<QQ", data, 12)
    ngte = struct.unpack_from("<I", data, 44)[0]
    n_gd = -(-capacity // (grain * ngte)) if grain and ngte else 0
    gd = [gd_sector * 512 + 4 * i for i in range(n_gd)
          if gd_sector * 512 + 4 * i + 4 <= len(data)]
    gt, grains = [], []
    for pos in gd:
        sector = struct.unpack_from("<I", data, pos)[0]
        for j in range(ngte):
            p = sector * 512 + 4 * j
            if sector and p + 4 <= len(data):
                gt.append(p)
                gte = struct.unpack_from("<I", data, p)[0]
                if gte > 1 and gte * 512 + 12 <= len(data):
                    grains.append(gte * 512)
    return headers, gd, gt, grains


def _mutate(rnd: random.Random, data: bytearray, tables) -> bytearray:
    headers, gd, gt, grains = tables
    size = len(data)
    for _ in range(rnd.randint(1, 3)):
        how = rnd.randrange(9)
        if how == 0:  # flip a bit in the header or descriptor
            i = rnd.randrange(min(size, 4096))
            data[i] ^= 1 << rnd.randrange(8)
        elif how == 1:  # a header (or footer) field gets an interesting value
            base = rnd.choice(headers)
            off, fmt = rnd.choice(_HEADER_FIELDS)
            bits = struct.calcsize(fmt) * 8
            if base + off + bits // 8 <= size:
                struct.pack_into(fmt, data, base + off,
                                 _interesting(rnd, size) & ((1 << bits) - 1))
        elif how in (2, 3) and gd:  # a grain directory entry
            pos = rnd.choice(gd)
            if pos + 4 <= size:
                struct.pack_into("<I", data, pos,
                                 _interesting(rnd, size) & 0xFFFFFFFF)
        elif how in (4, 5) and gt:  # a grain table entry
            pos = rnd.choice(gt)
            if pos + 4 <= size:
                struct.pack_into("<I", data, pos,
                                 _interesting(rnd, size) & 0xFFFFFFFF)
        elif how == 6 and grains:  # a grain marker's lba or size, or its data
            pos = rnd.choice(grains)
            which = rnd.randrange(3)
            if which == 0 and pos + 8 <= size:
                struct.pack_into("<Q", data, pos, _interesting(rnd, size))
            elif which == 1 and pos + 12 <= size:
                struct.pack_into("<I", data, pos + 8,
                                 _interesting(rnd, size) & 0xFFFFFFFF)
            else:
                i = min(size - 1, pos + 12 + rnd.randrange(64))
                data[i:i + 8] = rnd.randbytes(min(8, size - i))
        elif how == 7:  # random bytes anywhere
            i = rnd.randrange(size)
            n = rnd.randint(1, 64)
            data[i:i + n] = rnd.randbytes(min(n, size - i))
        else:  # truncate
            del data[rnd.randrange(size):]
            size = len(data)
            if not size:
                data += b"KDMV"
                size = 4
    return data


def _mutate_descriptor(rnd: random.Random, text: bytes) -> bytes:
    lines = text.split(b"\n")
    for _ in range(rnd.randint(1, 3)):
        i = rnd.randrange(len(lines))
        how = rnd.randrange(5)
        if how == 0:   # a number in a line becomes an interesting one
            lines[i] = lines[i].replace(b"10249", str(_interesting(rnd, 1 << 22)).encode())
        elif how == 1:  # another extent type, access or file name
            lines[i] = lines[i].replace(b"SPARSE", rnd.choice(
                [b"FLAT", b"ZERO", b"VMFS", b"SESPARSE", b"sparse"]))
            lines[i] = lines[i].replace(b"RW", rnd.choice([b"RDONLY", b"NOACCESS", b"RW"]))
            lines[i] = lines[i].replace(b'"desc-s001.vmdk"', rnd.choice(
                [b'"../desc-s001.vmdk"', b'"/dev/zero"', b'"desc.vmdk"',
                 b'"missing"', b'""', b'"desc-s001.vmdk" 99999999']))
        elif how == 2:  # duplicate a line (a second extent, a second key)
            lines.insert(i, lines[i])
        elif how == 3:
            del lines[i]
            if not lines:
                lines = [b"# Disk DescriptorFile"]
        else:
            j = rnd.randrange(max(1, len(lines[i])))
            lines[i] = lines[i][:j] + rnd.randbytes(rnd.randint(1, 8)) + lines[i][j:]
    return b"\n".join(lines)


def _exercise(path: str, window: tuple[int, int] | None) -> None:
    from itertools import islice

    from imagetool.formats import inspect, open_image
    kw = {} if window is None else {"offset": window[0], "length": window[1]}
    inspect(path, **kw)
    with open_image(path, **kw) as b:
        list(islice(b.extents(), 5000))
        n = min(b.size, READ_LIMIT)
        buf = bytearray(n)
        b.read_into(0, memoryview(buf))
        if b.size > READ_LIMIT:
            b.read_into(b.size - 4096, memoryview(bytearray(4096)))
        c = b.clone()
        try:
            c.read_into(0, memoryview(bytearray(min(b.size, 4096))))
        finally:
            c.close()


def child(workdir: str, seed: int, count: int) -> None:
    import resource
    import signal
    import time
    import tracemalloc

    from imagetool.errors import ImagetoolError

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    class Hang(Exception):
        pass

    def alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    bases = sorted(n for n in os.listdir(workdir) if n.startswith("base-"))
    pristine = {}
    for name in bases:
        with open(os.path.join(workdir, name), "rb") as f:
            data = f.read()
        pristine[name] = (data, _tables(data))
    with open(os.path.join(workdir, "desc.vmdk"), "rb") as f:
        descriptor = f.read()
    rnd = random.Random(seed)
    failures = []
    stats = {"cases": 0, "clean_errors": 0, "ok": 0, "max_peak": 0,
             "max_seconds": 0.0}
    target = os.path.join(workdir, "mutant.vmdk")
    windowed = os.path.join(workdir, "mutant.tar")
    desc_target = os.path.join(workdir, "mutant-desc.vmdk")
    tracemalloc.start()
    for case in range(count):
        if rnd.randrange(6) == 0:
            name = "desc.vmdk"
            with open(desc_target, "wb") as f:
                f.write(_mutate_descriptor(rnd, descriptor))
            runs = [(desc_target, None)]
        else:
            name = rnd.choice(bases)
            data, tables = pristine[name]
            mutant = _mutate(rnd, bytearray(data), tables)
            with open(target, "wb") as f:
                f.write(mutant)
            with open(windowed, "wb") as f:   # the image amid other bytes
                f.write(b"\xa5" * PREFIX + mutant + b"\x5a" * 4096)
            runs = [(target, None), (windowed, (PREFIX, len(mutant)))]
        for path, window in runs:
            tracemalloc.reset_peak()
            start = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
            try:
                _exercise(path, window)
                stats["ok"] += 1
            except ImagetoolError:
                stats["clean_errors"] += 1
            except Hang:
                failures.append({"case": case, "base": name, "error": "timeout"})
            except BaseException as e:  # anything else is a bug
                failures.append({"case": case, "base": name, "window": window,
                                 "error": f"{type(e).__name__}: {e}"})
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            elapsed = time.monotonic() - start
            peak = tracemalloc.get_traced_memory()[1]
            stats["max_peak"] = max(stats["max_peak"], peak)
            stats["max_seconds"] = max(stats["max_seconds"], elapsed)
            if peak > PEAK_LIMIT:
                failures.append({"case": case, "base": name, "error": f"peak {peak}"})
        stats["cases"] += 1
        if len(failures) >= 20:
            break
    print(json.dumps({"stats": stats, "failures": failures}))


# --- parent (pytest) -----------------------------------------------------

def _make_bases(d) -> None:
    from helpers import make_raw, qemu_img, qemu_io
    src = d / "src.raw"
    make_raw(src, (5 << 20) + 4608,
             [(0, 100 << 10), (1 << 20, 3000), ((2 << 20) - 4096, 70 << 10),
              (5 << 20, 4608)], 9)
    qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
             str(src), str(d / "base-stream.vmdk"))
    qemu_img("convert", "-O", "vmdk", "-o", "subformat=monolithicSparse",
             str(src), str(d / "base-sparse.vmdk"))
    qemu_img("create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on",
             str(d / "base-zeroed.vmdk"), "1M")
    qemu_io(d / "base-zeroed.vmdk", "write -P 5 0 128k", "write -z 64k 64k",
            fmt="vmdk")
    # VMware's layout: GD_AT_END in the header, footer + EOS at the end.
    data = bytearray((d / "base-stream.vmdk").read_bytes())
    header = bytes(data[:512])
    struct.pack_into("<Q", data, 56, 0xFFFFFFFFFFFFFFFF)
    (d / "base-footer.vmdk").write_bytes(
        bytes(data) + struct.pack("<QII", 1, 0, 3).ljust(512, b"\0")
        + header + bytes(512))
    # A descriptor file and its sparse extent (mutated as text).
    small = d / "small.raw"
    make_raw(small, 1 << 20, [(4096, 8192)], 3)
    qemu_img("convert", "-O", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
             str(small), str(d / "desc.vmdk"))


@pytest.mark.slow
def test_fuzz_mutated_vmdk(tmp_path):
    _make_bases(tmp_path)
    assert (tmp_path / "desc-s001.vmdk").exists()
    count = int(os.environ.get("IMAGETOOL_FUZZ_CASES", "1500"))
    env = dict(os.environ)
    from helpers import ROOT, SUPPORT
    env["PYTHONPATH"] = os.pathsep.join([ROOT, SUPPORT, env.get("PYTHONPATH", "")])
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(tmp_path), "4321", str(count)],
        capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["failures"] == [], result
    stats = result["stats"]
    assert stats["cases"] == count
    # the mutations must reach both outcomes, or the fuzzing is toothless
    assert stats["clean_errors"] > count // 10, stats
    assert stats["ok"] > count // 10, stats


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
