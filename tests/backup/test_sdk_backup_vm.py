"""The oVirt Python SDK's ``backup_vm.py`` example, run unmodified (only
its connection settings are given, through ``~/.config/ovirt.conf``)
against the local engine's VM backup API in ``full`` then ``incremental``
mode, and ``ovirt_imageio.client.download(..., incremental=True)`` on its
own: the files they write must be a qcow2 chain whose guest data at each
point is the disk's as the engine checksummed it then.

The example comes from the ``ovirt-engine-sdk-python`` sdist, fetched with
pip at test time into a cache ($IMAGETOOL_SDK_CACHE, else ~/.cache;
the sdk_examples fixture) and never kept in this repository; without the registry the
tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from helpers import ENGINE_PASSWORD, MiB, qemu_img, wait_phase
from backup_helpers import checkpoint_ids, engine_checksum, guest_io, make_vm, rand

from imagetool.checksum import checksum_file

sdk = pytest.importorskip("ovirtsdk4")
types = sdk.types
client = pytest.importorskip("ovirt_imageio.client")

pytestmark = pytest.mark.slow

ALG = "sha256"


@pytest.fixture
def backup_vm(sdk_examples, engine, tmp_path):
    """Run ``backup_vm.py ARGS`` with the engine's settings; returns stdout."""
    run_dir = tmp_path / "examples"
    shutil.copytree(sdk_examples, run_dir)
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    base = engine.url[:-len("/ovirt-engine/api")]
    (home / ".config" / "ovirt.conf").write_text(
        f"[engine]\nengine_url = {base}\nusername = admin@internal\n"
        f"password = {ENGINE_PASSWORD}\ncafile = {engine.cafile}\n")

    def run(*args):
        res = subprocess.run([sys.executable, str(run_dir / "backup_vm.py"), "-c", "engine",
                              *map(str, args)], cwd=run_dir, capture_output=True, text=True,
                             env=dict(os.environ, HOME=str(home)), timeout=300)
        assert res.returncode == 0, f"backup_vm.py failed:\n{res.stdout}\n{res.stderr}"
        return res.stdout
    return run


def checkpoint_of(out):
    [cp] = re.findall(r"Created checkpoint '([0-9a-f-]{36})'", out)
    return cp


def guest_sum(path, tmp_path):
    """Checksum of the guest data qemu-img reads through the chain."""
    flat = str(tmp_path / "flat.raw")
    qemu_img("convert", "-O", "raw", path, flat)
    try:
        return checksum_file(flat, format="raw", algorithm=ALG)["checksum"]
    finally:
        os.unlink(flat)


def chain_of(path):
    info = json.loads(qemu_img("info", "--output=json", "--backing-chain", path))
    for image in info:
        subprocess.run(["qemu-img", "check", image["filename"]], check=True,
                       capture_output=True)
    return info


def top_layer(path):
    """(data bytes, zero bytes) the top image itself holds, not its backing files."""
    m = json.loads(qemu_img("map", "--output=json", path))
    top = [e for e in m if e["depth"] == 0]
    return (sum(e["length"] for e in top if e["data"]),
            sum(e["length"] for e in top if not e["data"] and e["zero"]))


def test_backup_vm_example_full_then_incremental(conn, backup_vm, tmp_path):
    vm, (cow, raw) = make_vm(conn, [("cow", 24 * MiB), ("raw", 8 * MiB)])
    out_dir = tmp_path / "backups"
    out_dir.mkdir()
    guest_io(conn, cow, writes=[(0, rand(6 * MiB, 1)), (16 * MiB, rand(4 * MiB, 2))])
    guest_io(conn, raw, writes=[(MiB, rand(2 * MiB, 3))])
    sums0 = {d: engine_checksum(conn, d, ALG) for d in (cow, raw)}
    out = backup_vm("full", vm.id, "--backup-dir", out_dir)
    cp1 = checkpoint_of(out)
    assert "completed successfully" in out

    # Data, zeros over data, and discards: 1 MiB new data, 3 MiB zeroed.
    guest_io(conn, cow, writes=[(8 * MiB, rand(MiB, 4))], zeros=[(0, MiB)],
             discards=[(16 * MiB, 2 * MiB)])
    sums1 = {d: engine_checksum(conn, d, ALG) for d in (cow, raw)}
    assert sums1[cow] != sums0[cow]
    out = backup_vm("incremental", vm.id, "--from-checkpoint-uuid", cp1,
                    "--backup-dir", out_dir)
    cp2 = checkpoint_of(out)
    assert "Incremental backup not available for disk %r" % raw in out
    assert "Incremental backup not available for disk %r" % cow not in out

    files = sorted(os.listdir(out_dir))
    name = {os.path.basename(f).split(".", 1)[1]: f for f in files}
    assert set(name) == {f"{cp}.{d}.full.qcow2" for cp in (cp1, cp2) for d in (cow, raw)} \
        - {f"{cp2}.{cow}.full.qcow2"} | {f"{cp2}.{cow}.incremental.qcow2"}
    full = str(out_dir / name[f"{cp1}.{cow}.full.qcow2"])
    inc = str(out_dir / name[f"{cp2}.{cow}.incremental.qcow2"])

    chain = chain_of(inc)
    assert [c["format"] for c in chain] == ["qcow2", "qcow2"]
    assert chain[0]["backing-filename"] == os.path.basename(full)
    assert "backing-filename" not in chain[1]
    assert guest_sum(full, tmp_path) == sums0[cow]
    assert guest_sum(inc, tmp_path) == sums1[cow]
    # The incremental holds what changed (data and zeros), not the rest.
    assert sum(top_layer(inc)) == 4 * MiB
    for cp, sums in ((cp1, sums0), (cp2, sums1)):
        path = str(out_dir / name[f"{cp}.{raw}.full.qcow2"])
        assert len(chain_of(path)) == 1
        assert guest_sum(path, tmp_path) == sums[raw]

    assert checkpoint_ids(conn, vm.id) == [cp1, cp2]


