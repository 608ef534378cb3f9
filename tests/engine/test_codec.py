"""The codec against documents in the engine's shapes (XML and JSON)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from imagetool.engine import codec
from imagetool.engine.entities import (Disk, DiskAttachment, DiskSnapshot, Host,
                                       ImageTransfer, Job, Snapshot,
                                       StorageDomain, Vm)
from imagetool.errors import EngineError

DISK_XML = b"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<disk href="/ovirt-engine/api/disks/123" id="123">
  <actions>
    <link href="/ovirt-engine/api/disks/123/reduce" rel="reduce"/>
    <link href="/ovirt-engine/api/disks/123/copy" rel="copy"/>
  </actions>
  <name>disk1</name>
  <description>a disk</description>
  <link href="/ovirt-engine/api/disks/123/permissions" rel="permissions"/>
  <link href="/ovirt-engine/api/disks/123/disksnapshots" rel="disksnapshots"/>
  <actual_size>196608</actual_size>
  <alias>disk1</alias>
  <backup>none</backup>
  <content_type>data</content_type>
  <format>cow</format>
  <image_id>456</image_id>
  <propagate_errors>false</propagate_errors>
  <provisioned_size>1073741824</provisioned_size>
  <qcow_version>qcow2_v3</qcow_version>
  <shareable>false</shareable>
  <sparse>true</sparse>
  <status>ok</status>
  <storage_type>image</storage_type>
  <total_size>196608</total_size>
  <wipe_after_delete>false</wipe_after_delete>
  <disk_profile href="/ovirt-engine/api/diskprofiles/789" id="789"/>
  <quota href="/ovirt-engine/api/datacenters/1/quotas/2" id="2"/>
  <storage_domains>
    <storage_domain href="/ovirt-engine/api/storagedomains/sd1" id="sd1"/>
    <storage_domain href="/ovirt-engine/api/storagedomains/sd2" id="sd2"/>
  </storage_domains>
</disk>
"""

TRANSFER_XML = b"""<image_transfer href="/ovirt-engine/api/imagetransfers/t1" id="t1">
  <actions>
    <link href="/ovirt-engine/api/imagetransfers/t1/resume" rel="resume"/>
    <link href="/ovirt-engine/api/imagetransfers/t1/cancel" rel="cancel"/>
    <link href="/ovirt-engine/api/imagetransfers/t1/finalize" rel="finalize"/>
    <link href="/ovirt-engine/api/imagetransfers/t1/extend" rel="extend"/>
    <link href="/ovirt-engine/api/imagetransfers/t1/pause" rel="pause"/>
  </actions>
  <active>false</active>
  <direction>upload</direction>
  <format>cow</format>
  <inactivity_timeout>60</inactivity_timeout>
  <phase>transferring</phase>
  <proxy_url>https://engine:54323/images/abc</proxy_url>
  <shallow>false</shallow>
  <timeout_policy>legacy</timeout_policy>
  <transfer_url>https://host:54322/images/abc</transfer_url>
  <transferred>0</transferred>
  <backup href="/ovirt-engine/api/vms/1/backups/b1" id="b1"/>
  <disk href="/ovirt-engine/api/disks/d1" id="d1"/>
  <host href="/ovirt-engine/api/hosts/h1" id="h1"/>
  <image id="i1"/>
</image_transfer>"""

# A 4.1-era transfer: signed ticket, proxy only, an image instead of a disk.
TRANSFER_41_XML = b"""<image_transfer href="/ovirt-engine/api/imagetransfers/t2" id="t2">
  <direction>download</direction>
  <phase>initializing</phase>
  <proxy_url>https://engine:54323/images</proxy_url>
  <signed_ticket>eyJzYWx0Ijo=</signed_ticket>
  <image id="i2"/>
</image_transfer>"""

