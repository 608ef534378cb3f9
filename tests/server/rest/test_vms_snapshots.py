"""VMs, disk attachments and snapshots with the real ovirtsdk4; data checked
by downloading through ovirt_imageio.client and comparing with qemu-img."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET

import pytest

from helpers import MiB, make_pattern_image, qemu_img, qemu_io, wait_for, wait_phase

sdk = pytest.importorskip("ovirtsdk4")
types = sdk.types
client = pytest.importorskip("ovirt_imageio.client")


def transfer(connection, direction, disk_id=None, snapshot_id=None, fmt="raw", shallow=None):
    service = connection.system_service().image_transfers_service()
    t = service.add(types.ImageTransfer(
        disk=types.Disk(id=disk_id) if disk_id else None,
        snapshot=types.DiskSnapshot(id=snapshot_id) if snapshot_id else None,
        direction=types.ImageTransferDirection(direction), format=types.DiskFormat(fmt),
        shallow=shallow))
    return wait_phase(connection, t.id, ["transferring"])


def finalize(connection, t):
    connection.system_service().image_transfers_service().image_transfer_service(t.id).finalize()
    t = wait_phase(connection, t.id, ["finished_success", "finished_failure"])
    assert t.phase == types.ImageTransferPhase.FINISHED_SUCCESS


def download(connection, engine, dst, disk_id=None, snapshot_id=None, fmt="qcow2",
             shallow=None):
    t = transfer(connection, "download", disk_id, snapshot_id, shallow=shallow)
    client.download(t.transfer_url, dst, engine.cafile, fmt=fmt)
    finalize(connection, t)
    return dst


def active_volume(engine, connection, disk_id):
    disk = connection.system_service().disks_service().disk_service(disk_id).get()
    return os.path.join(engine.data_dir, disk.storage_domains[0].id, "images", disk_id,
                        disk.image_id)


@pytest.fixture
def vm_with_disk(connection, engine, tmp_path):
    system = connection.system_service()
    src = make_pattern_image(str(tmp_path / "a.qcow2"), "qcow2")
    disk = system.disks_service().add(types.Disk(
        name="vmdisk", format=types.DiskFormat.COW, provisioned_size=4 * MiB,
        storage_domains=[types.StorageDomain(name="data")]))
    t = transfer(connection, "upload", disk.id)
    client.upload(src, t.transfer_url, engine.cafile)
    finalize(connection, t)
    vm = system.vms_service().add(types.Vm(
        name=f"vm-{tmp_path.name}", cluster=types.Cluster(name="Default"),
        template=types.Template(name="Blank")))
    vm_service = system.vms_service().vm_service(vm.id)
    vm_service.disk_attachments_service().add(types.DiskAttachment(
        disk=types.Disk(id=disk.id), interface=types.DiskInterface.VIRTIO_SCSI,
        bootable=True, active=True))
    yield vm, vm_service, disk, src
    vm_service.remove()


def test_vm_attachments_and_ovf(connection, vm_with_disk):
    vm, vm_service, disk, _ = vm_with_disk
    atts = vm_service.disk_attachments_service().list()
    assert [a.disk.id for a in atts] == [disk.id] and atts[0].bootable
    assert vm.name in [v.name for v in connection.system_service().vms_service().list()]
    full = vm_service.get(all_content=True)
    config = full.initialization.configuration
    assert config.type == types.ConfigurationType.OVF
    root = ET.fromstring(config.data)
    ns = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1/"}
    disks = root.findall(".//Disk", ns) or [e for e in root.iter() if e.tag.endswith("Disk")]
    file_refs = [d.get("{http://schemas.dmtf.org/ovf/envelope/1/}fileRef") for d in disks]
    assert file_refs == [f"{disk.id}/{disk.image_id}"]
    assert root.find(".//Name").text == vm.name


def test_follow_embeds_attachments_and_disks(vm_with_disk):
    vm, vm_service, disk, _ = vm_with_disk
    got = vm_service.get(follow="disk_attachments.disk")
    assert [a.disk.name for a in got.disk_attachments] == ["vmdisk"]
    assert got.disk_attachments[0].disk.provisioned_size == 4 * MiB


@pytest.mark.slow
def test_snapshot_add_list_remove_merges(connection, engine, tmp_path, vm_with_disk):
    vm, vm_service, disk, src = vm_with_disk
    snaps = vm_service.snapshots_service()
    snap = snaps.add(types.Snapshot(description="before-b", persist_memorystate=False))
    snap_service = snaps.snapshot_service(snap.id)
    wait_for(snap_service.get, lambda s: s.snapshot_status == types.SnapshotStatus.OK)
    listed = {s.description: s for s in snaps.list()}
    assert listed["before-b"].snapshot_type == types.SnapshotType.REGULAR
    assert listed["Active VM"].snapshot_type == types.SnapshotType.ACTIVE

    # Guest writes after the snapshot land in the new top layer.
    top = active_volume(engine, connection, disk.id)
    info = json.loads(qemu_img("info", "--output=json", top))
    assert info["format"] == "qcow2" and info["backing-filename"]
    qemu_io(top, "write -P 0x7a 512k 256k")
    expected = str(tmp_path / "expected.qcow2")
    shutil.copy(src, expected)
    qemu_io(expected, "write -P 0x7a 512k 256k")

    disk_service = connection.system_service().disks_service().disk_service(disk.id)
    layers = disk_service.disk_snapshots_service().list()
    assert len(layers) == 2
    base = next(s for s in layers if s.parent is None)
    assert next(s for s in layers if s.parent is not None).parent.id == base.id
    snap_disks = snaps.snapshot_service(snap.id).disks_service().list()
    assert [d.image_id for d in snap_disks] == [base.id]

    # The snapshot layer alone holds the data from before the write.
    compare(download(connection, engine, str(tmp_path / "layer.qcow2"), snapshot_id=base.id), src)
    compare(download(connection, engine, str(tmp_path / "now.qcow2"), disk_id=disk.id), expected)

    snap_service.remove()
    assert [s.description for s in snaps.list()] == ["Active VM"]
    assert len(disk_service.disk_snapshots_service().list()) == 1
    top = active_volume(engine, connection, disk.id)
    qemu_img("check", top)
    assert "backing-filename" not in json.loads(qemu_img("info", "--output=json", top))
    compare(download(connection, engine, str(tmp_path / "merged.qcow2"), disk_id=disk.id),
            expected)


@pytest.mark.slow
def test_snapshot_remove_middle_and_restore(connection, engine, tmp_path, vm_with_disk):
    vm, vm_service, disk, src = vm_with_disk
    snaps = vm_service.snapshots_service()
    s1 = snaps.add(types.Snapshot(description="s1"))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x11 0 128k")
    s2 = snaps.add(types.Snapshot(description="s2"))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x22 64k 64k")
    s3 = snaps.add(types.Snapshot(description="s3"))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x33 3M 64k")

    at_s3 = str(tmp_path / "at_s3.qcow2")
    shutil.copy(src, at_s3)
    qemu_io(at_s3, "write -P 0x11 0 128k", "write -P 0x22 64k 64k")
    now = str(tmp_path / "now.qcow2")
    shutil.copy(at_s3, now)
    qemu_io(now, "write -P 0x33 3M 64k")

    # Removing a middle snapshot merges its layer into the one above.
    snaps.snapshot_service(s2.id).remove()
    qemu_img("check", active_volume(engine, connection, disk.id))
    compare(download(connection, engine, str(tmp_path / "d1.qcow2"), disk_id=disk.id), now)

    # Restoring s3 drops the writes made after it.
    snaps.snapshot_service(s3.id).restore()
    compare(download(connection, engine, str(tmp_path / "d2.qcow2"), disk_id=disk.id), at_s3)
    assert sorted(s.description for s in snaps.list()) == ["Active VM", "s1", "s3"]
    snaps.snapshot_service(s1.id).remove()
    snaps.snapshot_service(s3.id).remove()
    top = active_volume(engine, connection, disk.id)
    assert "backing-filename" not in json.loads(qemu_img("info", "--output=json", top))
    compare(download(connection, engine, str(tmp_path / "d3.qcow2"), disk_id=disk.id), at_s3)


def test_restore_refused_for_a_locked_disk_keeps_the_other_disks(connection, engine,
                                                                 tmp_path, vm_with_disk):
    # Every disk is checked before any layer is dropped: a locked second
    # disk must not leave the first one's chain without its files.
    vm, vm_service, disk, _ = vm_with_disk
    other = connection.system_service().disks_service().add(types.Disk(
        name="second", format=types.DiskFormat.COW, provisioned_size=4 * MiB,
        storage_domains=[types.StorageDomain(name="data")]))
    vm_service.disk_attachments_service().add(types.DiskAttachment(
        disk=types.Disk(id=other.id), interface=types.DiskInterface.VIRTIO_SCSI, active=True))
    snaps = vm_service.snapshots_service()
    s1 = snaps.add(types.Snapshot(description="s1"))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x44 0 64k")
    before = download(connection, engine, str(tmp_path / "before.qcow2"), disk_id=disk.id)
    t = transfer(connection, "download", other.id)
    with pytest.raises(sdk.Error) as e:
        snaps.snapshot_service(s1.id).restore()
    assert e.value.code == 409 and "is locked" in str(e.value)
    finalize(connection, t)
    qemu_img("check", active_volume(engine, connection, disk.id))
    compare(download(connection, engine, str(tmp_path / "after.qcow2"), disk_id=disk.id),
            before)


def test_locked_disk_refuses_snapshot(connection, engine, vm_with_disk):
    vm, vm_service, disk, _ = vm_with_disk
    t = transfer(connection, "download", disk.id)
    with pytest.raises(sdk.Error) as e:
        vm_service.snapshots_service().add(types.Snapshot(description="nope"))
    assert e.value.code == 409 and "is locked" in str(e.value)
    finalize(connection, t)


def test_vm_from_ovf_requires_disks(connection, vm_with_disk):
    vm, vm_service, disk, _ = vm_with_disk
    ovf = vm_service.get(all_content=True).initialization.configuration.data
    vms = connection.system_service().vms_service()

    def from_ovf():
        return vms.add(types.Vm(name="from-ovf", cluster=types.Cluster(name="Default"),
                                initialization=types.Initialization(
                                    configuration=types.Configuration(
                                        type=types.ConfigurationType.OVF, data=ovf))))
    # The disk is the VM's own: a second VM from its OVF may not take it.
    with pytest.raises(sdk.Error) as e:
        from_ovf()
    assert e.value.code == 409 and "attached to a VM or template already" in str(e.value)
    atts = vm_service.disk_attachments_service()
    atts.attachment_service(disk.id).remove()
    copy = from_ovf()
    svc = vms.vm_service(copy.id)
    assert [a.disk.id for a in svc.disk_attachments_service().list()] == [disk.id]
    svc.remove(detach_only=True)
    atts.add(types.DiskAttachment(disk=types.Disk(id=disk.id), bootable=True, active=True,
                                  interface=types.DiskInterface.VIRTIO_SCSI))
    with pytest.raises(sdk.Error) as e:
        vms.add(types.Vm(name="broken", cluster=types.Cluster(name="Default"),
                         initialization=types.Initialization(configuration=types.Configuration(
                             type=types.ConfigurationType.OVF,
                             data=ovf.replace(disk.id, "11111111-2222-3333-4444-555555555555")))))
    assert e.value.code == 400 and "do not exist" in str(e.value)


def compare(a, b):
    assert "Images are identical" in qemu_img("compare", a, b)


@pytest.mark.slow
def test_remove_disk_snapshot_merges_that_layer(connection, engine, tmp_path, vm_with_disk):
    vm, vm_service, disk, src = vm_with_disk
    snaps = vm_service.snapshots_service()
    snaps.add(types.Snapshot(description="only"))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x44 2M 64k")
    expected = str(tmp_path / "expected.qcow2")
    shutil.copy(src, expected)
    qemu_io(expected, "write -P 0x44 2M 64k")
    layers = connection.system_service().disks_service().disk_service(disk.id) \
        .disk_snapshots_service()
    base = next(s for s in layers.list() if s.parent is None)
    top = next(s for s in layers.list() if s.parent is not None)
    with pytest.raises(sdk.Error) as e:
        layers.snapshot_service(top.id).remove()
    assert e.value.code == 409 and "active layer" in str(e.value)
    layers.snapshot_service(base.id).remove()
    assert [s.id for s in layers.list()] == [top.id]
    assert [s.description for s in snaps.list()] == ["Active VM"]
    compare(download(connection, engine, str(tmp_path / "d.qcow2"), disk_id=disk.id), expected)


@pytest.mark.slow
def test_snapshot_download_full_or_shallow(connection, engine, tmp_path, vm_with_disk):
    """A middle layer: guest data as of that snapshot, or (shallow) that layer alone."""
    vm, vm_service, disk, src = vm_with_disk
    snaps = vm_service.snapshots_service()
    snaps.add(types.Snapshot(description="s1"))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x55 1536k 64k")
    snaps.add(types.Snapshot(description="s2"))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x66 0 64k")
    layers = connection.system_service().disks_service().disk_service(disk.id) \
        .disk_snapshots_service().list()
    by_parent = {s.parent.id if s.parent else None: s for s in layers}
    middle = by_parent[by_parent[None].id]

    full = str(tmp_path / "full.qcow2")
    shutil.copy(src, full)
    qemu_io(full, "write -P 0x55 1536k 64k")
    compare(download(connection, engine, str(tmp_path / "m.qcow2"), snapshot_id=middle.id), full)

    alone = str(tmp_path / "alone.qcow2")
    qemu_img("create", "-f", "qcow2", alone, str(4 * MiB))
    qemu_io(alone, "write -P 0x55 1536k 64k")
    got = download(connection, engine, str(tmp_path / "s.qcow2"), snapshot_id=middle.id,
                   shallow=True)
    compare(got, alone)
    # Only that layer's cluster is allocated in the shallow download.
    mapping = json.loads(qemu_img("map", "--output=json", got))
    assert [(m["start"], m["length"]) for m in mapping if m["data"]] == [(1536 * 1024, 65536)]
