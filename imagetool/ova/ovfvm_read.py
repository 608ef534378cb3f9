"""Reading the VM settings of an OVF (imagetool.ova.ovfvm describes them).

Kept apart from ovfvm, which the OVF writer of imagetool.ova.ovf imports:
one module each way, no import cycle. An OVF comes from anyone, so it is
parsed without a DTD in any encoding (imagetool.xmlsafe) and the memory
item's DSP0004 programmatic unit goes through the one bounded unit parser
(imagetool.units), as the OVA reader's capacities do.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from imagetool import xmlsafe
from imagetool.ova.ovf import local_name
from imagetool.ova.ovfvm import (_RT_CONTROLLERS, RT_CPU, RT_DISK, RT_MEMORY, RT_NIC,
                                 _STRUCTURE, BIOS_TYPES, ENGINE_INTERFACES, MAX_BOOT_ORDER,
                                 MAX_CPUS, MAX_MEMORY, MAX_NICS, MAX_TEXT,
                                 NIC_TYPES, OS_BY_NAME, OS_IDS, OS_NAME, OVIRT_NS,
                                 _DMTF_NICS, OvfDiskSettings, OvfNic, OvfSettingsError, OvfVm,
                                 _text, check_mac, parse_custom_properties)
from imagetool.units import scaled


# --- reading ----------------------------------------------------------------

def _attr(el: ET.Element, name: str, ns: str | None = None) -> str | None:
    if ns is not None:
        return el.attrib.get(f"{{{ns}}}{name}")
    for k, v in el.attrib.items():
        if local_name(k) == name and not k.startswith(f"{{{OVIRT_NS}}}"):
            return v
    return None


def _kids(el: ET.Element) -> dict[str, str]:
    """Text of each child by local name (the first of a name wins)."""
    out: dict[str, str] = {}
    for c in el:
        out.setdefault(local_name(c.tag), (c.text or "").strip())
    return out


def _num(value: str | None, what: str, low: int, high: int) -> int | None:
    if value is None or value.strip() == "":
        return None
    if not re.fullmatch(r"\s*[0-9]{1,20}\s*", value, re.ASCII):
        raise OvfSettingsError(f"OVF {what} {value[:40]!a} is not a whole number")
    n = int(value)
    if not low <= n <= high:
        raise OvfSettingsError(f"OVF {what} {n} is out of range ({low} to {high})")
    return n


def _mb(value: str | None, what: str) -> int | None:
    n = _num(value, what, 0, MAX_MEMORY >> 20)
    return None if not n else n << 20


def _bool(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    return value.strip().lower() == "true"


def _system(root: ET.Element) -> ET.Element | None:
    for el in root.iter():
        if local_name(el.tag) in ("VirtualSystem", "Content"):
            return el
    return None


def _sections(vs: ET.Element, kind: str) -> list[ET.Element]:
    """``<XSection>`` or ``<Section xsi:type="ovf:XSection_Type">`` children."""
    return [c for c in vs if local_name(c.tag) == kind
            or (local_name(c.tag) == "Section"
                and (_attr(c, "type") or "").endswith(f"{kind}_Type"))]


def _version(root: ET.Element) -> float:
    m = re.match(r"^\s*(\d+)\.(\d+)", _attr(root, "version") or "")
    return float(f"{m.group(1)}.{m.group(2)}") if m else 0.0


def disk_ref(attrs: dict[str, str], kind: str) -> str:
    """The disk id a ``Disk`` element names: ``ovf:diskId`` in an OVA's OVF
    (``kind`` "ova"), the first part of ``ovf:fileRef`` (``<disk>/<volume>``)
    in the engine's own and export-domain OVFs (``kind`` "ovf")."""
    if kind == "ova":
        ref_ = attrs.get("diskId") or ""
    else:
        ref_ = attrs.get("fileRef") or attrs.get("diskId") or ""
    return ref_.split("/")[0]


