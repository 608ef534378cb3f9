"""An incremental point's layer made against a real ovirt-imageio daemon.

The daemon serves a qemu-nbd export with a persistent dirty bitmap
(``qemu-nbd --bitmap``, meta context ``qemu:dirty-bitmap:NAME``) through a
ticket with ``dirty: true``, as oVirt hosts do during an incremental VM
backup (ovirt-imageio documentation, "Incremental backup"). The backup's
own data-plane copy (``backup_helpers.write_layer``: the dirty extents
into ``transfer.urls.write_file``, as ``backup.fetch`` does) writes the layer over
the full point; the reference client (``ovirt_imageio.client.download``
with ``incremental=True``) makes its own. Both chains must read as the
image does now, and ours must hold only what the bitmap marked.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from backup_helpers import write_layer
from helpers import MiB, make_raw, qemu_img, qemu_io
from imageio_daemon import QemuNbd
from imagetool.checksum import checksum
from imagetool.formats import open_image
from imagetool.transfer.urls import open_url

pytestmark = pytest.mark.slow

SIZE = 16 * MiB
DATA = [(0, 4 * MiB), (6 * MiB, 2 * MiB), (12 * MiB, 3 * MiB)]


def _allocated(path: str) -> int:
    """Bytes the top layer itself holds (data or zero clusters)."""
    return sum(e["length"] for e in json.loads(qemu_img("map", "--output=json", path))
               if e["depth"] == 0 and (e["data"] or e["zero"]) and e.get("present", True))


def test_incremental_layer_from_a_dirty_bitmap_export(imageio_daemon_tls, tls_files, scratch):
    client = pytest.importorskip("ovirt_imageio.client")
    raw = os.path.join(scratch, "base.raw")
    make_raw(raw, SIZE, DATA, seed=3)
    image = os.path.join(scratch, "disk.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, image)
    # The full point, and a copy of it for the reference client's chain.
    ours_dir, ref_dir = os.path.join(scratch, "ours"), os.path.join(scratch, "ref")
    os.makedirs(ours_dir)
    os.makedirs(ref_dir)
    qemu_img("convert", "-f", "qcow2", "-O", "qcow2", image, os.path.join(ours_dir, "full.qcow2"))
    shutil.copy(os.path.join(ours_dir, "full.qcow2"), os.path.join(ref_dir, "full.qcow2"))

    # From here on the bitmap records what changes: new data, zeroes over
    # data, a discard, and data where there was a hole.
    qemu_img("bitmap", "--add", image, "b0")
    qemu_io(image, "write -P 0xcd 1M 256k", "write -z 6M 128k", "discard 12M 64k",
            "write -P 0xee 9M 64k", fmt="qcow2")

    with QemuNbd(image, "qcow2", bitmap="b0") as nbd:
        url = imageio_daemon_tls.add_ticket(nbd_socket=nbd.socket_path, size=SIZE,
                                            ops=["read"], dirty=True)
        src = open_url(url, cafile=tls_files.ca_file)
        try:
            ours = os.path.join(ours_dir, "inc.qcow2")
            _, exts = write_layer(src, ours, dirty=True, backing="full.qcow2")
        finally:
            src.close()
        ref = os.path.join(ref_dir, "inc.qcow2")
        client.download(url, ref, tls_files.ca_file, fmt="qcow2", incremental=True,
                        backing_file="full.qcow2", backing_format="qcow2")

    dirty = sum(e.length for e in exts if not e.hole)
    assert 0 < dirty < SIZE // 4, "the bitmap, not the whole disk, chose the ranges"
    qemu_img("check", ours)
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", ours, image)
    qemu_img("compare", "-f", "qcow2", "-F", "qcow2", ours, ref)
    assert _allocated(ours) <= dirty
    with open_image(ours) as chain, open_image(image) as now:
        assert checksum(chain)["checksum"] == checksum(now)["checksum"]