SD_XML = b"""<storage_domains>
  <storage_domain href="/ovirt-engine/api/storagedomains/sd1" id="sd1">
    <name>data</name>
    <available>53687091200</available>
    <committed>2147483648</committed>
    <external_status>ok</external_status>
    <master>true</master>
    <storage>
      <address>10.0.0.1</address>
      <nfs_version>auto</nfs_version>
      <path>/exports/data</path>
      <type>nfs</type>
    </storage>
    <storage_format>v5</storage_format>
    <type>data</type>
    <used>10737418240</used>
    <data_centers><data_center href="/ovirt-engine/api/datacenters/dc1" id="dc1"/></data_centers>
  </storage_domain>
  <storage_domain href="/ovirt-engine/api/storagedomains/sd2" id="sd2">
    <name>iso</name>
    <status>unattached</status>
    <type>iso</type>
  </storage_domain>
</storage_domains>"""


def test_disk_xml_all_fields():
    d = codec.entity_from_tree(Disk, codec.decode(DISK_XML, "application/xml"))
    assert d.id == "123"
    assert d.href == "/ovirt-engine/api/disks/123"
    assert d.name == "disk1" and d.alias == "disk1" and d.description == "a disk"
    assert d.status == "ok" and d.format == "cow" and d.sparse is True
    assert d.provisioned_size == 1073741824
    assert d.actual_size == 196608 and d.total_size == 196608
    assert d.initial_size is None
    assert d.content_type == "data" and d.backup == "none"
    assert d.image_id == "456"
    assert d.storage_domain_ids == ("sd1", "sd2")
    assert d.storage_type == "image"


def test_disk_json_same_as_xml():
    doc = {
        "href": "/ovirt-engine/api/disks/123", "id": "123",
        "actions": {"link": [{"href": "/x", "rel": "copy"}]},
        "name": "disk1", "alias": "disk1", "description": "a disk",
        "actual_size": "196608", "backup": "none", "content_type": "data",
        "format": "cow", "image_id": "456", "provisioned_size": "1073741824",
        "sparse": "true", "status": "ok", "storage_type": "image", "total_size": "196608",
        "storage_domains": {"storage_domain": [{"href": "/a", "id": "sd1"},
                                               {"href": "/b", "id": "sd2"}]},
        "unknown_thing": {"nested": ["x"]},
    }
    from_json = codec.entity_from_tree(
        Disk, codec.decode(json.dumps(doc).encode(), "application/json"))
    from_xml = codec.entity_from_tree(Disk, codec.decode(DISK_XML, "application/xml"))
    assert from_json == from_xml


def test_json_native_types_accepted():
    doc = {"id": "1", "provisioned_size": 42, "sparse": False, "actual_size": 1.0}
    d = codec.entity_from_tree(
        Disk, codec.decode(json.dumps(doc).encode(), "application/json"))
    assert d.provisioned_size == 42 and d.sparse is False and d.actual_size == 1


def test_transfer_xml():
    t = codec.entity_from_tree(ImageTransfer, codec.decode(TRANSFER_XML, None))
    assert (t.id, t.phase, t.direction, t.format) == ("t1", "transferring", "upload", "cow")
    assert t.transfer_url == "https://host:54322/images/abc"
    assert t.proxy_url == "https://engine:54323/images/abc"
    assert t.inactivity_timeout == 60 and t.timeout_policy == "legacy"
    assert t.transferred == 0 and t.active is False and t.shallow is False
    assert (t.disk_id, t.host_id, t.image_id, t.backup_id) == ("d1", "h1", "i1", "b1")
    assert t.snapshot_id is None and t.signed_ticket is None


def test_transfer_41_shape():
    t = codec.entity_from_tree(ImageTransfer, codec.decode(TRANSFER_41_XML, None))
    assert t.signed_ticket == "eyJzYWx0Ijo="
    assert t.transfer_url is None and t.format is None
    assert t.image_id == "i2" and t.disk_id is None
    assert t.proxy_url == "https://engine:54323/images"


def test_storage_domain_collection():
    sds = codec.entities_from_tree(StorageDomain, codec.decode(SD_XML, None))
    assert [s.name for s in sds] == ["data", "iso"]
    data, iso = sds
    assert data.available == 53687091200 and data.used == 10737418240
    assert data.committed == 2147483648
    assert data.storage_type == "nfs" and data.type == "data" and data.master is True
    assert data.external_status == "ok" and data.status is None
    assert iso.status == "unattached" and iso.available is None


