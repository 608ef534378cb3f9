"""Block checksum: reference vectors, the reference client, and what is read."""

from __future__ import annotations

import hashlib

import pytest
from ovirt_imageio._internal import blkhash
from ovirt_imageio.client import checksum as reference_checksum

from fake_backends import MemBackend
from helpers import KiB, MiB, extents_of, qemu_io, random_image, run, write_raw
from imagetool.backup import digests
from imagetool.checksum import ALGORITHMS, checksum, checksum_file
from imagetool.iocore.backend import Extent

# From shared/reference/checksum.md (checked there against the reference client).
VECTORS = [
    (b"", 0, "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"),
    (b"data", 5 * MiB, "0da53b583fc1fbbac7edea14454c79f84a8107613e614f2c7a47071dfdcf41a6"),
    (b"", 4 * MiB, "452c15acb24a13d389311055aa1090397752d5c419dd7842600b0db09770b66c"),
    (b"\xff" * MiB, MiB, "6c3dbd237110ebf03c8ef6d8c5edaea8cdc4bfcee570cea9dfcebe7baf7be370"),
]


@pytest.mark.parametrize("head,size,expected", VECTORS)
def test_reference_vectors(tmp_path, head, size, expected):
    data = head + bytes(size - len(head))
    path = tmp_path / "v.raw"
    write_raw(path, data)
    result = checksum_file(path)
    assert result == {"algorithm": "blake2b", "block_size": 4 * MiB, "checksum": expected}
    # The same guest data through an in-memory backend, all extents data.
    assert checksum(MemBackend(data))["checksum"] == expected


def _definition(data: bytes, algorithm: str, block_size: int) -> str:
    """The checksum.md definition, written out plainly."""
    def new(b=b""):
        if algorithm.startswith("blake2"):
            return getattr(hashlib, algorithm)(b, digest_size=32)
        return hashlib.new(algorithm, b)
    outer = new()
    for off in range(0, len(data), block_size):
        outer.update(new(data[off:off + block_size]).digest())
    return outer.hexdigest()


@pytest.mark.parametrize("algorithm", ["blake2b", "blake2s", "sha256", "sha1", "md5"])
@pytest.mark.parametrize("block_size", [MiB, 4 * MiB, 12 * KiB * 1024])
def test_matches_definition(algorithm, block_size):
    data = bytes(random_image(9 * MiB + 4096, seed=block_size % 97, fill=0.5))
    b = MemBackend(data, extents_of(data))
    got = checksum(b, algorithm=algorithm, block_size=block_size)
    assert got == {"algorithm": algorithm, "block_size": block_size,
                   "checksum": _definition(data, algorithm, block_size)}
    blocks = digests.compute(b, algorithm=algorithm, block_size=block_size)
    assert digests.combine([blocks[i] for i in sorted(blocks)], algorithm) == got["checksum"]


def test_zero_extents_are_never_read():
    data = bytearray(10 * MiB)
    data[100:5000] = b"x" * 4900
    data[6 * MiB:6 * MiB + 8192] = b"y" * 8192
    exts = [Extent(0, 64 * KiB), Extent(64 * KiB, 6 * MiB - 64 * KiB, zero=True, hole=True),
            Extent(6 * MiB, 8192), Extent(6 * MiB + 8192, 4 * MiB - 8192, zero=True)]
    b = MemBackend(data, exts)
    assert checksum(b)["checksum"] == _definition(bytes(data), "blake2b", 4 * MiB)
    assert sorted(b.reads) == [(0, 64 * KiB), (6 * MiB, 8192)]


def test_hole_that_is_not_zero_is_read():
    # A hole with zero=False may hold backing data: it must be read.
    data = b"\x01" * MiB
    b = MemBackend(data, [Extent(0, MiB, zero=False, hole=True)])
    assert checksum(b)["checksum"] == _definition(data, "blake2b", 4 * MiB)
    assert b.reads == [(0, MiB)]


