"""Importing OVAs: a VMware-style DMTF OVA, templates, the local engine's REST side."""

from __future__ import annotations

import json
import os

import pytest

from helpers import MiB, api_request, qemu_img, qemu_io
from ova_fixtures import SD, VMWARE_OVF, make_vmware_ova

@pytest.mark.slow
@pytest.mark.parametrize("manifest", ["sha256", "sha1", None])
def test_vmware_ova_imports(conn, scratch, manifest):
    from imagetool import import_ova
    from imagetool.checksum import checksum_file
    from imagetool.transfer.disk_checksum import disk_checksum
    made = make_vmware_ova(scratch, manifest)
    name = f"web-{manifest}"
    r = import_ova(conn, made["ova"], SD, name=name)
    assert r.name == name and r.kind == "vm" and r.id
    [d] = r.disks
    assert d.member == "web-disk1.vmdk"
    expected = checksum_file(made["raw"], algorithm=d.checksum.algorithm)["checksum"]
    assert d.checksum.value == expected
    assert disk_checksum(conn, d.disk_id, algorithm=d.checksum.algorithm)["checksum"] == expected
    disk = conn.disks.get(d.disk_id)
    assert (disk.provisioned_size, disk.format, disk.status) == (6 * MiB, "cow", "ok")
    assert [a.disk_id for a in conn.vms.disk_attachments(r.id)] == [d.disk_id]
    conn.vms.remove(r.id)


def test_info_of_vmware_ova(cli, scratch):
    made = make_vmware_ova(scratch)
    code, out, err = cli("ova", "info", made["ova"], "--json", "--verify")
    assert code == 0, err
    info = json.loads(out)
    assert (info["dialect"], info["name"], info["cpus"], info["memory"]) == \
        ("dmtf", "web", 2, 2048 * MiB)
    [d] = info["disks"]
    assert (d["member"], d["format"], d["virtual_size"]) == ("web-disk1.vmdk", "vmdk", 6 * MiB)
    assert d["allocated_size"] == MiB + 64 * 1024
    assert [m["name"] for m in info["manifest_digests"]] == ["web.ovf", "web-disk1.vmdk"]
    assert info["nics"] == [{"name": "Network adapter 1", "network": "VM Network",
                             "model": "E1000", "mac": None}]


@pytest.mark.slow
def test_import_as_template_and_templates_cli(cli, conn, engine, scratch, monkeypatch):
    from imagetool import import_ova
    made = make_vmware_ova(scratch)
    r = import_ova(conn, made["ova"], SD, name="web-tpl", template=True)
    assert r.kind == "template"
    tid = r.id
    [d] = r.disks
    code, _, body = api_request(engine, "GET", f"/ovirt-engine/api/templates/{tid}/diskattachments")
    assert code == 200 and d.disk_id.encode() in body
    from helpers import ENGINE_PASSWORD
    from imagetool.server.local import LocalEngine
    pw = os.path.join(scratch, "pw")
    with open(pw, "w") as f:
        f.write(ENGINE_PASSWORD)
    for k, v in (("ENGINE_URL", engine.url), ("USERNAME", LocalEngine.username),
                 ("PASSWORD_FILE", pw), ("CAFILE", engine.cafile)):
        monkeypatch.setenv(f"IMAGETOOL_{k}", v)
    code, out, err = cli("templates", "list", "--json")
    assert code == 0, err
    names = [t["name"] for t in json.loads(out)]
    assert "Blank" in names and "web-tpl" in names
    code, out, err = cli("templates", "show", "web-tpl", "--json")
    assert code == 0 and json.loads(out)["disks"] == [d.disk_id]
    code, out, err = cli("templates", "remove", "web-tpl")
    assert code == 0, err
    code, out, err = cli("templates", "show", "web-tpl")
    assert code == 1 and "no template" in err
    assert [x.id for x in conn.disks.list() if x.id == d.disk_id] == []


@pytest.mark.slow
def test_template_from_vm_copies_disks(conn, engine, scratch):
    from imagetool import upload_disk
    from imagetool.checksum import checksum_file
    from imagetool.transfer.disk_checksum import disk_checksum
    src = os.path.join(scratch, "t.qcow2")
    qemu_img("create", "-f", "qcow2", src, "2M")
    qemu_io(src, "write -P 0x61 0 64k")
    disk = upload_disk(conn, src, SD, name="tplsrc")
    vm = conn.vms.add(name="tplsrc-vm")
    conn.vms.attach_disk(vm.id, disk.id)
    code, _, body = api_request(engine, "POST", "/ovirt-engine/api/templates",
                             f"<template><name>from-vm</name><vm><id>{vm.id}</id></vm></template>")
    assert code == 201, body
    import xml.etree.ElementTree as ET
    tid = ET.fromstring(body).get("id")
    code, _, body = api_request(engine, "GET", f"/ovirt-engine/api/templates/{tid}/diskattachments")
    new_id = ET.fromstring(body).find("disk_attachment").get("id")
    assert new_id != disk.id
    want = checksum_file(src)["checksum"]
    assert disk_checksum(conn, new_id)["checksum"] == want
    code, _, _ = api_request(engine, "DELETE", f"/ovirt-engine/api/templates/{tid}")
    assert code == 200
    code, _, _ = api_request(engine, "DELETE",
                          "/ovirt-engine/api/templates/00000000-0000-0000-0000-000000000000")
    assert code == 409


