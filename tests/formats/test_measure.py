"""measure() against qemu-img measure on the same files."""

from __future__ import annotations

import pytest

from fake_backends import MemBackend
from helpers import (KiB, MiB, extents_of, qemu_img_json, qemu_io, random_image, run,
                     write_raw)
from imagetool.formats.measure import measure, qcow2_fully_allocated_size


def _qemu_measure(path, out_format, cluster_size=None) -> dict:
    args = ["measure", "-O", out_format]
    if cluster_size:
        args += ["-o", f"cluster_size={cluster_size}"]
    result = qemu_img_json(*args, path)
    return {"required": result["required"], "fully-allocated": result["fully-allocated"]}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("measure")
    found = {}
    data = random_image(11 * MiB + 512, seed=9, fill=0.4, max_run=200 * KiB)
    found["sparse.raw"] = d / "sparse.raw"
    write_raw(found["sparse.raw"], data)
    found["empty.raw"] = d / "empty.raw"
    found["empty.raw"].write_bytes(b"")
    found["full.raw"] = d / "full.raw"
    found["full.raw"].write_bytes(b"\x01" * (3 * MiB))
    found["odd.raw"] = d / "odd.raw"  # not a multiple of 512: qemu rounds up
    found["odd.raw"].write_bytes(b"\x01" * 1000)
    found["plain.qcow2"] = d / "plain.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", found["sparse.raw"], found["plain.qcow2"])
    found["small-clusters.qcow2"] = d / "small.qcow2"
    run("qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=4k",
        found["sparse.raw"], found["small-clusters.qcow2"])
    found["compressed.qcow2"] = d / "c.qcow2"
    run("qemu-img", "convert", "-c", "-O", "qcow2", found["sparse.raw"], found["compressed.qcow2"])
    zero = d / "zero.qcow2"
    run("qemu-img", "create", "-f", "qcow2", zero, "8M")
    qemu_io(zero, "write -P 0x11 0 1M", "write -z 1M 3M", "write -P 0x22 5000k 100k")
    found["zero-clusters.qcow2"] = zero
    base = d / "base.qcow2"
    run("qemu-img", "create", "-f", "qcow2", base, "6M")
    qemu_io(base, "write -P 0x33 0 2M")
    top = d / "top.qcow2"
    run("qemu-img", "create", "-f", "qcow2", "-b", base.name, "-F", "qcow2", top)
    qemu_io(top, "write -P 0x44 4M 1M")
    found["chain.qcow2"] = top
    return found


NAMES = ["sparse.raw", "empty.raw", "full.raw", "odd.raw", "plain.qcow2",
         "small-clusters.qcow2", "compressed.qcow2", "zero-clusters.qcow2", "chain.qcow2"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cluster_size", [4 * KiB, 64 * KiB, 2 * MiB])
def test_qcow2_output_equals_qemu(images, name, cluster_size):
    path = images[name]
    assert measure(path, "qcow2", cluster_size) == _qemu_measure(path, "qcow2", cluster_size)


@pytest.mark.parametrize("name", NAMES)
def test_raw_output_equals_qemu(images, name):
    path = images[name]
    assert measure(path, "raw") == _qemu_measure(path, "raw")


def test_backend_source():
    data = bytearray(5 * MiB)
    data[10:20] = b"x" * 10                     # cluster 0
    data[3 * MiB:3 * MiB + 70 * KiB] = b"y" * (70 * KiB)  # 2 clusters
    result = measure(MemBackend(data, extents_of(data)))
    full = qcow2_fully_allocated_size(5 * MiB, 64 * KiB)
    assert result == {"required": full - 5 * MiB + 3 * 64 * KiB, "fully-allocated": full}


def test_invalid_arguments(images):
    with pytest.raises(ValueError, match="output format"):
        measure(images["full.raw"], "vmdk")
    with pytest.raises(ValueError, match="cluster size"):
        measure(images["full.raw"], "qcow2", 3000)
