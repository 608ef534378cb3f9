"""Fuzz the qcow2 parser and reader with mutated headers, tables and data.

A seeded RNG mutates small qcow2 images made by qemu-img; each mutant goes
through inspect/open/extents/read in a child process with an address-space
limit. Only ImagetoolError subclasses may escape, every case must finish in
bounded time, and traced memory per case stays small.

Run directly (``python tests/formats/test_qcow2_fuzz.py DIR SEED COUNT``) this file
is the child; pytest runs the parent test.
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


# --- child -------------------------------------------------------------

def _interesting(rnd: random.Random, file_size: int, cs: int) -> int:
    return rnd.choice([
        0, 1, 7, 0x1FF, 0x200, cs, cs - 1, cs + 512, file_size, file_size - 1,
        file_size + cs, 1 << 31, (1 << 32) - 1, 1 << 55, 1 << 62, 1 << 63,
        (1 << 64) - 1, rnd.getrandbits(64), rnd.getrandbits(32),
        rnd.randrange(0, max(1, file_size)) & ~(cs - 1),
        (1 << 62) | rnd.getrandbits(40), (1 << 63) | rnd.randrange(0, file_size),
    ])


def _tables(data: bytes):
    """(cluster_size, L1 entry offsets, L2 entry offsets) of a pristine image."""
    cb = struct.unpack_from(">I", data, 20)[0]
    cs = 1 << cb
    l1_size, l1_off = struct.unpack_from(">IQ", data, 36)
    l1 = [l1_off + 8 * i for i in range(l1_size)]
    l2 = []
    for pos in l1:
        entry = struct.unpack_from(">Q", data, pos)[0] & 0x00FFFFFFFFFFFE00
        if entry and entry + cs <= len(data):
            l2 += [entry + 8 * i for i in range(cs // 8)]
    return cs, l1, l2


def _mutate(rnd: random.Random, data: bytearray, cs, l1, l2) -> bytearray:
    size = len(data)
    for _ in range(rnd.randint(1, 3)):
        how = rnd.randrange(8)
        if how == 0:  # flip a bit in the header cluster
            i = rnd.randrange(min(size, 1024))
            data[i] ^= 1 << rnd.randrange(8)
        elif how == 1:  # a header field gets an interesting value
            off, fmt = rnd.choice([
                (4, ">I"), (8, ">Q"), (16, ">I"), (20, ">I"), (24, ">Q"),
                (32, ">I"), (36, ">I"), (40, ">Q"), (60, ">I"), (64, ">Q"),
                (72, ">Q"), (96, ">I"), (100, ">I"), (104, ">B"), (112, ">I"),
                (116, ">I"), (120, ">I"), (124, ">I")])
            bits = struct.calcsize(fmt) * 8
            value = _interesting(rnd, size, cs) & ((1 << bits) - 1)
            if off + bits // 8 <= size:
                struct.pack_into(fmt, data, off, value)
        elif how in (2, 3, 4, 5) and (l1 if how < 4 else l2):
            # an L1 or L2 entry (or an extended-L2 bitmap word)
            pos = rnd.choice(l1 if how < 4 else l2)
            if pos + 8 <= size:
                struct.pack_into(">Q", data, pos, _interesting(rnd, size, cs))
        elif how == 6:  # random bytes anywhere (compressed payloads, tables)
            i = rnd.randrange(size)
            n = rnd.randint(1, 64)
            data[i:i + n] = rnd.randbytes(min(n, size - i))
        else:  # truncate
            del data[rnd.randrange(size):]
            size = len(data)
            if not size:
                data += b"QFI\xfb"
                size = 4
    return data


def _exercise(path: str) -> None:
    from itertools import islice

    from imagetool.formats import inspect, open_image
    inspect(path)
    for shallow in (False, True):
        with open_image(path, shallow=shallow) as b:
            list(islice(b.extents(), 5000))
            n = min(b.size, READ_LIMIT)
            buf = bytearray(n)
            b.read_into(0, memoryview(buf))
            if b.size > READ_LIMIT:
                b.read_into(b.size - 4096, memoryview(bytearray(4096)))


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
        pristine[name] = (data, *_tables(data))
    rnd = random.Random(seed)
    failures = []
    stats = {"cases": 0, "clean_errors": 0, "ok": 0, "max_peak": 0,
             "max_seconds": 0.0}
    target = os.path.join(workdir, "mutant.qcow2")
    tracemalloc.start()
    for case in range(count):
        name = rnd.choice(bases)
        data, cs, l1, l2 = pristine[name]
        mutant = _mutate(rnd, bytearray(data), cs, l1, l2)
        with open(target, "wb") as f:
            f.write(mutant)
        tracemalloc.reset_peak()
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            _exercise(target)
            stats["ok"] += 1
        except ImagetoolError:
            stats["clean_errors"] += 1
        except Hang:
            failures.append({"case": case, "base": name, "error": "timeout"})
        except BaseException as e:  # anything else is a bug
            failures.append({"case": case, "base": name,
                             "error": f"{type(e).__name__}: {e}"})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
        stats["cases"] += 1
        stats["max_peak"] = max(stats["max_peak"], peak)
        stats["max_seconds"] = max(stats["max_seconds"], elapsed)
        if peak > PEAK_LIMIT:
            failures.append({"case": case, "base": name, "error": f"peak {peak}"})
        if len(failures) >= 20:
            break
    print(json.dumps({"stats": stats, "failures": failures}))


# --- parent (pytest) -----------------------------------------------------

def _make_bases(d) -> None:
    from helpers import make_raw, qemu_img, qemu_io
    src = d / "src.raw"
    make_raw(src, 512 << 10, [(0, 100 << 10), (300 << 10, 50 << 10)], 9)
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "cluster_size=4k",
             str(src), str(d / "base-zlib.qcow2"))
    qemu_img("bitmap", "--add", str(d / "base-zlib.qcow2"), "b1")
    qemu_img("convert", "-c", "-O", "qcow2", "-o",
             "cluster_size=16k,extended_l2=on,compression_type=zstd",
             str(src), str(d / "base-extl2.qcow2"))
    qemu_io(d / "base-extl2.qcow2", "write -z 200k 3k", "write -P 1 260k 1k")
    (d / "backing.raw").write_bytes(os.urandom(64 << 10))
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=1k",
             "-b", "backing.raw", "-F", "raw", str(d / "base-v2.qcow2"), "256k")
    qemu_io(d / "base-v2.qcow2", "write -P 3 10k 20k")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
             str(d / "base-512.qcow2"), "128k")
    qemu_io(d / "base-512.qcow2", "write -P 4 0 10k", "write -z 20k 2k")


@pytest.mark.slow
def test_fuzz_mutated_qcow2(tmp_path):
    _make_bases(tmp_path)
    count = int(os.environ.get("IMAGETOOL_FUZZ_CASES", "1500"))
    env = dict(os.environ)
    from helpers import ROOT, SUPPORT
    env["PYTHONPATH"] = os.pathsep.join([ROOT, SUPPORT, env.get("PYTHONPATH", "")])
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(tmp_path), "1234", str(count)],
        capture_output=True, text=True, timeout=240, env=env)
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
