"""``backup create`` and ``backup restore`` between the local engine and a
chunk repository on a directory and on S3 (a real Ceph RGW, ``rgw.py``):
the restored disk is the original, byte for byte."""

from __future__ import annotations

import json

import pytest

from helpers import MiB, qemu_compare
from backup_helpers import guest_io, make_vm, rand

from imagetool.backup.store import ChunkStore, list_points

pytestmark = pytest.mark.slow


def test_backup_and_restore_through_the_repository(conn, cli, engine_env, tmp_path, target):
    ChunkStore.init(target.open(), chunk_size=MiB)
    where = ["--endpoint", target.endpoint] if target.endpoint else []
    vm, (d0,) = make_vm(conn, [("cow", 8 * MiB)])
    guest_io(conn, d0, writes=[(0, rand(3 * MiB, 1)), (6 * MiB, rand(MiB, 2))])
    images = []
    for i in range(2):
        if i:
            guest_io(conn, d0, writes=[(512 * 1024, rand(MiB, 3))])
        code, out, err = cli("backup", "create", target.url, vm.id, "--json", *where)
        assert code == 0, err
        [r] = json.loads(out)
        assert r["mode"] == ("incremental" if i else "full")
        path = str(tmp_path / f"disk-{i}.raw")
        assert cli("download", d0, path)[0] == 0
        images.append((r["point"], path))
    assert [n for _, n in list_points(ChunkStore.open(target.open()), vm.id)] == \
        [p for p, _ in images]
    for point, image in images:
        code, out, err = cli("backup", "restore", target.url, vm.name, "--point", point,
                             "--sd", "data", "--json", *where)
        assert code == 0, err
        restored = json.loads(out)
        [d] = restored["disks"]
        got = str(tmp_path / f"restored-{point}.raw")
        assert cli("download", d["disk_id"], got)[0] == 0
        qemu_compare(image, got)
        conn.vms.remove(restored["vm_id"])
    conn.vms.remove(vm.id)