def test_collection_of_one_and_empty():
    one = b'<disks><disk id="a"><name>only</name></disk></disks>'
    assert [d.name for d in codec.entities_from_tree(Disk, codec.decode(one, None))] == ["only"]
    assert codec.entities_from_tree(Disk, codec.decode(b"<disks/>", None)) == []
    assert codec.entities_from_tree(Disk, codec.decode(b"{}", "application/json")) == []
    assert codec.entities_from_tree(Disk, codec.decode(b'{"disk": []}', "application/json")) == []


def test_single_storage_domain_ref_in_xml():
    doc = b'<disk id="a"><storage_domains><storage_domain id="only"/></storage_domains></disk>'
    assert codec.entity_from_tree(Disk, codec.decode(doc, None)).storage_domain_ids == ("only",)


def test_host_vm_job():
    host = codec.entity_from_tree(Host, codec.decode(b"""<host href="/h/1" id="1"><name>host1</name>
        <address>10.0.0.5</address><status>up</status><cluster id="c1"/></host>""", None))
    assert (host.name, host.address, host.status, host.cluster_id) == ("host1", "10.0.0.5", "up", "c1")
    vm = codec.entity_from_tree(Vm, codec.decode(b"""<vm href="/vms/1" id="1"><name>vm1</name>
        <memory>1073741824</memory><status>down</status><cluster id="c1"/>
        <template id="00000000-0000-0000-0000-000000000000"/>
        <initialization><configuration><type>ovf</type>
        <data>&lt;?xml version='1.0'?&gt;&lt;ovf:Envelope/&gt;</data></configuration></initialization>
        </vm>""", None))
    assert vm.name == "vm1" and vm.memory == 1 << 30 and vm.status == "down"
    assert vm.template_id == "00000000-0000-0000-0000-000000000000"
    assert vm.ovf == "<?xml version='1.0'?><ovf:Envelope/>"
    jobs = codec.entities_from_tree(Job, codec.decode(b"""<jobs><job href="/jobs/1" id="1">
        <description>Adding Disk</description><auto_cleared>true</auto_cleared>
        <external>false</external><start_time>2017-01-01T10:00:00.000+02:00</start_time>
        <end_time>2017-01-01T10:00:05.000+02:00</end_time><status>finished</status>
        <owner id="u1"/></job></jobs>""", None))
    assert jobs[0].status == "finished" and jobs[0].description == "Adding Disk"
    assert jobs[0].end_time == "2017-01-01T10:00:05.000+02:00"
    assert jobs[0].auto_cleared is True and jobs[0].external is False


def test_snapshot_and_disk_snapshot():
    snaps = codec.entities_from_tree(Snapshot, codec.decode(b"""<snapshots>
      <snapshot href="/vms/v/snapshots/s1" id="s1"><description>Active VM</description>
        <date>2017-01-01T10:00:00.000+02:00</date><persist_memorystate>false</persist_memorystate>
        <snapshot_status>ok</snapshot_status><snapshot_type>active</snapshot_type><vm id="v"/></snapshot>
      <snapshot href="/vms/v/snapshots/s2" id="s2"><description>My snapshot</description>
        <snapshot_status>locked</snapshot_status><snapshot_type>regular</snapshot_type><vm id="v"/></snapshot>
    </snapshots>""", None))
    assert [(s.id, s.snapshot_type, s.snapshot_status) for s in snaps] == [
        ("s1", "active", "ok"), ("s2", "regular", "locked")]
    assert snaps[0].date == "2017-01-01T10:00:00.000+02:00" and snaps[0].vm_id == "v"
    assert snaps[0].persist_memorystate is False
    ds = codec.entity_from_tree(DiskSnapshot, codec.decode(b"""<disk_snapshot href="/x" id="ds1">
      <name>disk1</name><actual_size>4096</actual_size><format>cow</format>
      <provisioned_size>1073741824</provisioned_size><status>ok</status>
      <disk id="d1"/><parent id="ds0"/><snapshot id="s2"/>
      <storage_domains><storage_domain id="sd1"/></storage_domains></disk_snapshot>""", None))
    assert (ds.id, ds.disk_id, ds.parent_id, ds.snapshot_id) == ("ds1", "d1", "ds0", "s2")
    assert ds.format == "cow" and ds.actual_size == 4096 and ds.provisioned_size == 1 << 30
    assert ds.storage_domain_ids == ("sd1",)


