"""Points with real images: written from qcow2/raw Backends, read back
through PointBackend, exported and compared by qemu-img; incrementals,
dedup, zero chunks, compression, encryption, and hostile repositories."""

from __future__ import annotations

import os
import re
import shutil

import pytest
from helpers import KiB, MiB, make_raw, qemu_compare, qemu_img

from imagetool import checksum as block_checksum
from imagetool import formats
from imagetool.backup.store import (BadKey, ChunkDamaged, ChunkStore, DiskSource, StoreError,
                                    export_point, load_index, new_key_file, open_disk,
                                    read_key_file, verify, write_point)
from imagetool.backup.store.chunkstore import chunk_name
from imagetool.backup.store.points import index_name

CS = 64 * KiB
SIZE = 3 * MiB + 5 * KiB          # a short last chunk


@pytest.fixture
def image(tmp_path):
    """A raw image with data (one range not chunk-aligned), holes, and a
    qcow2 copy of it; returns (raw path, qcow2 path)."""
    raw = str(tmp_path / "disk.raw")
    make_raw(raw, SIZE, [(0, 200 * KiB), (1 * MiB + 1000, 300 * KiB), (SIZE - 3000, 3000)])
    qcow = str(tmp_path / "disk.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, qcow)
    return raw, qcow


def backup(store, path, disk_id="d1", vm="vm1", **kw):
    b = formats.open_image(path, "r")
    try:
        return write_point(store, vm, [DiskSource(disk_id, b, kw.pop("dirty", None))], **kw)
    finally:
        b.close()


def read_all(backend) -> bytes:
    buf = bytearray(backend.size)
    assert backend.read_into(0, memoryview(buf)) == backend.size
    return bytes(buf)


def test_full_point_reads_back_and_exports(store, image, tmp_path):
    raw, qcow = image
    ix = backup(store, qcow, ovf="<ovf/>", manifest={"vm_name": "web"})
    again = load_index(store, "vm1", ix.name)
    assert again.manifest == {"vm_name": "web"} and again.ovf == "<ovf/>"
    disk = open_disk(store, again, "d1")
    assert disk.size == SIZE
    assert read_all(disk) == open(raw, "rb").read()
    assert block_checksum.checksum(disk) == block_checksum.checksum_file(raw)
    for fmt in ("qcow2", "raw"):
        out = str(tmp_path / f"out-{fmt}")
        [path] = export_point(store, again, out, fmt)
        qemu_compare(raw, path, "raw", fmt)
        assert os.stat(path).st_mode & 0o077 == 0
    assert open(os.path.join(out, "vm.ovf")).read() == "<ovf/>"


def test_zero_chunks_are_not_stored_and_duplicates_once(store, tmp_path):
    raw = str(tmp_path / "a.raw")
    # Chunk 0 and chunk 2 hold the same bytes; chunk 1 is allocated zeros.
    data = os.urandom(CS)
    with open(raw, "wb") as f:
        f.write(data + bytes(CS) + data + b"\x07" * CS)
    ix = backup(store, raw)
    chunks = ix.disks[0].chunks
    assert chunks[1] is None and chunks[0] == chunks[2] and chunks[3] not in (None, chunks[0])
    stored = {i.name: i.size for i in store.storage.list("chunks/")}
    assert len(stored) == 2
    # The run of one byte is stored compressed; random bytes are not.
    assert stored[chunk_name(chunks[3])] < 1000
    assert stored[chunk_name(chunks[0])] == CS + 1
    assert ix.stats["written"] == sum(stored.values())
    # A second VM with the same disk stores nothing new.
    ix2 = backup(store, raw, vm="vm2")
    assert ix2.stats["written"] == 0 and len(list(store.storage.list("chunks/"))) == 2


def test_incremental_from_dirty_ranges(store, image, tmp_path):
    raw, _ = image
    parent = backup(store, raw)
    new = str(tmp_path / "new.raw")
    shutil.copy(raw, new)
    writes = [(10 * KiB, b"A" * 100),            # partly dirty chunk 0
              (2 * CS, b"B" * CS),                # one whole chunk
              (SIZE - 10, b"C" * 10)]             # the short last chunk
    with open(new, "r+b") as f:
        for off, data in writes:
            f.seek(off)
            f.write(data)
    before = {i.name for i in store.storage.list("chunks/")}
    dirty = [(off, off + len(data)) for off, data in writes]
    ix = backup(store, new, parent=parent, dirty=dirty)
    assert ix.parent == parent.name
    assert read_all(open_disk(store, load_index(store, "vm1", ix.name), "d1")) == \
        open(new, "rb").read()
    changed = [i for i, (a, b) in enumerate(zip(parent.disks[0].chunks, ix.disks[0].chunks))
               if a != b]
    last = len(ix.disks[0].chunks) - 1
    assert changed == [0, 2, last]
    assert len({i.name for i in store.storage.list("chunks/")} - before) == 3
    assert ix.stats["data"] == 2 * CS + SIZE - last * CS
    # The parent is intact.
    assert read_all(open_disk(store, parent, "d1")) == open(raw, "rb").read()


def test_incremental_zeroes_dirty_zeros_without_reading_them(store, image, tmp_path):
    raw, _ = image
    parent = backup(store, raw)
    new = str(tmp_path / "new.raw")
    shutil.copy(raw, new)
    with open(new, "r+b") as f:            # zeros over data, then data, in one chunk
        f.seek(0)
        f.write(bytes(100 * KiB) + b"D" * 100)
    dirty, zeros = [(0, 100 * KiB + 100)], [(0, 100 * KiB)]
    b = formats.open_image(new, "r")
    try:
        # Reading the zeroed range would fail: only the data is read.
        ix = write_point(store, "vm1", [DiskSource("d1", _Failing(b, 0, ok=(100 * KiB,)),
                                                   dirty, zeros=zeros)], parent=parent)
    finally:
        b.close()
    assert read_all(open_disk(store, ix, "d1")) == open(new, "rb").read()
    assert ix.stats["read"] == 100


def test_incremental_of_a_grown_disk(store, tmp_path):
    old, new = str(tmp_path / "old.raw"), str(tmp_path / "new.raw")
    make_raw(old, 2 * CS + 100, [(0, 2 * CS + 100)], seed=1)
    parent = backup(store, old)
    shutil.copy(old, new)
    with open(new, "r+b") as f:
        f.seek(4 * CS)
        f.write(b"grown")
    ix = backup(store, new, parent=parent, dirty=[])
    assert read_all(open_disk(store, ix, "d1")) == open(new, "rb").read()


def test_encrypted_repository(target, image, tmp_path):
    raw, qcow = image
    key = str(tmp_path / "key")
    new_key_file(key)
    assert os.stat(key).st_mode & 0o777 == 0o600
    store = ChunkStore.init(target.open(), chunk_size=CS, secret=read_key_file(key))
    ix = backup(store, qcow)
    plain = open(raw, "rb").read()
    # Ids are keyed: not the SHA-256 of the plaintext.
    import hashlib
    assert hashlib.sha256(plain[:CS]).hexdigest() not in ix.disks[0].chunks
    blob = store.storage.get(chunk_name(ix.disks[0].chunks[0]))
    assert plain[:4096] not in blob
    reopened = ChunkStore.open(target.open(), read_key_file(key))
    assert read_all(open_disk(reopened, load_index(reopened, "vm1", ix.name), "d1")) == plain
    other = str(tmp_path / "other")
    new_key_file(other)
    with pytest.raises(BadKey, match="wrong key for this repository$"):
        ChunkStore.open(target.open(), read_key_file(other))
    with pytest.raises(BadKey, match="is encrypted; give its --key-file$"):
        ChunkStore.open(target.open())


@pytest.mark.slow
def test_passphrase_repository(target):
    store = ChunkStore.init(target.open(), chunk_size=CS, secret=b"correct horse",
                            passphrase=True)
    assert store.config["encryption"]["kdf"]["name"] == "scrypt"
    ChunkStore.open(target.open(), b"correct horse")
    with pytest.raises(BadKey, match="wrong key"):
        ChunkStore.open(target.open(), b"wrong horse")


def test_key_given_for_plain_repository(target, store):
    with pytest.raises(BadKey, match="not encrypted; give no key"):
        ChunkStore.open(target.open(), b"k" * 32)


def test_init_refuses_an_existing_repository(target, store):
    with pytest.raises(StoreError, match="already a repository"):
        ChunkStore.init(target.open())


# --- hostile repositories -------------------------------------------------------

def test_tampered_chunk_is_refused_and_named(store, image):
    raw, _ = image
    ix = backup(store, raw)
    cid = ix.disks[0].chunks[0]
    blob = bytearray(store.storage.get(chunk_name(cid)))
    blob[-1] ^= 1
    store.storage.put(chunk_name(cid), bytes(blob))
    with pytest.raises(ChunkDamaged, match="content does not match its id"):
        read_all(open_disk(store, ix, "d1"))
    rep = verify(store)
    assert not rep.ok and rep.bad == 1 and rep.missing == 0
    [d] = rep.damaged
    assert (d.vm_id, d.name) == ("vm1", ix.name)
    assert d.problems[0].startswith(f"disk d1: 1 chunks ({CS} guest bytes from offset 0) "
                                    "lost: 0 missing, 1 damaged")


def test_tampered_encrypted_chunk_fails_authentication(target, image):
    store = ChunkStore.init(target.open(), chunk_size=CS, secret=b"k" * 32)
    ix = backup(store, image[0])
    cid = ix.disks[0].chunks[0]
    blob = bytearray(store.storage.get(chunk_name(cid)))
    blob[20] ^= 1
    store.storage.put(chunk_name(cid), bytes(blob))
    with pytest.raises(ChunkDamaged, match="authentication failed"):
        store.get_chunk(cid)
    # A valid chunk moved under another id fails too (its name is authenticated).
    other = ix.disks[0].chunks[-1]
    store.storage.put(chunk_name(other), store.storage.get(chunk_name(ix.disks[0].chunks[1])))
    with pytest.raises(ChunkDamaged, match="authentication failed"):
        store.get_chunk(other)


def test_missing_chunk_is_named(store, image):
    ix = backup(store, image[0])
    store.storage.delete(chunk_name(ix.disks[0].chunks[-1]))
    rep = verify(store)
    assert rep.missing == 1
    assert "1 missing, 0 damaged" in rep.damaged[0].problems[0]


@pytest.mark.parametrize("field,value,error", [
    ("chunk", "../x", "disk d1: chunk id '../x'"),
    ("disk_id", "../x", "disk id '../x'"),
    ("parent", "../x", "parent '../x'"),
    ("virtual_size", -1, "disk d1: virtual size -1"),
    ("virtual_size", 10 * MiB, "disk d1: chunk list does not cover its size"),
    ("vm_id", "vm2", "names another point"),
])
def test_hostile_index_is_refused(store, image, field, value, error):
    ix = backup(store, image[0])
    doc = ix.to_doc()
    if field == "chunk":
        doc["disks"][0]["chunks"][0] = value
    elif field in ("disk_id", "virtual_size"):
        doc["disks"][0][field] = value
    else:
        doc[field] = value
    store.put_doc(index_name("vm1", ix.name), doc)
    with pytest.raises(StoreError, match=re.escape(f"invalid index: {error}") + "$"):
        load_index(store, "vm1", ix.name)
    rep = verify(store)
    assert rep.damaged[0].problems[0].startswith("index unreadable:")


def test_index_naming_a_path_reads_nothing_outside(store, tmp_path):
    with pytest.raises(ChunkDamaged, match="invalid chunk id"):
        store.get_chunk("../../etc/passwd")


class _Failing:
    """A source that fails after some reads, as a dropped connection would."""

    def __init__(self, backend, after, ok=()):
        self.b, self.after, self.size, self.ok = backend, after, backend.size, ok

    def extents(self, context="zero"):
        return self.b.extents(context)

    def read_into(self, offset, buf):
        if offset >= self.after and offset not in self.ok:
            raise OSError("connection reset")
        return self.b.read_into(offset, buf)

    def clone(self):
        return self

    def close(self):
        pass


def test_a_failed_backup_leaves_no_point_and_no_lease(store, image):
    b = formats.open_image(image[0], "r")
    try:
        with pytest.raises(OSError, match="connection reset"):
            write_point(store, "vm1", [DiskSource("d1", _Failing(b, 1 * MiB))])
    finally:
        b.close()
    assert list(store.storage.list("points/")) == []
    assert list(store.storage.list("leases/")) == []
    assert verify(store).ok


class _Counting(_Failing):
    """A source that records every read as ``(offset, length)``."""

    def __init__(self, backend):
        super().__init__(backend, after=backend.size)
        self.reads = []

    def read_into(self, offset, buf):
        self.reads.append((offset, len(buf)))
        return super().read_into(offset, buf)


def test_adjacent_chunks_are_read_in_one_request(store, tmp_path):
    from imagetool.backup.store import write
    raw = str(tmp_path / "runs.raw")
    run = write.BATCH_BYTES // CS            # chunks per request
    # Data over 2.5 requests' worth of chunks, a hole of two chunks, then
    # one chunk's data starting mid-chunk (at a file-system block).
    data_end = (2 * run + run // 2) * CS
    make_raw(raw, data_end + 4 * CS, [(0, data_end), (data_end + 2 * CS + 8 * KiB, CS - 8 * KiB)])
    b = formats.open_image(raw, "r")
    try:
        src = _Counting(b)
        ix = write_point(store, "vm1", [DiskSource("d1", src)], workers=2)
    finally:
        b.close()
    assert sorted(src.reads) == [(0, run * CS), (run * CS, run * CS),
                                 (2 * run * CS, run // 2 * CS),
                                 (data_end + 2 * CS + 8 * KiB, CS - 8 * KiB)]
    assert read_all(open_disk(store, ix, "d1")) == open(raw, "rb").read()


def test_concurrent_backups_of_two_vms(store, image, tmp_path):
    import threading
    raw, qcow = image
    results, errors = {}, []

    def run(vm, path):
        try:
            results[vm] = backup(store.__class__.open(store.storage), path, vm=vm)
        except Exception as e:          # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f"vm{i}", p))
               for i, p in enumerate([raw, qcow, raw])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for vm, ix in results.items():
        assert read_all(open_disk(store, load_index(store, vm, ix.name), "d1")) == \
            open(raw, "rb").read()
    assert verify(store).ok
