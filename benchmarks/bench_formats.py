"""pytest-benchmark: checksum, convert and the qcow2 writer, in process.

Not part of the test run (``testpaths = ["tests"]``). Run::

    python -m pytest benchmarks/bench_formats.py --benchmark-only

The image size comes from ``IMAGETOOL_BENCH_SIZE`` (default 512M: half data
in 64 MiB runs, half holes), built once per session in
``IMAGETOOL_BENCH_DIR`` (default /var/tmp, on disk rather than tmpfs).
``compare_formats.py`` is the side-by-side run against the reference tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from compare_formats import build_image  # noqa: E402

from imagetool.checksum import checksum_file  # noqa: E402
from imagetool.formats.convert import convert  # noqa: E402
from imagetool.formats.qcow2_writer import Qcow2Writer  # noqa: E402
from imagetool.units import parse_size  # noqa: E402

SIZE = parse_size(os.environ.get("IMAGETOOL_BENCH_SIZE", "512M"))


@pytest.fixture(scope="session")
def bench_dir():
    d = tempfile.mkdtemp(prefix="imagetool-bench-",
                         dir=os.environ.get("IMAGETOOL_BENCH_DIR", "/var/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def images(bench_dir):
    raw = os.path.join(bench_dir, "src.raw")
    build_image(raw, SIZE)
    qcow = os.path.join(bench_dir, "src.qcow2")
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, qcow], check=True)
    return {"raw": raw, "qcow2": qcow}


@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_checksum(benchmark, images, kind):
    result = benchmark.pedantic(checksum_file, args=(images[kind],), rounds=3)
    assert len(result["checksum"]) == 64


@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_reference_checksum(benchmark, images, kind):
    from ovirt_imageio.client import checksum

    result = benchmark.pedantic(checksum, args=(images[kind],), rounds=3)
    assert len(result["checksum"]) == 64


@pytest.mark.parametrize("src,fmt", [("raw", "qcow2"), ("qcow2", "raw")])
def test_convert(benchmark, images, bench_dir, src, fmt):
    dst = os.path.join(bench_dir, f"out.{fmt}")
    benchmark.pedantic(convert, args=(images[src], dst, fmt), kwargs={"force": True},
                       rounds=3)


@pytest.mark.parametrize("src,fmt", [("raw", "qcow2"), ("qcow2", "raw")])
def test_qemu_img_convert(benchmark, images, bench_dir, src, fmt):
    dst = os.path.join(bench_dir, f"qemu.{fmt}")
    benchmark.pedantic(subprocess.run, args=(["qemu-img", "convert", "-t", "writeback",
                                              "-O", fmt, images[src], dst],),
                       kwargs={"check": True}, rounds=3)


def test_writer_sequential_4m(benchmark, bench_dir):
    chunk = memoryview(os.urandom(4 * 1024 * 1024))
    path = os.path.join(bench_dir, "seq.qcow2")

    def run():
        with Qcow2Writer.create(path, SIZE) as w:
            for off in range(0, SIZE, len(chunk)):
                w.write(off, chunk[:min(len(chunk), SIZE - off)])

    benchmark.pedantic(run, rounds=3)
