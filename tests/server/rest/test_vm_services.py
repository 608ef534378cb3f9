"""VM-level services of the local engine, driven with the real ovirtsdk4 over
TLS: snapshot preview/commit/undo, snapshot disks, disk snapshots removed on
the storage-domain path, disk attachment update, disk sparsify, the data
center's storage domains and clusters, several hosts. Data is judged by
downloading through ovirt_imageio.client and comparing with qemu-img;
allocation by the volume files' blocks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from imagetool.server.local import LocalEngine
from helpers import qemu_compare as same
from helpers import sdk_vm_with_disk
from helpers import sdk_download as download
from helpers import sdk_finalize as finalize
from helpers import sdk_start_transfer as start_transfer
from helpers import MiB, api_request, make_pattern_image, qemu_img, qemu_io
from helpers import ENGINE_PASSWORD as PASSWORD

# Every test here starts engines or CLI processes: out of the quick loop.
pytestmark = pytest.mark.slow

sdk = pytest.importorskip("ovirtsdk4")
types = sdk.types
client = pytest.importorskip("ovirt_imageio.client")


# --- helpers ------------------------------------------------------------------









def disk_dir(engine, connection, disk_id):
    disk = connection.system_service().disks_service().disk_service(disk_id).get()
    return os.path.join(engine.data_dir, disk.storage_domains[0].id, "images", disk_id)


def active_volume(engine, connection, disk_id):
    disk = connection.system_service().disks_service().disk_service(disk_id).get()
    return os.path.join(disk_dir(engine, connection, disk_id), disk.image_id)


def check_all_volumes(engine, connection, disk_id):
    """qemu-img check every volume file of a disk; returns their names."""
    d = disk_dir(engine, connection, disk_id)
    vols = sorted(n for n in os.listdir(d) if "." not in n)
    for v in vols:
        info = json.loads(qemu_img("info", "--output=json", os.path.join(d, v)))
        if info["format"] == "qcow2":
            qemu_img("check", os.path.join(d, v))
    return vols


def fault(reply):
    status, _, body = reply
    text = body.decode()
    return status, text


@pytest.fixture
def vm_disk(connection, engine, tmp_path):
    """A VM with one uploaded qcow2 disk; yields (vm_service, disk, source image)."""
    with sdk_vm_with_disk(connection, engine, tmp_path, "") as (_, vm_service, disk, src):
        yield vm_service, disk, src


# --- snapshot preview / commit / undo --------------------------------------------

def _snapshot_then_write(connection, engine, tmp_path, vm_service, disk, src):
    snaps = vm_service.snapshots_service()
    snap = snaps.add(types.Snapshot(description="s1", persist_memorystate=False))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x7a 512k 256k", fmt="qcow2")
    after = str(tmp_path / "after.qcow2")
    download(connection, engine, after, disk_id=disk.id)
    res = subprocess.run(["qemu-img", "compare", after, src], capture_output=True)
    assert res.returncode == 1       # the write changed the disk
    return snaps, snap, after


def test_preview_then_undo_restores_the_active_state(connection, engine, tmp_path, vm_disk):
    vm_service, disk, src = vm_disk
    snaps, snap, after = _snapshot_then_write(connection, engine, tmp_path, vm_service, disk,
                                              src)
    vm_service.preview_snapshot(snapshot=types.Snapshot(id=snap.id), restore_memory=False)
    listed = {s.description: s for s in snaps.list()}
    assert listed["s1"].snapshot_status == types.SnapshotStatus.IN_PREVIEW
    assert listed["Active VM before the preview"].snapshot_type == types.SnapshotType.PREVIEW
    same(download(connection, engine, str(tmp_path / "preview.qcow2"), disk_id=disk.id), src)

    vm_service.undo_snapshot()
    assert sorted(s.description for s in snaps.list()) == ["Active VM", "s1"]
    assert snaps.snapshot_service(snap.id).get().snapshot_status == types.SnapshotStatus.OK
    same(download(connection, engine, str(tmp_path / "undone.qcow2"), disk_id=disk.id), after)
    # The preview layer is gone: the chain is the snapshot's layer and the old top.
    assert len(check_all_volumes(engine, connection, disk.id)) == 2


def test_preview_then_commit_keeps_the_snapshot_state(connection, engine, tmp_path, vm_disk):
    vm_service, disk, src = vm_disk
    snaps, snap, _ = _snapshot_then_write(connection, engine, tmp_path, vm_service, disk, src)
    s2 = snaps.add(types.Snapshot(description="s2", persist_memorystate=False))
    vm_service.preview_snapshot(snapshot=types.Snapshot(id=snap.id), restore_memory=False)
    vm_service.commit_snapshot()
    # The later snapshot and the set-aside layers are dropped for good.
    assert sorted(s.description for s in snaps.list()) == ["Active VM", "s1"]
    with pytest.raises(sdk.NotFoundError):
        snaps.snapshot_service(s2.id).get()
    same(download(connection, engine, str(tmp_path / "committed.qcow2"), disk_id=disk.id), src)
    assert len(check_all_volumes(engine, connection, disk.id)) == 2
    layers = connection.system_service().disks_service().disk_service(
        disk.id).disk_snapshots_service().list()
    assert len(layers) == 2


def test_preview_refuses_other_snapshot_work(connection, engine, tmp_path, vm_disk):
    vm_service, disk, src = vm_disk
    snaps = vm_service.snapshots_service()
    snap = snaps.add(types.Snapshot(description="p1", persist_memorystate=False))
    vm_service.preview_snapshot(snapshot=types.Snapshot(id=snap.id), restore_memory=False)
    with pytest.raises(sdk.Error, match="previewing a snapshot"):
        snaps.add(types.Snapshot(description="during", persist_memorystate=False))
    with pytest.raises(sdk.Error, match="previewing a snapshot"):
        snaps.snapshot_service(snap.id).remove()
    with pytest.raises(sdk.Error, match="previewing a snapshot"):
        vm_service.preview_snapshot(snapshot=types.Snapshot(id=snap.id))
    vm_service.undo_snapshot()
    with pytest.raises(sdk.Error, match="not previewing"):
        vm_service.undo_snapshot()
    with pytest.raises(sdk.Error, match="not previewing"):
        vm_service.commit_snapshot()


# --- snapshot disks, disk snapshots on the storage-domain path ----------------------

def test_snapshot_disk_get_and_sd_disk_snapshot_remove(connection, engine, tmp_path, vm_disk):
    vm_service, disk, src = vm_disk
    snaps = vm_service.snapshots_service()
    snap = snaps.add(types.Snapshot(description="sd1", persist_memorystate=False))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x33 0 64k", fmt="qcow2")
    expected = download(connection, engine, str(tmp_path / "exp.qcow2"), disk_id=disk.id)

    got = snaps.snapshot_service(snap.id).disks_service().disk_service(disk.id).get()
    layers = connection.system_service().disks_service().disk_service(
        disk.id).disk_snapshots_service().list()
    base = next(s for s in layers if s.parent is None)
    assert got.id == disk.id and got.image_id == base.id
    status, text = fault(api_request(
        engine, "GET", f"vms/{vm_service.get().id}/snapshots/{snap.id}/disks/{snap.id}"))
    assert status == 404 and "of snapshot" in text

    sd_id = disk.storage_domains[0].id
    sds = connection.system_service().storage_domains_service()
    dss = sds.storage_domain_service(sd_id).disk_snapshots_service()
    assert dss.snapshot_service(base.id).get().disk.id == disk.id
    dss.snapshot_service(base.id).remove()
    with pytest.raises(sdk.NotFoundError):
        dss.snapshot_service(base.id).get()
    assert check_all_volumes(engine, connection, disk.id) == [
        os.path.basename(active_volume(engine, connection, disk.id))]
    same(download(connection, engine, str(tmp_path / "merged.qcow2"), disk_id=disk.id),
         expected)
    # The snapshot lost its only disk layer, so it is gone too.
    assert [s.description for s in snaps.list()] == ["Active VM"]


def test_sd_disk_snapshot_remove_refuses_the_active_layer(connection, engine, vm_disk):
    vm_service, disk, _ = vm_disk
    sd_id = disk.storage_domains[0].id
    image_id = connection.system_service().disks_service().disk_service(disk.id).get().image_id
    status, text = fault(api_request(engine, "DELETE",
                                     f"storagedomains/{sd_id}/disksnapshots/{image_id}"))
    assert status == 409 and "active layer" in text
    other = connection.system_service().storage_domains_service().list(search="name=export")[0]
    status, text = fault(api_request(engine, "DELETE",
                                     f"storagedomains/{other.id}/disksnapshots/{image_id}"))
    assert status == 404


# --- disk attachment update -------------------------------------------------------------

def test_disk_attachment_update_extends_and_changes(connection, engine, tmp_path, vm_disk):
    vm_service, disk, src = vm_disk
    att_service = vm_service.disk_attachments_service().attachment_service(disk.id)
    att = att_service.update(types.DiskAttachment(
        bootable=False, interface=types.DiskInterface.VIRTIO,
        disk=types.Disk(provisioned_size=8 * MiB)))
    assert att.bootable is False and att.interface == types.DiskInterface.VIRTIO
    got = att_service.get()
    assert got.bootable is False and got.interface == types.DiskInterface.VIRTIO
    d = connection.system_service().disks_service().disk_service(disk.id).get()
    assert d.provisioned_size == 8 * MiB
    out = download(connection, engine, str(tmp_path / "grown.qcow2"), disk_id=disk.id)
    assert json.loads(qemu_img("info", "--output=json", out))["virtual-size"] == 8 * MiB
    # The old data is there and the new tail reads as zeros.
    res = subprocess.run(["qemu-img", "compare", out, src], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout    # compare treats the longer tail as zeros

    with pytest.raises(sdk.Error, match="cannot be reduced"):
        att_service.update(types.DiskAttachment(disk=types.Disk(provisioned_size=4 * MiB)))
    status, text = fault(api_request(
        engine, "PUT", f"vms/{vm_service.get().id}/diskattachments/{disk.id}",
        "<disk_attachment><interface>floppy</interface></disk_attachment>",
        {"Content-Type": "application/xml"}))
    assert status == 400 and "interface" in text
    assert att_service.get().interface == types.DiskInterface.VIRTIO


# --- sparsify -----------------------------------------------------------------------------

def _digest(path, size):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(size))
    return h.hexdigest()


def test_sparsify_raw_punches_holes_over_zeros(connection, engine, tmp_path):
    system = connection.system_service()
    disk = system.disks_service().add(types.Disk(
        name="sparse-raw", format=types.DiskFormat.RAW, provisioned_size=4 * MiB, sparse=True,
        storage_domains=[types.StorageDomain(name="data")]))
    path = active_volume(engine, connection, disk.id)
    with open(path, "r+b") as f:           # 3 MiB of written zeros, 1 MiB of data
        f.write(bytes(3 * MiB) + b"\x5a" * MiB)
        os.fsync(f.fileno())
    before = os.stat(path).st_blocks * 512
    digest = _digest(path, 4 * MiB)
    assert before >= 4 * MiB
    disk_service = system.disks_service().disk_service(disk.id)
    disk_service.sparsify()
    assert disk_service.get().status == types.DiskStatus.OK
    after = os.stat(path).st_blocks * 512
    assert after <= before - 3 * MiB
    assert _digest(path, 4 * MiB) == digest
    assert os.path.getsize(path) == 4 * MiB
    disk_service.remove()


def test_sparsify_qcow2_layer_keeps_guest_data(connection, engine, tmp_path, vm_disk):
    """Zeros written over a parent's data stay zeros (zero flag), the rest is freed."""
    vm_service, disk, src = vm_disk
    vm_service.snapshots_service().add(types.Snapshot(description="z", persist_memorystate=False))
    top = active_volume(engine, connection, disk.id)
    # 0x61 data lives at 0..64k in the parent: zero it in the top layer, and
    # write 1 MiB of zeros where the parent has nothing.
    qemu_io(top, "write -P 0 0 64k", "write -P 0 3M 960k", "write -P 0x44 2560k 64k", fmt="qcow2")
    expected = download(connection, engine, str(tmp_path / "exp.qcow2"), disk_id=disk.id)
    before = os.stat(top).st_blocks * 512
    connection.system_service().disks_service().disk_service(disk.id).sparsify()
    assert os.stat(top).st_blocks * 512 < before
    qemu_img("check", top)
    same(download(connection, engine, str(tmp_path / "got.qcow2"), disk_id=disk.id), expected)
    mapped = json.loads(qemu_img("map", "--output=json", "-f", "qcow2", top))
    data_in_top = [m for m in mapped if m["data"] and m["depth"] == 0]
    assert sum(m["length"] for m in data_in_top) == 64 * 1024   # only the 0x44 cluster


