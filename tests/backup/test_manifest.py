"""The manifest as a typed value: what a point writes is the document it
always wrote, and a value read back is the value written, in both
repository formats."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from backup_helpers import add_point

from imagetool import backup
from imagetool.backup.manifest import Manifest

VM = "3b1d2c8e-0000-4000-8000-000000000001"
DISK = "aaaaaaaa-0000-4000-8000-000000000001"
SIZE = 1 << 20

# The keys of manifest.json as the dict-built manifest wrote them.
TOP = {"format", "vm_id", "vm_name", "point", "time", "timestamp", "method", "mode",
       "parent", "engine", "bytes", "disks", "ovf"}
DISK_KEYS = {"disk_id", "name", "format", "sparse", "interface", "bootable", "backup",
             "virtual_size", "mode", "checksum", "bytes", "reason", "file", "backing",
             "sha256", "digests", "digests_sha256"}


def _points(tmp_path, n=2):
    repo = str(tmp_path / "repo")
    data = bytearray(os.urandom(SIZE))
    before = None
    for i in range(n):
        add_point(repo, VM, {DISK: (bytes(data), before)}, now=1.0e9 + i)
        before = bytes(data)
        data[70000 + i] ^= 0xFF
    return repo, backup.Repository(repo).points(VM)


def test_a_written_manifest_is_the_old_document_key_by_key(tmp_path):
    repo, (full, inc) = _points(tmp_path)
    path = inc.file("manifest.json")
    with open(path) as f:
        text = f.read()
    doc = json.loads(text)
    assert set(doc) == TOP
    assert set(doc["ovf"]) == {"file", "sha256"}
    [d] = doc["disks"]
    assert set(d) == DISK_KEYS
    assert set(d["checksum"]) == {"algorithm", "block_size", "value", "source"}
    assert (doc["format"], doc["vm_id"], doc["point"], doc["parent"], doc["mode"]) == \
        (1, VM, inc.name, full.name, "incremental")
    assert (d["disk_id"], d["file"], d["digests"], d["backing"], d["mode"], d["reason"]) == \
        (DISK, f"{DISK}.qcow2", f"{DISK}.digests", f"../{full.name}/{DISK}.qcow2",
         "incremental", None)
    # The value writes exactly these bytes again.
    assert json.dumps(inc.manifest.to_json(), indent=2, sort_keys=True) + "\n" == text


def test_from_json_of_to_json_is_the_same_value(tmp_path):
    repo, pts = _points(tmp_path, 3)
    backup.prune(repo, keep=2)      # a rewritten manifest: merged, parent gone
    for p in backup.Repository(repo).points(VM):
        m = p.manifest
        again = Manifest.from_json(json.loads(json.dumps(m.to_json())), "m", VM, p.name)
        assert again == m
    assert backup.Repository(repo).points(VM)[0].manifest.merged == [pts[0].name]


def test_a_chunk_point_records_the_same_facts_without_the_files(tmp_path):
    _, [full] = _points(tmp_path, 1)
    facts, metas = full.manifest.index_parts()
    assert "disks" not in facts and facts["ovf"] == full.manifest.ovf.to_json()
    index = SimpleNamespace(vm_id=VM, name=full.name, manifest=facts, disks=[
        SimpleNamespace(disk_id=m["disk_id"], virtual_size=m["virtual_size"], meta=m)
        for m in metas])
    again = Manifest.from_index(index, "points/x")
    assert again.disks[0].checksum == full.manifest.disks[0].checksum
    assert again.vm_id == VM and again.engine == full.manifest.engine