def parse_vm_settings(text: str | bytes, kind: str = "ova") -> OvfVm:
    """The VM settings of an OVF (see the module docstring); OvfSettingsError
    when a value is malformed, FormatError when the XML cannot be read."""
    try:
        root = xmlsafe.parse(text)
    except xmlsafe.XmlRefused as e:
        raise OvfSettingsError(f"the OVF is refused: {e}") from None
    out = OvfVm()
    vs = _system(root)
    if vs is None:
        return out
    kids = _kids(vs)
    out.name = _text(kids.get("Name") or None, "Name")
    out.description = _text(kids.get("Description") or None, "Description", MAX_TEXT)
    out.comment = _text(kids.get("Comment") or None, "Comment", MAX_TEXT)
    out.memory_guaranteed = _mb(kids.get("MinAllocatedMem"), "MinAllocatedMem")
    out.memory_max = _mb(kids.get("MaxMemorySizeMb"), "MaxMemorySizeMb")
    bios = _num(kids.get("BiosType"), "BiosType", 0, len(BIOS_TYPES) - 1)
    if bios is not None:
        shift = 1 if _version(root) < 4.4 else 0
        out.bios_type = BIOS_TYPES[min(bios + shift, len(BIOS_TYPES) - 1)]
    if kids.get("CustomProperties"):
        out.custom_properties = parse_custom_properties(kids["CustomProperties"])
    unkept = sorted({local_name(c.tag) for c in vs} - _STRUCTURE - {""})
    if unkept:
        out.notes.append("settings not kept: " + ", ".join(unkept[:20]))
    _read_os(vs, out)
    _read_disks(root, kind, out)
    hws = _sections(vs, "VirtualHardwareSection")
    for item in (list(hws[0]) if hws else []):
        if local_name(item.tag) == "Item":
            _read_item(item, out)
    if out.memory_max is not None and out.memory is not None and out.memory_max < out.memory:
        out.notes.append(f"MaxMemorySizeMb {out.memory_max >> 20} is below the memory "
                         f"{out.memory >> 20} MB: the memory is used")
        out.memory_max = out.memory
    if (out.memory_guaranteed is not None and out.memory is not None
            and out.memory_guaranteed > out.memory):
        out.notes.append(f"MinAllocatedMem {out.memory_guaranteed >> 20} is above the "
                         f"memory {out.memory >> 20} MB: the memory is used")
        out.memory_guaranteed = out.memory
    return out


def _read_os(vs: ET.Element, out: OvfVm) -> None:
    for sec in _sections(vs, "OperatingSystemSection"):
        os_id = _num(_attr(sec, "id", OVIRT_NS), "ovirt:id", 0, 1 << 31)
        name = _text(_kids(sec).get("Description") or None, "OS Description")
        if name and name.lower() in OS_BY_NAME:
            out.os_type = OS_IDS[OS_BY_NAME[name.lower()]]
        elif os_id in OS_IDS and os_id != 0:
            out.os_type = OS_IDS[os_id]
        elif name and OS_NAME.fullmatch(name) and os_id is not None:
            out.os_type = name   # an id this engine's table lacks, named as oVirt names it
        elif os_id == 0:
            out.os_type = "other"
        elif name or os_id is not None:
            out.notes.append(f"operating system {name or os_id!s:.64} is not one the engine "
                             "knows: other is used")
            out.os_type = "other"
        return


def _read_disks(root: ET.Element, kind: str, out: OvfVm) -> None:
    for el in root.iter():
        if local_name(el.tag) != "Disk":
            continue
        attrs = {local_name(k): v for k, v in el.attrib.items()}
        disk_id = disk_ref(attrs, kind)
        if not disk_id:
            continue
        raw = (attrs.get("disk-interface") or "").lower()
        if raw and raw not in ENGINE_INTERFACES:
            out.notes.append(f"disk {disk_id[:40]}: interface {raw[:20]!a} is not one the "
                             "engine has: virtio_scsi is used")
            raw = ""
        s = out.disks.setdefault(disk_id, OvfDiskSettings())
        s.interface = raw or s.interface
        s.bootable = (attrs.get("boot") or "").lower() == "true" or s.bootable


def _disk_of(res: str, out: OvfVm) -> str | None:
    """The disk a drive item's HostResource names (``ovf:/disk/<id>`` or
    ``<disk-id>/<volume-id>``)."""
    res = re.sub(r"^(?:ovf:)?/disk/", "", res.strip())
    for part in res.split("/"):
        if part in out.disks:
            return part
    return None


