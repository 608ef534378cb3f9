"""The OVF the engine gives with ``GET /vms/{id}?all_content=true`` and reads
back when a VM is added from a configuration (enough for an OVA: a
DiskSection whose ``fileRef`` is ``<disk-id>/<image-id>``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from imagetool.server.rest.router import Request, bad_request
from imagetool.server.rest.validate import check_id

BLANK = "00000000-0000-0000-0000-000000000000"


def build_ovf(req: Request, vm: dict) -> str:
    """A small OVF describing the VM and its disks (what an OVA needs)."""
    store = req.engine.store
    refs, disks_xml, items = [], [], []
    for i, att in enumerate(vm.get("attachments", [])):
        disk = store.get("disk", att["disk_id"])
        if disk is None:
            continue
        href = f"{disk['id']}/{disk['image_id']}"
        refs.append(f'<File ovf:href="{href}" ovf:id="{disk["image_id"]}" '
                    f'ovf:size="{disk["provisioned_size"]}" ovf:description="{escape(disk["name"])}"/>')
        fmt = ("http://www.gnome.org/~markmc/qcow-image-format.html" if disk["format"] == "cow"
               else "http://www.vmware.com/specifications/vmdk.html#sparse")
        disks_xml.append(
            f'<Disk ovf:diskId="{disk["image_id"]}" ovf:size="{-(-disk["provisioned_size"] // (1 << 30))}" '
            f'ovf:capacity="{disk["provisioned_size"]}" ovf:fileRef="{href}" '
            f'ovf:format="{fmt}" ovf:volume-format="{"COW" if disk["format"] == "cow" else "RAW"}" '
            f'ovf:disk-interface="{att.get("interface", "virtio_scsi").upper()}" '
            f'ovf:boot="{str(att.get("bootable", False)).lower()}" ovf:disk-alias="{escape(disk["name"])}" '
            f'ovf:disk_storage_type="IMAGE" ovf:cinder_volume_type=""/>')
        items.append(
            f"<Item><rasd:Caption>{escape(disk['name'])}</rasd:Caption>"
            f"<rasd:InstanceId>{disk['image_id']}</rasd:InstanceId>"
            f"<rasd:ResourceType>17</rasd:ResourceType>"
            f"<rasd:HostResource>{href}</rasd:HostResource>"
            f"<rasd:Parent>00000000-0000-0000-0000-000000000000</rasd:Parent>"
            f"<rasd:Template>00000000-0000-0000-0000-000000000000</rasd:Template>"
            f"<rasd:ApplicationList/><rasd:StorageId>{disk['sd_id']}</rasd:StorageId>"
            f"<rasd:StoragePoolId>{req.engine.datacenter_id}</rasd:StoragePoolId>"
            f"<rasd:CreationDate/><rasd:LastModified/><rasd:last_modified_date/>"
            f"<BootOrder>{i + 1 if att.get('bootable') else 0}</BootOrder></Item>")
    memory_mb = vm.get("memory", 1 << 30) >> 20
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" '
        'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" '
        'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ovf:version="4.5.0.0">'
        f"<References>{''.join(refs)}</References>"
        f'<Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info>{"".join(disks_xml)}</Section>'
        f'<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type">'
        f"<Name>{escape(vm['name'])}</Name><Description>{escape(vm.get('description') or '')}</Description>"
        f"<TemplateId>{BLANK}</TemplateId><TemplateName>Blank</TemplateName>"
        f"<VmType>1</VmType><ClusterName>Default</ClusterName>"
        f'<Section ovf:id="{vm["id"]}" ovf:required="false" xsi:type="ovf:OperatingSystemSection_Type">'
        f"<Info>Guest Operating System</Info><Description>{vm.get('os_type', 'other')}</Description></Section>"
        f'<Section xsi:type="ovf:VirtualHardwareSection_Type"><Info>1 CPU, {memory_mb} Memory</Info>'
        f"<Item><rasd:Caption>1 virtual cpu</rasd:Caption><rasd:ResourceType>3</rasd:ResourceType>"
        f"<rasd:num_of_sockets>{vm.get('cpus', 1)}</rasd:num_of_sockets><rasd:cpu_per_socket>1</rasd:cpu_per_socket>"
        f"<rasd:threads_per_cpu>1</rasd:threads_per_cpu></Item>"
        f"<Item><rasd:Caption>{memory_mb} MB of memory</rasd:Caption><rasd:ResourceType>4</rasd:ResourceType>"
        f"<rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:VirtualQuantity>{memory_mb}</rasd:VirtualQuantity></Item>"
        f"{''.join(items)}</Section></Content></ovf:Envelope>")


def ovf_disk_ids(data: str, kind: str = "ovf") -> tuple[str | None, list[str]]:
    """(VM name, disk ids) named by an OVF.

    ``kind`` "ovf" (this engine's own OVF): the disk id is the fileRef's
    first part. "ova" (the OVF of an OVA, oVirt ``OvfOvaWriter``): the
    fileRef is the image id and the disk id is ``Disk/@ovf:diskId``.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise bad_request(f"Cannot parse the OVF: {e}") from None
    name = None
    ids = []
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Name" and name is None:
            name = (el.text or "").strip() or None
        if tag == "Disk":
            attrs = {k.rsplit("}", 1)[-1]: v for k, v in el.attrib.items()}
            if kind == "ova":
                ref_ = attrs.get("diskId") or ""
            else:
                ref_ = attrs.get("fileRef") or attrs.get("diskId") or ""
            ids.append(ref_.split("/")[0])
    return name, [check_id(i, "OVF disk") for i in ids if i]
