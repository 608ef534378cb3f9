"""``backup restore`` from a chunk repository checks what the point says
before the engine is asked for anything: an index is read as untrusted."""

from __future__ import annotations

import pytest

from helpers import MiB, make_raw

from imagetool import formats
from imagetool.backup.restore import restore_chunk_vm
from imagetool.errors import ImagetoolError
from imagetool.backup.store import ChunkStore, DiskSource, open_storage, write_point


class NoEngine:
    def __getattr__(self, name):
        raise AssertionError(f"the engine was asked for {name}")


@pytest.fixture
def store(tmp_path):
    return ChunkStore.init(open_storage(str(tmp_path / "repo"), create=True), chunk_size=MiB)


def point(store, tmp_path, manifest, meta):
    raw = str(tmp_path / "d.raw")
    make_raw(raw, 2 * MiB, [(0, 4096)])
    with formats.open_image(raw, "r") as b:
        return write_point(store, "vm1", [DiskSource("d1", b, meta=meta)], name="p1",
                           manifest=manifest, ovf="<ovf/>")


def facts(**over):
    import hashlib
    m = {"format": 1, "vm_id": "vm1", "point": "p1", "timestamp": 1.0, "method": "snapshot",
         "mode": "full", "ovf": {"sha256": hashlib.sha256(b"<ovf/>").hexdigest()}}
    m.update(over)
    return m


def disk(**over):
    d = {"disk_id": "d1", "mode": "full", "virtual_size": 2 * MiB,
         "checksum": {"algorithm": "sha256", "block_size": MiB, "value": "00"}}
    d.update(over)
    return d


@pytest.mark.parametrize("manifest, meta, error", [
    ({}, {}, "format is missing"),
    (facts(), disk(virtual_size=MiB), "disks[0].disk_id or virtual_size differs"),
    (facts(), disk(disk_id="../x"), "disks[0].disk_id '../x' is not a plain file name"),
    (facts(point="p2"), disk(), "point 'p2' is not its directory's 'p1'"),
    (facts(ovf={"sha256": "0" * 64}), disk(), "the OVF's SHA-256 differs"),
])
def test_a_point_that_says_something_wrong_is_refused(store, tmp_path, manifest, meta, error):
    point(store, tmp_path, manifest, meta)
    with pytest.raises(ImagetoolError) as e:
        restore_chunk_vm(NoEngine(), store, "vm1", storage_domain="data")
    assert str(e.value).startswith(f"{store.url}/points/vm1/p1: ")
    assert error in str(e.value)