def _read_item(item: ET.Element, out: OvfVm) -> None:
    k = _kids(item)
    rtype = _num(k.get("ResourceType"), "ResourceType", 0, 1 << 16)
    caption = (k.get("Caption") or k.get("ElementName") or str(rtype))[:60]
    if rtype == RT_CPU:
        sockets = _num(k.get("num_of_sockets"), "num_of_sockets", 1, MAX_CPUS)
        cores = _num(k.get("cpu_per_socket"), "cpu_per_socket", 1, MAX_CPUS)
        threads = _num(k.get("threads_per_cpu"), "threads_per_cpu", 1, MAX_CPUS)
        if sockets is None and cores is None:
            sockets = _num(k.get("VirtualQuantity"), "CPU VirtualQuantity", 1, MAX_CPUS)
        out.sockets, out.cores, out.threads = sockets or 1, cores or 1, threads or 1
        if out.sockets * out.cores * out.threads > MAX_CPUS:
            raise OvfSettingsError(f"OVF CPU topology {out.sockets}x{out.cores}x"
                                   f"{out.threads} is more than {MAX_CPUS} CPUs")
    elif rtype == RT_MEMORY:
        q = _num(k.get("VirtualQuantity"), "memory VirtualQuantity", 1, MAX_MEMORY)
        if q is not None:
            units = k.get("AllocationUnits") or "byte * 2^20"
            try:
                memory = scaled(q, units, MAX_MEMORY)
            except ValueError as e:
                raise OvfSettingsError(f"OVF memory: {e}") from None
            if not 1 << 20 <= memory <= MAX_MEMORY:
                raise OvfSettingsError(f"OVF memory {memory} bytes is out of range "
                                       f"(1 MiB to {MAX_MEMORY >> 40} TiB)")
            out.memory = memory
    elif rtype == RT_NIC:
        if len(out.nics) >= MAX_NICS:
            raise OvfSettingsError(f"the OVF has more than {MAX_NICS} NICs")
        out.nics.append(_read_nic(k, len(out.nics), out))
    elif rtype == RT_DISK:
        disk_id = _disk_of(k.get("HostResource") or "", out)
        if disk_id is not None:
            s = out.disks[disk_id]
            s.boot_order = _num(k.get("BootOrder"), "BootOrder", 0, MAX_BOOT_ORDER) or 0
            plugged = _bool(k.get("IsPlugged"))
            s.active = s.active if plugged is None else plugged
    elif rtype not in _RT_CONTROLLERS:
        out.notes.append(f"device not kept: {caption!s}")


def _read_nic(k: dict[str, str], index: int, out: OvfVm) -> OvfNic:
    name = _text(k.get("Name") or k.get("ElementName") or None, "NIC name", 50) \
        or f"nic{index + 1}"
    sub = (k.get("ResourceSubType") or "").strip()
    if sub.isdigit():
        interface = NIC_TYPES.get(int(sub))
    else:
        interface = _DMTF_NICS.get(sub.lower()) if sub else "virtio"
    if interface is None:
        out.notes.append(f"NIC {name}: model {sub[:20]!a} is not one the engine has: "
                         "virtio is used")
        interface = "virtio"
    mac = k.get("MACAddress") or k.get("Address") or None
    network = _text(k.get("Connection") or None, f"NIC {name} network", 50)
    profile = _text(k.get("VnicProfileName") or None, f"NIC {name} vNIC profile", 50)
    linked = _bool(k.get("Linked"))
    plugged = _bool(k.get("IsPlugged"))
    if _num(k.get("BootOrder"), f"NIC {name} BootOrder", 0, MAX_BOOT_ORDER):
        # The engine keeps a boot order per device; the local engine boots
        # from disks only, so a network boot is named, never dropped silently.
        out.notes.append(f"NIC {name}: boot order {k['BootOrder'].strip()} (network boot)")
    return OvfNic(name=name, interface=interface,
                  mac=check_mac(mac, f"NIC {name} MAC address") if mac else None,
                  network=network, profile=profile,
                  linked=True if linked is None else linked,
                  plugged=True if plugged is None else plugged)
