"""Fixtures of the transfer tests (the shared ones are in tests/conftest.py)."""

from __future__ import annotations

import os

import pytest

from helpers import MiB, make_raw, qemu_img

SIZE = 12 * MiB
DATA = [(0, MiB), (3 * MiB + 4096, 512 * 1024), (7 * MiB, 3 * MiB)]


@pytest.fixture(scope="module")
def images(module_dir):
    """Source images in the module's directory: ``raw`` (12 MiB, data
    ranges and holes), the same as ``qcow2`` and compressed qcow2, and
    ``empty`` (64 MiB of holes)."""
    raw = os.path.join(module_dir, "src.raw")
    make_raw(raw, SIZE, DATA, seed=21)
    qcow2 = os.path.join(module_dir, "src.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, qcow2)
    compressed = os.path.join(module_dir, "src-c.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", "-c", raw, compressed)
    empty = os.path.join(module_dir, "empty.raw")
    make_raw(empty, 64 * MiB, [], seed=0)          # all holes
    return {"raw": raw, "qcow2": qcow2, "compressed": compressed, "empty": empty}
