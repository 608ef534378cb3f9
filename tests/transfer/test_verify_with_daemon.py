"""Verification against the REAL ovirt-imageio daemon (file and NBD tickets).

The engine is the small stand-in of tests/support/fake_transfer_engine.py; the
server's checksum comes from the reference daemon itself, and expected
values from the reference client.
"""

from __future__ import annotations

import os

import pytest

from helpers import MiB, make_raw, qemu_img
from imagetool.transfer.download import download_disk
from imagetool.transfer.upload import upload_disk_result

pytestmark = pytest.mark.slow

ovirt_client = pytest.importorskip("ovirt_imageio.client")
blkhash = pytest.importorskip("ovirt_imageio._internal.blkhash")

SIZE = 6 * MiB
DATA = [(0, MiB + 512), (3 * MiB, 64 * 1024), (5 * MiB - 4096, MiB + 4096)]


@pytest.fixture
def files(scratch):
    raw = os.path.join(scratch, "v.raw")
    make_raw(raw, SIZE, DATA, seed=11)
    qcow2 = os.path.join(scratch, "v.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, qcow2)
    return {"raw": raw, "qcow2": qcow2}


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_guest_data_upload_and_download_verified(transfer_engine, files, scratch, fmt):
    res = upload_disk_result(transfer_engine.conn, files[fmt], "data", workers=2)
    v = res.verification
    assert v.verified and v.method == "server-checksum" and v.scope == "guest-data"
    assert v.value == ovirt_client.checksum(files[fmt], algorithm=v.algorithm)["checksum"]

    out = os.path.join(scratch, f"back.{fmt}")
    got = download_disk(transfer_engine.conn, res.disk_id, out, format=fmt)
    assert got.verification.verified and got.checksum == ovirt_client.checksum(
        out, algorithm=got.verification.algorithm)["checksum"]


def test_volume_bytes_upload_verified(transfer_engine, files):
    res = upload_disk_result(transfer_engine.conn, files["qcow2"], "data",
                             transfer_format="cow", workers=1)
    v = res.verification
    assert v.verified and v.scope == "volume-bytes"
    size = 32 if v.algorithm.startswith("blake2") else None
    if v.method == "read-back":
        # The volume file is longer than ours: only our extent was compared.
        expected = blkhash.checksum(files["qcow2"], algorithm=v.algorithm,
                                    digest_size=size)["checksum"]
        assert v.value == expected
    else:
        # The volume matched our bytes padded with zeros to its size.
        padded = files["qcow2"] + ".padded"
        with open(files["qcow2"], "rb") as f, open(padded, "wb") as g:
            g.write(f.read())
            g.truncate(os.path.getsize(transfer_engine.disk_path(res.disk_id)))
        assert v.value == blkhash.checksum(padded, algorithm=v.algorithm,
                                           digest_size=size)["checksum"]