def test_extents_not_covering_the_image_are_read_as_data():
    data = bytes(MiB) + b"\x02" * MiB
    b = MemBackend(data, [Extent(0, MiB, zero=True)])  # the second MiB is missing
    assert checksum(b)["checksum"] == _definition(data, "blake2b", 4 * MiB)
    assert b.reads == [(MiB, MiB)]


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_workers_do_not_change_the_result(workers):
    data = bytes(random_image(21 * MiB, seed=workers, fill=0.4))
    b = MemBackend(data, extents_of(data))
    assert checksum(b, workers=workers, block_size=MiB)["checksum"] == \
        _definition(data, "blake2b", MiB)


def test_progress_reports_every_byte():
    data = bytes(random_image(9 * MiB + 512, seed=1))
    seen = []
    checksum(MemBackend(data, extents_of(data)), progress=seen.append)
    assert sum(seen) == len(data)


@pytest.mark.parametrize("block_size", [0, 4096, MiB - 4096, MiB + 1, 16 * MiB + 4096, 32 * MiB])
def test_invalid_block_size(block_size):
    with pytest.raises(ValueError, match="multiple of 4096"):
        checksum(MemBackend(b""), block_size=block_size)


def test_invalid_algorithm():
    with pytest.raises(ValueError, match="unsupported checksum algorithm"):
        checksum(MemBackend(b""), algorithm="shake_128")
    assert {"blake2b", "blake2s", "sha256", "sha1", "md5"} <= ALGORITHMS
    assert not any(a.startswith("shake") for a in ALGORITHMS)


@pytest.fixture
def sample_images(tmp_path):
    """Raw and qcow2 (plain, compressed, zero clusters, chain) with one guest content."""
    size = 13 * MiB
    data = random_image(size, seed=42, fill=0.5)
    raw = tmp_path / "img.raw"
    write_raw(raw, data)
    images = {"raw": raw}
    images["qcow2"] = tmp_path / "img.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, images["qcow2"])
    images["compressed"] = tmp_path / "img-c.qcow2"
    run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, images["compressed"])
    # A two-layer chain ending in the same guest data, with zero clusters on top.
    base = tmp_path / "base.qcow2"
    run("qemu-img", "create", "-f", "qcow2", base, str(size))
    qemu_io(base, f"write -P 0x55 0 {size}")
    top = tmp_path / "top.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-B", base.name, "-F", "qcow2",
        raw, top)
    images["chain"] = top
    return data, images


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["raw", "qcow2", "compressed", "chain"])
def test_equals_reference_client(sample_images, kind):
    data, images = sample_images
    path = images[kind]
    ours = checksum_file(path)
    assert ours == reference_checksum(str(path))
    assert ours["checksum"] == _definition(bytes(data), "blake2b", 4 * MiB)


@pytest.mark.slow
def test_equals_reference_client_other_algorithm(sample_images):
    _, images = sample_images
    path = str(images["qcow2"])
    ours = checksum_file(path, algorithm="sha256", block_size=2 * MiB)
    assert ours == reference_checksum(path, algorithm="sha256", block_size=2 * MiB)


def test_raw_size_not_multiple_of_512_is_exact(tmp_path):
    # Our choice: the exact file length (as imageio's file-level blkhash),
    # not qemu's 512-byte rounding that the NBD-based client applies.
    path = tmp_path / "odd.raw"
    path.write_bytes(b"\x07" * 1000)
    ours = checksum_file(path)
    assert ours == blkhash.checksum(str(path))
    assert ours["checksum"] == _definition(b"\x07" * 1000, "blake2b", 4 * MiB)


def test_empty_qcow2(tmp_path):
    path = tmp_path / "empty.qcow2"
    run("qemu-img", "create", "-f", "qcow2", path, "0")
    assert checksum_file(path)["checksum"] == VECTORS[0][2]