def _sdk_backup(connection, vm_id, disk_ids, from_cp=None):
    backups = connection.system_service().vms_service().vm_service(vm_id).backups_service()
    b = backups.add(types.Backup(disks=[types.Disk(id=d) for d in disk_ids],
                                 from_checkpoint_id=from_cp))
    svc = backups.backup_service(b.id)
    for _ in range(600):
        b = svc.get()
        if b.phase == types.BackupPhase.READY:
            return svc, b
        assert b.phase != types.BackupPhase.FAILED
        time.sleep(0.05)
    raise AssertionError(f"backup still {b.phase}")


def _sdk_download(connection, engine, backup, disk_id, path, **kw):
    transfers = connection.system_service().image_transfers_service()
    t = transfers.add(types.ImageTransfer(
        disk=types.Disk(id=disk_id), backup=types.Backup(id=backup.id),
        direction=types.ImageTransferDirection.DOWNLOAD, format=types.DiskFormat.RAW))
    t = wait_phase(connection, t.id, ["transferring"])
    client.download(t.transfer_url, path, engine.cafile, **kw)
    transfers.image_transfer_service(t.id).finalize()
    t = wait_phase(connection, t.id, ["finished_success", "finished_failure"])
    assert t.phase == types.ImageTransferPhase.FINISHED_SUCCESS


def _sdk_finalize(svc):
    svc.finalize()
    for _ in range(600):
        b = svc.get()
        if b.phase == types.BackupPhase.SUCCEEDED:
            return
        assert b.phase != types.BackupPhase.FAILED
        time.sleep(0.05)
    raise AssertionError(f"backup still {b.phase}")


def test_imageio_client_incremental_download(conn, connection, engine, tmp_path):
    vm, (disk,) = make_vm(conn, [("cow", 16 * MiB)])
    guest_io(conn, disk, writes=[(0, rand(4 * MiB, 7)), (12 * MiB, rand(2 * MiB, 8))])
    sum0 = engine_checksum(conn, disk, ALG)
    svc, b = _sdk_backup(connection, vm.id, [disk])
    [d] = svc.disks_service().list()
    assert (d.id, d.backup_mode) == (disk, types.DiskBackupMode.FULL)
    full = str(tmp_path / "full.qcow2")
    _sdk_download(connection, engine, b, disk, full, fmt="qcow2")
    _sdk_finalize(svc)

    guest_io(conn, disk, writes=[(4 * MiB, rand(MiB, 9))], zeros=[(12 * MiB, MiB)])
    sum1 = engine_checksum(conn, disk, ALG)
    svc, b2 = _sdk_backup(connection, vm.id, [disk], from_cp=b.to_checkpoint_id)
    assert b2.from_checkpoint_id == b.to_checkpoint_id
    [d] = svc.disks_service().list()
    assert d.backup_mode == types.DiskBackupMode.INCREMENTAL
    inc = str(tmp_path / "inc.qcow2")
    _sdk_download(connection, engine, b2, disk, inc, incremental=True,
                  backing_file="full.qcow2", backing_format="qcow2")
    _sdk_finalize(svc)

    assert [c.get("backing-filename") for c in chain_of(inc)] == ["full.qcow2", None]
    assert guest_sum(full, tmp_path) == sum0
    assert guest_sum(inc, tmp_path) == sum1
    # New data copied; the zeroed range hides the older data below it.
    assert top_layer(inc) == (MiB, MiB)