def test_sparsify_refuses_a_locked_disk(connection, engine, vm_disk):
    vm_service, disk, _ = vm_disk
    t = start_transfer(connection, "download", disk.id)
    try:
        status, text = fault(api_request(engine, "POST", f"disks/{disk.id}/sparsify",
                                         "<action/>", {"Content-Type": "application/xml"}))
        assert status == 409 and "locked" in text
    finally:
        finalize(connection, t)


# --- bad input: VMs and snapshots -------------------------------------------------------

UNKNOWN = "6f1b3c52-0000-4000-8000-000000000001"


def test_unknown_vm_and_snapshot_are_404(connection, engine, vm_disk):
    vm_service, disk, _ = vm_disk
    vm_id = vm_service.get().id
    body = f'<action><snapshot id="{UNKNOWN}"/></action>'
    xml = {"Content-Type": "application/xml"}
    status, text = fault(api_request(engine, "POST", f"vms/{UNKNOWN}/previewsnapshot", body, xml))
    assert status == 404 and "VM" in text
    status, text = fault(api_request(engine, "POST", f"vms/{vm_id}/previewsnapshot", body, xml))
    assert status == 404 and "snapshot" in text
    status, text = fault(api_request(engine, "POST", f"vms/{vm_id}/previewsnapshot",
                                     "<action/>", xml))
    assert status == 400 and "snapshot.id" in text
    status, text = fault(api_request(engine, "POST", "vms/not-a-uuid/commitsnapshot",
                                     "<action/>", xml))
    assert status == 400 and "ids are UUIDs" in text
    status, text = fault(api_request(engine, "GET", f"vms/{vm_id}/snapshots/{UNKNOWN}/disks"))
    assert status == 404
    # Nothing changed.
    assert [s.description for s in vm_service.snapshots_service().list()] == ["Active VM"]


