"""Disks uploaded by imagetool take part in checkpoints (oVirt REST API:
Disk.backup, DiskBackup.INCREMENTAL), as the SDK's upload examples set it:
a qcow2 upload gets ``backup=incremental``, so the VM backup after a full
one copies only its dirty ranges; a raw one stays ``none`` (always full)."""

from __future__ import annotations

import pytest

from helpers import MiB, api_json, qemu_img
from backup_helpers import ready_backup

from imagetool.backup import engine_ops as ops
from imagetool.transfer.upload import upload_disk

pytestmark = pytest.mark.slow


def _upload(conn, tmp_path, fmt):
    path = str(tmp_path / f"src.{fmt}")
    qemu_img("create", "-f", fmt, path, str(4 * MiB))
    return upload_disk(conn, path, "data", name=f"up-{fmt}-{tmp_path.name}"[:40])


def _backup_modes(conn, vm_id, disk_ids, from_cp):
    b = ready_backup(conn, vm_id, disk_ids, from_cp, timeout=60)
    modes = {d.id: d.backup_mode for d in conn.backups.disks(vm_id, b.id)}
    assert ops.finalize_backup(conn, vm_id, b.id, timeout=60) == "succeeded"
    return b, modes


def test_qcow2_upload_is_backed_up_incrementally(conn, engine, tmp_path):
    cow = _upload(conn, tmp_path, "qcow2")
    raw = _upload(conn, tmp_path, "raw")
    status, body = api_json(engine, "GET", f"disks/{cow.id}")
    assert (status, body["format"], body["backup"]) == (200, "cow", "incremental")
    status, body = api_json(engine, "GET", f"disks/{raw.id}")
    assert (status, body["format"], body["backup"]) == (200, "raw", "none")

    vm = conn.vms.add(name=f"vm-{tmp_path.name}"[:40])
    conn.vms.attach_disk(vm.id, cow.id, bootable=True)
    conn.vms.attach_disk(vm.id, raw.id)
    first, modes = _backup_modes(conn, vm.id, [cow.id, raw.id], None)
    assert modes == {cow.id: "full", raw.id: "full"}
    _, modes = _backup_modes(conn, vm.id, [cow.id, raw.id], first.to_checkpoint_id)
    assert modes == {cow.id: "incremental", raw.id: "full"}


def test_raw_disk_with_incremental_backup_is_refused(engine):
    status, body = api_json(engine, "POST", "disks", {
        "name": "raw-incremental", "format": "raw", "provisioned_size": MiB,
        "backup": "incremental",
        "storage_domains": {"storage_domain": [{"name": "data"}]}})
    assert status == 409
    assert body["detail"] == ("[Cannot add Virtual Disk. Incremental backup is not "
                              "supported for RAW disks.]")
    status, body = api_json(engine, "GET", "disks?search=name%3Draw-incremental")
    assert status == 200 and not body.get("disk")