def test_vm_from_ova_configuration_names_disks_by_disk_id(conn, engine, scratch):
    """POST /vms with an ova configuration: Disk/@ovf:diskId names the disk."""
    from imagetool.ova.ovf import build_ovirt_ovf
    d = conn.disks.add(name="cfg", provisioned_size=MiB, storage_domain=SD)
    ovf = build_ovirt_ovf(vm_id="5b0e0f43-5d8c-4b39-9a41-0d6d6c8e2a01", name="cfg-vm",
                          disks=[{"disk_id": d.id, "image_id": d.image_id,
                                  "member_size": 0, "virtual_size": MiB}])
    from xml.sax.saxutils import escape
    body = (f"<vm><name>cfg-vm</name><cluster><name>Default</name></cluster>"
            f"<initialization><configuration><type>ova</type><data>{escape(ovf)}</data>"
            f"</configuration></initialization></vm>")
    code, _, text = api_request(engine, "POST", "/ovirt-engine/api/vms", body)
    assert code == 201, text
    import xml.etree.ElementTree as ET
    vm_id = ET.fromstring(text).get("id")
    assert [a.disk_id for a in conn.vms.disk_attachments(vm_id)] == [d.id]
    bad = body.replace("<type>ova</type>", "<type>vmx</type>").replace("cfg-vm", "cfg2")
    code, _, text = api_request(engine, "POST", "/ovirt-engine/api/vms", bad)
    assert code == 400 and b"Unknown configuration type" in text


@pytest.mark.slow
def test_import_flushes_as_it_copies(conn, scratch, monkeypatch):
    # As an upload does: the server can then hash flushed blocks for the
    # final checksum beside the copy, and a retry re-sends little.
    from imagetool import import_ova
    from imagetool.checksum import checksum_file
    from imagetool.imageio.backend import HttpBackend
    made = make_vmware_ova(scratch, None)
    flushes = []
    real_flush = HttpBackend.flush

    def counting_flush(self):
        flushes.append(1)
        return real_flush(self)

    monkeypatch.setattr(HttpBackend, "flush", counting_flush)
    r = import_ova(conn, made["ova"], SD, name="web-flushed", workers=1,
                   buffer_size=256 * 1024)
    [d] = r.disks
    # 1 MiB + 64 KiB of data in 256 KiB requests: a flush after each.
    assert len(flushes) >= 5
    assert d.checksum.value == checksum_file(made["raw"],
                                             algorithm=d.checksum.algorithm)["checksum"]
    conn.vms.remove(r.id)


@pytest.mark.slow
def test_dmtf_ova_keeps_memory_cpus_and_nic(conn, engine, scratch):
    """A DMTF OVF asking for 512 MiB, 2 CPUs and an E1000 NIC on "VM Network"
    becomes that VM (it was 1 GiB, 1 CPU, no NIC); the network is created."""
    import xml.etree.ElementTree as ET
    from imagetool import import_ova
    ovf = VMWARE_OVF.replace("2048MB of memory", "512MB of memory").replace(
        "<rasd:VirtualQuantity>2048<", "<rasd:VirtualQuantity>512<")
    made = make_vmware_ova(scratch, None, ovf=ovf)
    r = import_ova(conn, made["ova"], SD, name="web-512")
    _, _, body = api_request(engine, "GET", f"vms/{r.id}")
    vm = ET.fromstring(body)
    assert vm.findtext("memory") == str(512 * MiB)
    assert vm.findtext("cpu/topology/sockets") == "2"
    _, _, body = api_request(engine, "GET", f"vms/{r.id}/nics")
    [nic] = ET.fromstring(body).findall("nic")
    assert (nic.findtext("name"), nic.findtext("interface")) == ("Network adapter 1", "e1000")
    _, _, body = api_request(engine, "GET", nic.find("vnic_profile").get("href"))
    assert ET.fromstring(body).findtext("name") == "VM Network"
    conn.vms.remove(r.id)