def test_snapshot_of_vm_with_locked_disk_is_409_and_changes_nothing(connection, engine,
                                                                    vm_disk):
    vm_service, disk, _ = vm_disk
    before = check_all_volumes(engine, connection, disk.id)
    t = start_transfer(connection, "download", disk.id)
    try:
        with pytest.raises(sdk.Error) as e:
            vm_service.snapshots_service().add(types.Snapshot(description="locked"))
        assert e.value.code == 409 and "is locked" in str(e.value)
    finally:
        finalize(connection, t)
    assert [s.description for s in vm_service.snapshots_service().list()] == ["Active VM"]
    assert check_all_volumes(engine, connection, disk.id) == before


def test_removing_the_active_snapshot_is_refused(connection, engine, vm_disk):
    vm_service, disk, _ = vm_disk
    snaps = vm_service.snapshots_service()
    active = next(s for s in snaps.list() if s.snapshot_type == types.SnapshotType.ACTIVE)
    with pytest.raises(sdk.Error) as e:
        snaps.snapshot_service(active.id).remove()
    assert e.value.code == 409 and "active VM snapshot cannot be removed" in str(e.value)
    with pytest.raises(sdk.Error) as e:
        vm_service.preview_snapshot(snapshot=types.Snapshot(id=active.id))
    assert e.value.code == 409
    assert [s.description for s in snaps.list()] == ["Active VM"]


