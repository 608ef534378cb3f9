"""The OVF the engine gives with ``GET /vms/{id}?all_content=true`` and reads
back when a VM is added from a configuration (enough for an OVA: a
DiskSection whose ``fileRef`` is ``<disk-id>/<image-id>``)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from imagetool import xmlsafe
from imagetool.ova import ovfvm
from imagetool.ova.ovfvm import OvfVm
from imagetool.ova.ovfvm_read import disk_ref, parse_vm_settings
from imagetool.units import MAX_DISK_BYTES, MAX_MEMORY_BYTES, scaled
from imagetool.server.domain import vmsettings
from imagetool.server.faults import bad_request, conflict
from imagetool.server.validate import check_id, shown

BLANK = "00000000-0000-0000-0000-000000000000"
OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1/"
_QCOW_URL = "http://www.gnome.org/~markmc/qcow-image-format.html"
_RAW_URL = "http://www.vmware.com/specifications/vmdk.html#sparse"


def build_ovf(engine, vm: dict) -> str:
    """A small OVF describing the VM and its disks (what an OVA needs)."""
    store = engine.store
    refs, disks_xml, items = [], [], []
    for i, att in enumerate(vm.get("attachments", [])):
        disk = store.get("disk", att["disk_id"])
        if disk is None:
            continue
        href = _a(f"{disk['id']}/{disk['image_id']}")
        refs.append(f'<File ovf:href="{href}" ovf:id="{_a(disk["image_id"])}" '
                    f'ovf:size="{_a(disk["provisioned_size"])}" '
                    f'ovf:description="{_a(disk["name"])}"/>')
        fmt = _QCOW_URL if disk["format"] == "cow" else _RAW_URL
        disks_xml.append(
            f'<Disk ovf:diskId="{_a(disk["image_id"])}" '
            f'ovf:size="{-(-disk["provisioned_size"] // (1 << 30))}" '
            f'ovf:capacity="{_a(disk["provisioned_size"])}" ovf:fileRef="{href}" '
            f'ovf:format="{fmt}" ovf:volume-format="{"COW" if disk["format"] == "cow" else "RAW"}" '
            f'ovf:disk-interface="{_a(att.get("interface", "virtio_scsi").upper())}" '
            f'ovf:boot="{str(att.get("bootable", False)).lower()}" '
            f'ovf:disk-alias="{_a(disk["name"])}" '
            f'ovf:disk_storage_type="IMAGE" ovf:cinder_volume_type=""/>')
        items.append(_drive_item(disk, disk["image_id"], vmsettings.boot_order(att, i),
                                 engine.datacenter_id, att.get("active", True)))
    return _envelope(vm, refs, disks_xml, items, vmsettings.settings_of(store, vm))


def _drive_item(disk: dict, vol_id: str, boot_order: int, pool_id: str,
                plugged: bool = True) -> str:
    """The VirtualHardwareSection item of a disk whose active volume is ``vol_id``."""
    return (f"<Item><rasd:Caption>{escape(disk['name'])}</rasd:Caption>"
            f"<rasd:InstanceId>{escape(vol_id)}</rasd:InstanceId>"
            f"<rasd:ResourceType>17</rasd:ResourceType>"
            f"<rasd:HostResource>{escape(disk['id'])}/{escape(vol_id)}</rasd:HostResource>"
            f"<rasd:Parent>{BLANK}</rasd:Parent><rasd:Template>{BLANK}</rasd:Template>"
            f"<rasd:ApplicationList/><rasd:StorageId>{escape(disk['sd_id'])}</rasd:StorageId>"
            f"<rasd:StoragePoolId>{escape(pool_id)}</rasd:StoragePoolId>"
            f"<rasd:CreationDate/><rasd:LastModified/><rasd:last_modified_date/>"
            f"<BootOrder>{int(boot_order)}</BootOrder>"
            f"<IsPlugged>{str(bool(plugged)).lower()}</IsPlugged></Item>")


def _envelope(vm: dict, refs: list[str], disks_xml: list[str], items: list[str],
              settings: OvfVm, cluster: str = "Default", snapshots: str = "") -> str:
    """The OVF document around its files, disks and drive items (XML the
    callers built, every value in it escaped), with the VM's ``settings``
    (imagetool.ova.ovfvm, which escapes what it writes); ``cluster`` is
    plain text, escaped here like every value of ``vm``: this OVF is read
    back by ``POST /vms``."""
    memory_mb = int(vm.get("memory", 1 << 30)) >> 20
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<ovf:Envelope xmlns:ovf="{OVF_NS}" '
        'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" '
        'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xmlns:ovirt="{ovfvm.OVIRT_NS}" ovf:version="4.5.0.0">'
        f"<References>{''.join(refs)}</References>"
        f'<Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info>'
        f'{"".join(disks_xml)}</Section>'
        f'<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type">'
        f"<Name>{escape(vm['name'])}</Name>"
        f"<Description>{escape(vm.get('description') or '')}</Description>"
        f"{ovfvm.vm_elements(settings)}"
        f"<TemplateId>{BLANK}</TemplateId><TemplateName>Blank</TemplateName>"
        f"<VmType>1</VmType><ClusterName>{escape(cluster)}</ClusterName>"
        f"{ovfvm.os_section(settings, vm['id'], ova=False)}"
        f'<Section xsi:type="ovf:VirtualHardwareSection_Type">'
        f"<Info>{(settings.sockets or 1) * (settings.cores or 1) * (settings.threads or 1)} "
        f"CPU, {memory_mb} Memory</Info>"
        f"{ovfvm.cpu_memory_items(settings)}"
        f"{''.join(items)}{ovfvm.nic_items(settings)}</Section>{snapshots}</Content>"
        "</ovf:Envelope>")


def ovf_disk_ids(data: str, kind: str = "ovf") -> tuple[str | None, list[str]]:
    """(VM name, disk ids) named by an OVF.

    ``kind`` "ovf" (this engine's own OVF): the disk id is the fileRef's
    first part. "ova" (the OVF of an OVA, oVirt ``OvfOvaWriter``): the
    fileRef is the image id and the disk id is ``Disk/@ovf:diskId``.
    """
    try:
        root = xmlsafe.parse(data)
    except xmlsafe.XmlRefused as e:
        raise bad_request(f"Cannot read the OVF: {e}") from None
    name = None
    ids = []
    listed = _disk_section_disks(root)
    for el in root.iter():
        tag = _local(el.tag)
        if tag == "Name" and name is None:
            name = (el.text or "").strip() or None
        if tag == "Disk":
            attrs = {_local(k): v for k, v in el.attrib.items()}
            if id(el) not in listed:
                raise bad_request("Cannot add from the OVF: a Disk element outside the "
                                  "DiskSection (disk "
                                  f"{shown(attrs.get('diskId') or attrs.get('fileRef') or '', 100)})")
            ids.append(disk_ref(attrs, kind))
    # An export domain's OVF names each disk once per volume of its chain.
    return name, list(dict.fromkeys(check_id(i, "OVF disk") for i in ids if i))


def _disk_section_disks(root: ET.Element) -> set[int]:
    """``id()`` of the Disk elements of the OVF's DiskSection (``DiskSection``
    or ``Section xsi:type="ovf:DiskSection_Type"``), the only ones that
    describe the VM's disks (DMTF DSP0243)."""
    out = set()
    for sec in root.iter():
        tag = _local(sec.tag)
        xsi_type = next((v for k, v in sec.attrib.items() if _local(k) == "type"), "")
        if tag == "DiskSection" or (tag == "Section" and xsi_type.endswith("DiskSection_Type")):
            out.update(id(c) for c in sec if _local(c.tag) == "Disk")
    return out


