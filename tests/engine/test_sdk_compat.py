"""The codec against ovirtsdk4, the reference client, as a peer.

Documents written by ovirtsdk4's XML writers must read back with the same
values through our codec; request bodies written by our services must read
through ovirtsdk4's XML readers as the entities we meant.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import pytest

sdk_types = pytest.importorskip("ovirtsdk4.types")
from ovirtsdk4 import readers, writers  # noqa: E402
from ovirtsdk4.xml import XmlReader, XmlWriter  # noqa: E402

from fake_engine import PASSWORD, SD_ID, USERNAME, FakeEngine  # noqa: E402
from imagetool.engine import Connection, codec  # noqa: E402
from imagetool.engine.entities import (Disk, DiskAttachment, DiskSnapshot, Host,  # noqa: E402
                                       ImageTransfer, Job, Snapshot, StorageDomain, Vm)


def sdk_xml(writer, obj) -> bytes:
    w = XmlWriter(None, True)
    try:
        writer.write_one(obj, w)
        return w.string().encode()
    finally:
        w.close()


def sdk_read(reader, body: bytes):
    return reader.read_one(XmlReader(io.BytesIO(body)))


def test_disk_written_by_sdk():
    t = sdk_types
    doc = sdk_xml(writers.DiskWriter, t.Disk(
        id="d1", name="disk", alias="disk-alias", description="desc",
        format=t.DiskFormat.COW, provisioned_size=3 << 30, actual_size=12345,
        total_size=23456, initial_size=777, sparse=False, status=t.DiskStatus.LOCKED,
        content_type=t.DiskContentType.ISO, backup=t.DiskBackup.INCREMENTAL,
        image_id="img1", storage_type=t.DiskStorageType.IMAGE,
        storage_domains=[t.StorageDomain(id="sd1"), t.StorageDomain(id="sd2")]))
    d = codec.entity_from_tree(Disk, codec.decode(doc, None))
    assert (d.id, d.name, d.alias, d.description) == ("d1", "disk", "disk-alias", "desc")
    assert (d.format, d.status, d.content_type, d.backup) == ("cow", "locked", "iso", "incremental")
    assert (d.provisioned_size, d.actual_size, d.total_size, d.initial_size) == (
        3 << 30, 12345, 23456, 777)
    assert d.sparse is False and d.image_id == "img1" and d.storage_type == "image"
    assert d.storage_domain_ids == ("sd1", "sd2")


def test_image_transfer_written_by_sdk():
    t = sdk_types
    doc = sdk_xml(writers.ImageTransferWriter, t.ImageTransfer(
        id="t1", phase=t.ImageTransferPhase.FINALIZING_SUCCESS,
        direction=t.ImageTransferDirection.DOWNLOAD, format=t.DiskFormat.RAW,
        transfer_url="https://h/images/x", proxy_url="https://p/images/x",
        inactivity_timeout=90,
        timeout_policy=t.ImageTransferTimeoutPolicy.CANCEL, transferred=4096,
        active=True, shallow=True, disk=t.Disk(id="d1"), image=t.Image(id="i1"),
        snapshot=t.DiskSnapshot(id="s1"), host=t.Host(id="h1"), backup=t.Backup(id="b1")))
    x = codec.entity_from_tree(ImageTransfer, codec.decode(doc, None))
    assert (x.id, x.phase, x.direction, x.format) == ("t1", "finalizing_success", "download", "raw")
    # (ovirtsdk4 4.6 no longer models the 4.1 signed_ticket; see test_engine_codec.)
    assert (x.transfer_url, x.proxy_url, x.signed_ticket) == (
        "https://h/images/x", "https://p/images/x", None)
    assert (x.inactivity_timeout, x.timeout_policy, x.transferred) == (90, "cancel", 4096)
    assert x.active is True and x.shallow is True
    assert (x.disk_id, x.image_id, x.snapshot_id, x.host_id, x.backup_id) == (
        "d1", "i1", "s1", "h1", "b1")


def test_other_entities_written_by_sdk():
    t = sdk_types
    sd = codec.entity_from_tree(StorageDomain, codec.decode(sdk_xml(writers.StorageDomainWriter, t.StorageDomain(
        id="sd1", name="data", type=t.StorageDomainType.DATA,
        status=t.StorageDomainStatus.MAINTENANCE, external_status=t.ExternalStatus.OK,
        available=5, used=6, committed=7, master=True,
        storage=t.HostStorage(type=t.StorageType.NFS, address="a", path="/p"))), None))
    assert (sd.name, sd.type, sd.status, sd.external_status, sd.storage_type) == (
        "data", "data", "maintenance", "ok", "nfs")
    assert (sd.available, sd.used, sd.committed, sd.master) == (5, 6, 7, True)

    host = codec.entity_from_tree(Host, codec.decode(sdk_xml(writers.HostWriter, t.Host(
        id="h1", name="host", address="10.1.1.1", status=t.HostStatus.UP,
        cluster=t.Cluster(id="c1"))), None))
    assert (host.name, host.address, host.status, host.cluster_id) == ("host", "10.1.1.1", "up", "c1")

    vm = codec.entity_from_tree(Vm, codec.decode(sdk_xml(writers.VmWriter, t.Vm(
        id="v1", name="vm", description="d", status=t.VmStatus.DOWN, memory=1 << 30,
        cluster=t.Cluster(id="c1"), template=t.Template(id="tp"),
        initialization=t.Initialization(configuration=t.Configuration(
            type=t.ConfigurationType.OVF, data="<ovf:Envelope a='&amp;'/>")))), None))
    assert (vm.name, vm.status, vm.memory, vm.cluster_id, vm.template_id) == (
        "vm", "down", 1 << 30, "c1", "tp")
    assert vm.ovf == "<ovf:Envelope a='&amp;'/>"

    snap = codec.entity_from_tree(Snapshot, codec.decode(sdk_xml(writers.SnapshotWriter, t.Snapshot(
        id="s1", description="before", snapshot_status=t.SnapshotStatus.IN_PREVIEW,
        snapshot_type=t.SnapshotType.REGULAR, persist_memorystate=True, vm=t.Vm(id="v1"))), None))
    assert (snap.description, snap.snapshot_status, snap.snapshot_type, snap.vm_id) == (
        "before", "in_preview", "regular", "v1")
    assert snap.persist_memorystate is True

    ds = codec.entity_from_tree(DiskSnapshot, codec.decode(sdk_xml(writers.DiskSnapshotWriter, t.DiskSnapshot(
        id="l2", disk=t.Disk(id="d1"), parent=t.DiskSnapshot(id="l1"),
        snapshot=t.Snapshot(id="s1"), status=t.DiskStatus.OK, format=t.DiskFormat.COW,
        actual_size=10, provisioned_size=20, image_id="img",
        storage_domains=[t.StorageDomain(id="sd1")])), None))
    assert (ds.disk_id, ds.parent_id, ds.snapshot_id, ds.status, ds.format) == (
        "d1", "l1", "s1", "ok", "cow")
    assert (ds.actual_size, ds.provisioned_size, ds.image_id, ds.storage_domain_ids) == (
        10, 20, "img", ("sd1",))

    job = codec.entity_from_tree(Job, codec.decode(sdk_xml(writers.JobWriter, t.Job(
        id="j1", description="Uploading", status=t.JobStatus.FAILED, auto_cleared=False,
        external=True)), None))
    assert (job.description, job.status, job.auto_cleared, job.external) == (
        "Uploading", "failed", False, True)

    da = codec.entity_from_tree(DiskAttachment, codec.decode(sdk_xml(writers.DiskAttachmentWriter, t.DiskAttachment(
        id="d1", disk=t.Disk(id="d1"), vm=t.Vm(id="v1"), interface=t.DiskInterface.SATA,
        bootable=True, active=False, read_only=True, logical_name="/dev/sdb")), None))
    assert (da.disk_id, da.vm_id, da.interface, da.logical_name) == ("d1", "v1", "sata", "/dev/sdb")
    assert (da.bootable, da.active, da.read_only) == (True, False, True)


def test_collection_written_by_sdk():
    t = sdk_types
    w = XmlWriter(None, True)
    writers.DiskWriter.write_many([t.Disk(id="a", name="x"), t.Disk(id="b", name="y")], w)
    doc = w.string().encode()
    w.close()
    assert [(d.id, d.name) for d in codec.entities_from_tree(Disk, codec.decode(doc, None))] == [("a", "x"), ("b", "y")]


def _posted(engine: FakeEngine, suffix: str) -> bytes:
    return [r["body"] for r in engine.requests
            if r["method"] == "POST" and r["path"].endswith(suffix)][-1]


def test_our_request_bodies_read_by_sdk():
    engine = FakeEngine()
    with Connection("https://e", username=USERNAME, password=PASSWORD,
                    transport=engine.transport()) as conn:
        disk = conn.disks.add(name="up", provisioned_size=7 << 20, storage_domain="data",
                              format="qcow2", sparse=True, initial_size=3 << 20,
                              content_type="iso", backup="incremental",
                              disk_id="55555555-5555-5555-5555-555555555555",
                              description="from test")
        body = sdk_read(readers.DiskReader, _posted(engine, "/disks"))
        assert body.id == disk.id == "55555555-5555-5555-5555-555555555555"
        assert body.name == "up" and body.description == "from test"
        assert body.format == sdk_types.DiskFormat.COW
        assert body.provisioned_size == 7 << 20 and body.initial_size == 3 << 20
        assert body.sparse is True
        assert body.content_type == sdk_types.DiskContentType.ISO
        assert body.backup == sdk_types.DiskBackup.INCREMENTAL
        assert [sd.id for sd in body.storage_domains] == [SD_ID]

        conn.transfers.add(disk_id=disk.id, direction="download", format="raw",
                           inactivity_timeout=30, timeout_policy="pause", shallow=True,
                           host_id="h1", backup_id="b1")
        tr = sdk_read(readers.ImageTransferReader, _posted(engine, "/imagetransfers"))
        assert tr.disk.id == disk.id and tr.host.id == "h1" and tr.backup.id == "b1"
        assert tr.direction == sdk_types.ImageTransferDirection.DOWNLOAD
        assert tr.format == sdk_types.DiskFormat.RAW
        assert tr.inactivity_timeout == 30 and tr.shallow is True
        assert tr.timeout_policy == sdk_types.ImageTransferTimeoutPolicy.PAUSE

        t = conn.transfers.list()[0]
        conn.transfers.finalize(t.id)
        action = sdk_read(readers.ActionReader, _posted(engine, "/finalize"))
        assert isinstance(action, sdk_types.Action)


def test_action_reply_written_by_sdk_is_understood():
    t = sdk_types
    doc = sdk_xml(writers.ActionWriter, t.Action(
        status="failed", fault=t.Fault(reason="Operation Failed", detail="[Disk is locked]")))
    assert ET.fromstring(doc).tag == "action"
    tree = codec.decode(doc, "application/xml")
    assert codec.to_str(tree["status"]) == "failed"
    assert codec.parse_fault(tree) == ("Operation Failed", "[Disk is locked]")