def test_disk_attachment():
    da = codec.entity_from_tree(DiskAttachment, codec.decode(b"""<disk_attachment href="/vms/v/diskattachments/d" id="d">
      <active>true</active><bootable>false</bootable><interface>virtio_scsi</interface>
      <logical_name>/dev/sda</logical_name><read_only>false</read_only>
      <disk id="d"/><vm id="v"/></disk_attachment>""", None))
    assert (da.disk_id, da.vm_id, da.interface) == ("d", "v", "virtio_scsi")
    assert da.active is True and da.bootable is False and da.read_only is False
    assert da.logical_name == "/dev/sda"


def test_fault_xml_json_and_failed_action():
    fault = codec.decode(b"<fault><reason>Operation Failed</reason>"
                         b"<detail>[Cannot remove Virtual Disk. Disk is locked.]</detail></fault>",
                         "application/xml")
    assert codec.parse_fault(fault) == ("Operation Failed",
                                        "[Cannot remove Virtual Disk. Disk is locked.]")
    fj = codec.decode(b'{"reason": "Not Found", "detail": "Entity not found: 1"}', "application/json")
    assert codec.parse_fault(fj) == ("Not Found", "Entity not found: 1")
    action = codec.decode(b"<action><status>failed</status><fault><reason>R</reason>"
                          b"<detail>D</detail></fault></action>", None)
    assert codec.parse_fault(action) == ("R", "D")


def test_api_info():
    tree = codec.decode(b"""<api><link href="/ovirt-engine/api/disks" rel="disks"/>
      <product_info><name>oVirt Engine</name><vendor>ovirt.org</vendor>
      <version><build>4</build><full_version>4.1.9.1-1.el7.centos</full_version>
      <major>4</major><minor>1</minor><revision>0</revision></version></product_info></api>""", None)
    info = codec.parse_api_info(tree)
    assert info.version == (4, 1) and info.full_version == "4.1.9.1-1.el7.centos"
    assert info.product_name == "oVirt Engine" and info.vendor == "ovirt.org"
    # Only a full_version string: read major/minor from it.
    tree = {"product_info": {"version": {"full_version": "4.5.4-1.el8"}}}
    assert codec.parse_api_info(tree).version == (4, 5)


def test_invalid_documents_raise_engine_error():
    with pytest.raises(EngineError, match="invalid XML"):
        codec.decode(b"<disk><name>x</disk>", "application/xml")
    with pytest.raises(EngineError, match="invalid JSON"):
        codec.decode(b"{nope", "application/json")
    with pytest.raises(EngineError):
        codec.entity_from_tree(Disk, "just text")


def test_to_xml_request_body():
    body = codec.to_xml("disk", {
        "id": None, "name": "a&b", "format": "cow", "provisioned_size": 1 << 30,
        "sparse": True, "initial_size": None,
        "storage_domains": {"storage_domain": [{"id": "sd1"}]},
    })
    root = ET.fromstring(body)
    assert root.tag == "disk" and root.attrib == {}
    assert root.findtext("name") == "a&b"
    assert root.findtext("format") == "cow"
    assert root.findtext("provisioned_size") == "1073741824"
    assert root.findtext("sparse") == "true"
    assert root.find("initial_size") is None
    sd = root.find("storage_domains/storage_domain")
    assert sd.get("id") == "sd1" and list(sd) == []
    assert codec.to_xml("action") == b"<action />"


def test_to_xml_repeats_lists_and_ids_as_attributes():
    body = codec.to_xml("image_transfer", {"disk": {"id": "d1"}, "direction": "download",
                                           "shallow": False})
    root = ET.fromstring(body)
    assert root.find("disk").attrib == {"id": "d1"}
    assert root.findtext("shallow") == "false"
    body = codec.to_xml("x", {"item": [{"id": "1"}, {"id": "2"}]})
    assert [e.get("id") for e in ET.fromstring(body).findall("item")] == ["1", "2"]