def check_unowned(engine, disk_ids: list[str], action: str) -> None:
    """409 when a disk a new VM or template would get (named by its OVF or
    its attachments) is attached to a VM or template already: removing the
    new one would delete that disk with it.
    """
    owners = {}
    for kind in ("vm", "template"):
        for owner in engine.store.list(kind):
            for a in owner.get("attachments", []):
                owners.setdefault(a["disk_id"], f"{kind} {owner['name']}")
    busy = [f"{d} ({owners[d]})" for d in disk_ids if d in owners]
    if busy:
        raise conflict(action, f"Disks {', '.join(busy)} are attached to a VM or "
                               "template already; a new one gets only disks of its own.")


# Attribute values (and text), escaped as every value an OVF writer puts in.
_a = xmlsafe.text


def build_export_ovf(vm: dict, disks: list[dict], settings: OvfVm,
                     cluster_name: str = "Default") -> str:
    """The OVF the engine writes to an export domain (``OvfOvirtWriter`` shape).

    ``disks``: per disk ``{"disk", "attachment", "volumes", "snapshots"}``
    with ``volumes`` the exported chain, base first, each ``{"id",
    "parent_id", "format", "size", "snapshot_id"}``; ``snapshots`` are the
    VM's snapshots kept by the export (none after ``discard_snapshots``).
    Every volume is a ``File`` ``<disk-id>/<vol-id>`` and a ``Disk`` whose
    ``ovf:diskId`` is the volume id, ``ovf:parentRef`` its parent and
    ``ovf:vm_snapshot_id`` the snapshot it belongs to, as in the oVirt
    engine's OVF writer; the drive items name the active volumes only.
    """
    refs, disk_xml, items = [], [], []
    snapshots: dict[str, dict] = {}
    for i, entry in enumerate(disks):
        disk, att = entry["disk"], entry["attachment"]
        for s in entry.get("snapshots", []):
            snapshots[s["id"]] = s
        for vol in entry["volumes"]:
            href = f"{disk['id']}/{vol['id']}"
            gib = -(-disk["provisioned_size"] // (1 << 30))
            refs.append(f'<File ovf:href="{_a(href)}" ovf:id="{_a(vol["id"])}" '
                        f'ovf:size="{_a(disk["provisioned_size"])}" '
                        f'ovf:description="{_a(disk["name"])}" ovf:disk_storage_type="IMAGE" '
                        f'ovf:cinder_volume_type=""/>')
            parent = f"{disk['id']}/{vol['parent_id']}" if vol.get("parent_id") else ""
            cow = vol["format"] == "cow"
            disk_xml.append(
                f'<Disk ovf:diskId="{_a(vol["id"])}" ovf:size="{gib}" ovf:actual_size="{gib}" '
                f'ovf:capacity="{_a(disk["provisioned_size"])}" '
                f'ovf:vm_snapshot_id="{_a(vol.get("snapshot_id") or vm["active_snapshot_id"])}" '
                f'ovf:parentRef="{_a(parent)}" ovf:fileRef="{_a(href)}" '
                f'ovf:format="{_QCOW_URL if cow else _RAW_URL}" '
                f'ovf:volume-format="{"COW" if cow else "RAW"}" '
                f'ovf:volume-type="{"Sparse" if disk.get("sparse", True) else "Preallocated"}" '
                f'ovf:disk-interface="{_a(att.get("interface", "virtio_scsi").upper())}" '
                f'ovf:read-only="false" ovf:shareable="false" '
                f'ovf:boot="{str(bool(att.get("bootable"))).lower()}" ovf:pass-discard="false" '
                f'ovf:incremental-backup="{str(disk.get("backup") == "incremental").lower()}" '
                f'ovf:disk-alias="{_a(disk["name"])}" '
                f'ovf:disk-description="{_a(disk.get("description") or "")}" '
                f'ovf:wipe-after-delete="false"/>')
        top = entry["volumes"][-1]
        items.append(_drive_item(disk, top["id"], vmsettings.boot_order(att, i), BLANK,
                                 att.get("active", True)))
    snaps_xml = [
        f'<Snapshot ovf:id="{_a(vm["active_snapshot_id"])}"><Type>ACTIVE</Type>'
        f"<Description>Active VM</Description><CreationDate/></Snapshot>"]
    for s in snapshots.values():
        snaps_xml.append(f'<Snapshot ovf:id="{_a(s["id"])}"><Type>REGULAR</Type>'
                         f"<Description>{escape(s['description'])}</Description>"
                         f"<CreationDate>{escape(str(s.get('date') or ''))}</CreationDate>"
                         "</Snapshot>")
    return _envelope(vm, refs, disk_xml, items, settings, cluster_name,
                     f'<Section xsi:type="ovf:SnapshotsSection_Type">{"".join(snaps_xml)}</Section>')


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _number(value: str | None) -> bool:
    """A non-negative integer of at most 20 digits (sizes in an OVF)."""
    return bool(value) and re.fullmatch(r"\d{1,20}", value) is not None


def _capacity(attrs: dict) -> int:
    """Bytes of an export OVF's Disk: ``ovf:capacity`` (bytes unless its
    units say otherwise), else ``ovf:size`` (GiB); at most 8 TiB."""
    if attrs.get("capacity"):
        value, units = attrs["capacity"], attrs.get("capacityAllocationUnits")
    else:
        value, units = attrs.get("size") or "1", "byte * 2^30"
    if not _number(value):
        raise ValueError(f"disk capacity {value[:24]!r} is not a number")
    return scaled(int(value), units, MAX_DISK_BYTES)


def parse_export_ovf(text: str) -> dict:
    """What an export domain's OVF says about a VM, checked.

    Returns ``{"id", "name", "description", "memory", "os_type", "disks",
    "snapshots", "settings"}`` (``settings``: imagetool.ova.ovfvm.OvfVm): ``disks`` maps a disk id to ``{"alias", "description",
    "interface", "bootable", "format" (of the base), "sparse", "capacity",
    "volumes"}`` with ``volumes`` the chain base first (``id``,
    ``parent_id``, ``format``, ``snapshot_id``); ``snapshots`` are the
    regular ones. Every id must be a UUID and every chain must link up, else
    ValueError (the OVF comes from a directory other tools write too).
    """
    try:
        root = xmlsafe.parse(text)
    except xmlsafe.XmlRefused as e:
        raise ValueError(f"the OVF is refused: {e}") from None
    out: dict = {"id": None, "name": None, "description": "", "memory": 1 << 30,
                 "os_type": "other", "disks": {}, "snapshots": []}
    vols: dict[str, dict] = {}
    for el in root.iter():
        tag = _local(el.tag)
        # ovirt:id (the OS id) must not hide ovf:id (the VM id).
        attrs = {_local(k): v for k, v in el.attrib.items()
                 if not k.startswith(f"{{{ovfvm.OVIRT_NS}}}")}
        xsi_type = attrs.get("type", "")
        if tag == "Name" and out["name"] is None:
            out["name"] = (el.text or "").strip() or None
        elif tag == "Section" and xsi_type.endswith("OperatingSystemSection_Type"):
            out["id"] = check_id(attrs.get("id", ""), "OVF VM")
            desc = next((c.text for c in el if _local(c.tag) == "Description"), None)
            out["os_type"] = (desc or "other").strip() or "other"
        elif tag == "Item":
            kids = {_local(c.tag): (c.text or "").strip() for c in el}
            if kids.get("ResourceType") == "4" and _number(kids.get("VirtualQuantity")):
                out["memory"] = scaled(int(kids["VirtualQuantity"]),
                                       kids.get("AllocationUnits") or "byte * 2^20",
                                       MAX_MEMORY_BYTES)
        elif tag == "Disk":
            file_ref = attrs.get("fileRef", "")
            if file_ref.count("/") != 1:
                raise ValueError(f"OVF disk fileRef {file_ref!a} is not <disk-id>/<volume-id>")
            disk_id, vol_id = (check_id(p, "OVF disk") for p in file_ref.split("/"))
            parent = attrs.get("parentRef", "").split("/")[-1]
            parent = check_id(parent, "OVF parent volume") if parent and parent != BLANK else None
            snap = attrs.get("vm_snapshot_id")
            vols[vol_id] = {
                "id": vol_id, "disk_id": disk_id, "parent_id": parent,
                "format": "cow" if attrs.get("volume-format", "").upper() == "COW" else "raw",
                "snapshot_id": check_id(snap, "OVF snapshot") if snap else None,
                "alias": attrs.get("disk-alias") or vol_id,
                "description": attrs.get("disk-description") or "",
                "interface": (attrs.get("disk-interface") or "VirtIO_SCSI").lower(),
                "bootable": attrs.get("boot") == "true",
                "sparse": attrs.get("volume-type", "Sparse") != "Preallocated",
                "capacity": _capacity(attrs),
            }
        elif tag == "Snapshot":
            kids = {_local(c.tag): (c.text or "").strip() for c in el}
            if kids.get("Type", "").upper() not in ("ACTIVE", ""):
                out["snapshots"].append({
                    "id": check_id(attrs.get("id", ""), "OVF snapshot"),
                    "description": kids.get("Description") or "snapshot",
                    "date": kids.get("CreationDate") or None})
    if out["id"] is None:
        raise ValueError("the OVF names no VM id (OperatingSystemSection ovf:id)")
    try:
        out["settings"] = parse_vm_settings(text, "ovf")
    except ovfvm.OvfSettingsError as e:
        raise ValueError(str(e)) from None
    out["description"] = out["settings"].description or ""
    out["memory"] = out["settings"].memory or out["memory"]
    out["os_type"] = out["settings"].os_type or out["os_type"]
    by_disk: dict[str, list[dict]] = {}
    for v in vols.values():
        by_disk.setdefault(v["disk_id"], []).append(v)
    for disk_id, members in by_disk.items():
        children = {v["parent_id"] for v in members}
        tops = [v for v in members if v["id"] not in children]
        if len(tops) != 1:
            raise ValueError(f"OVF disk {disk_id}: its volumes do not form one chain")
        chain = [tops[0]]
        while chain[-1]["parent_id"]:
            nxt = vols.get(chain[-1]["parent_id"])
            if nxt is None or nxt["disk_id"] != disk_id or len(chain) > len(members):
                raise ValueError(f"OVF disk {disk_id}: volume {chain[-1]['parent_id']} "
                                 "is missing")
            chain.append(nxt)
        if len(chain) != len(members):
            raise ValueError(f"OVF disk {disk_id}: its volumes do not form one chain")
        chain.reverse()
        top = chain[-1]
        out["disks"][disk_id] = {
            "alias": top["alias"], "description": top["description"],
            "interface": top["interface"], "bootable": top["bootable"],
            "format": chain[0]["format"], "sparse": top["sparse"],
            "capacity": top["capacity"], "volumes": chain}
    return out