# --- clone from snapshot ------------------------------------------------------------------

def test_clone_vm_from_snapshot_copies_the_snapshot_state(connection, engine, tmp_path,
                                                         vm_disk):
    vm_service, disk, src = vm_disk
    snaps = vm_service.snapshots_service()
    snap = snaps.add(types.Snapshot(description="for-clone", persist_memorystate=False))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x7a 0 256k", fmt="qcow2")
    vms = connection.system_service().vms_service()
    clone = vms.add(types.Vm(name=f"clone-{tmp_path.name}"[:60],
                             snapshots=[types.Snapshot(id=snap.id)],
                             cluster=types.Cluster(name="Default")))
    clone_service = vms.vm_service(clone.id)
    try:
        atts = clone_service.disk_attachments_service().list()
        assert len(atts) == 1 and atts[0].disk.id != disk.id
        same(download(connection, engine, str(tmp_path / "clone.qcow2"),
                      disk_id=atts[0].disk.id), src)
        assert clone_service.get().status == types.VmStatus.DOWN
        with pytest.raises(sdk.Error) as e:
            vms.add(types.Vm(name="c2", snapshots=[types.Snapshot(id=UNKNOWN)],
                             cluster=types.Cluster(name="Default")))
        assert e.value.code == 404
        with pytest.raises(sdk.Error) as e:
            vms.add(types.Vm(name="c3", snapshots=[types.Snapshot(id=snap.id)],
                             cluster=types.Cluster(name="nosuchcluster")))
        assert e.value.code == 404 and "cluster" in str(e.value)
    finally:
        clone_service.remove()


