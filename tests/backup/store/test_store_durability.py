"""How a point's chunks reach storage: synced once, before the index that
names them, and compressed only when their samples compress."""

from __future__ import annotations

import os

from helpers import MiB, make_raw

from imagetool import formats
from imagetool.backup.store import ChunkStore, DiskSource, open_storage, write_point


def test_chunks_are_synced_once_before_the_index(tmp_path, monkeypatch):
    store = ChunkStore.init(open_storage(str(tmp_path / "repo"), create=True),
                            chunk_size=MiB)
    calls = []
    put, sync = store.storage.put, store.storage.sync
    monkeypatch.setattr(store.storage, "put", lambda name, data, durable=True: (
        calls.append((name.split("/")[0], durable)), put(name, data, durable))[1])
    monkeypatch.setattr(store.storage, "sync", lambda: (calls.append(("sync", None)),
                                                         sync())[1])
    raw = str(tmp_path / "disk.raw")
    make_raw(raw, 4 * MiB, [(0, 3 * MiB)])
    with formats.open_image(raw, "r") as b:
        write_point(store, "vm1", [DiskSource("d1", b)])
    kinds = [c for c in calls if c[0] != "leases"]
    assert kinds == [("chunks", False)] * 3 + [("sync", None), ("points", True)]


def test_only_chunks_whose_samples_compress_are_compressed(tmp_path):
    store = ChunkStore.init(open_storage(str(tmp_path / "repo"), create=True))
    noise = os.urandom(4 * MiB)
    half = noise[:2 * MiB] + bytes(2 * MiB)     # compressible in its second half
    raw_blob = store.encode("chunks/x", noise)
    assert raw_blob[0] == 0 and raw_blob[1:] == noise
    packed = store.encode("chunks/y", half)
    assert packed[0] == 1 and len(packed) < 2 * MiB + 64 * 1024
    assert store.decode("chunks/y", packed, 4 * MiB) == half