# --- data center, cluster, hosts -----------------------------------------------------------

def test_datacenter_storage_domains_and_clusters(connection, engine):
    system = connection.system_service()
    dc = system.data_centers_service().list()[0]
    dc_service = system.data_centers_service().data_center_service(dc.id)
    attached = dc_service.storage_domains_service().list()
    assert {"data", "export"} <= {sd.name for sd in attached}
    assert all(sd.status == types.StorageDomainStatus.ACTIVE for sd in attached)
    one = dc_service.storage_domains_service().storage_domain_service(attached[0].id).get()
    assert one.id == attached[0].id
    clusters = dc_service.clusters_service().list()
    assert [c.name for c in clusters] == ["Default"]
    cluster = system.clusters_service().cluster_service(clusters[0].id).get()
    assert cluster.cpu.architecture == types.Architecture.X86_64
    assert dc_service.clusters_service().cluster_service(cluster.id).get().name == "Default"
    status, _ = fault(api_request(engine, "GET", f"datacenters/{UNKNOWN}/clusters"))
    assert status == 404
    assert system.clusters_service().list(search="Default")[0].id == cluster.id


@pytest.fixture(scope="module")
def three_hosts(tmp_path_factory):
    eng = LocalEngine(str(tmp_path_factory.mktemp("hosts")), password=PASSWORD, hosts=3)
    eng.start()
    con = sdk.Connection(url=eng.url, username="admin@internal", password=PASSWORD,
                         ca_file=eng.cafile)
    try:
        yield eng, con
    finally:
        con.close()
        eng.stop()


def test_several_hosts_each_an_up_entity(three_hosts):
    eng, con = three_hosts
    hosts = con.system_service().hosts_service().list()
    assert len(hosts) == 3 and len({h.id for h in hosts}) == 3
    assert len({h.name for h in hosts}) == 3
    assert all(h.status == types.HostStatus.UP for h in hosts)
    assert all(h.cluster.id == con.system_service().clusters_service().list()[0].id
               for h in hosts)
    # Stable across a restart of the engine on the same data dir.
    again = LocalEngine(eng.data_dir, password=PASSWORD, hosts=3)
    assert [h["id"] for h in again.server.hosts] == [h.id for h in hosts]
    again.server.store.close()


def test_transfer_reports_the_chosen_host_and_spreads(three_hosts, tmp_path):
    eng, con = three_hosts
    hosts = con.system_service().hosts_service().list()
    src = make_pattern_image(str(tmp_path / "s.qcow2"), "qcow2")
    disks = con.system_service().disks_service()
    ids = []
    for i in range(3):
        d = disks.add(types.Disk(name=f"h{i}", format=types.DiskFormat.COW,
                                 provisioned_size=4 * MiB,
                                 storage_domains=[types.StorageDomain(name="data")]))
        ids.append(d.id)
    chosen = hosts[2]
    t = start_transfer(con, "upload", ids[0], host=types.Host(id=chosen.id))
    assert t.host.id == chosen.id and t.host.name == chosen.name
    client.upload(src, t.transfer_url, eng.cafile)
    finalize(con, t)
    t = start_transfer(con, "download", ids[0], host=types.Host(name=hosts[1].name))
    assert t.host.id == hosts[1].id
    out = str(tmp_path / "out.qcow2")
    client.download(t.transfer_url, out, eng.cafile, fmt="qcow2")
    finalize(con, t)
    same(out, src)
    # Without a host, open transfers go to different hosts.
    open_ = [start_transfer(con, "download", i) for i in ids]
    try:
        assert len({t.host.id for t in open_}) == 3
    finally:
        for t in open_:
            finalize(con, t)
    with pytest.raises(sdk.Error) as e:
        start_transfer(con, "download", ids[0], host=types.Host(name="nosuchhost"))
    assert e.value.code == 404


def test_serve_refuses_zero_hosts(tmp_path):
    res = subprocess.run([sys.executable, "-m", "imagetool", "serve", "--data-dir",
                          str(tmp_path / "d"), "--hosts", "0"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "'--hosts': 0 is not in the range" in res.stderr
    assert not (tmp_path / "d").exists()
