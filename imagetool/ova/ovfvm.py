"""The VM an OVF describes beyond its disks' files: memory, CPU topology,
OS, BIOS, per-disk interface and boot flags, boot order, NICs, texts.

Read from both OVF dialects the oVirt engine reads (ovirt-engine
``OvfReader`` for its own and export-domain OVFs, ``OvfOvaReader`` for
OVAs, which is also the shape virt-v2v's ``create_ovf`` writes for
``-o rhv-upload``) and from DMTF OVFs (DSP0243: VMware, VirtualBox);
written back in the oVirt dialect by the local engine's OVF writers and
the OVA writer, so an export and re-import keeps every field.

What the engine keeps (``OvfVm``) versus what it cannot keep: anything
else the OVF states (a display type, a sound card, a USB controller...) is
named in ``OvfVm.notes`` so the caller can say so, never dropped silently.

Every value is checked as a request value would be: numbers bounded,
names printable and of bounded length, MAC addresses well formed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from imagetool.errors import FormatError

OVIRT_NS = "http://www.ovirt.org/ovf"

# oVirt's operating system ids (ovirt-engine osinfo-defaults.properties,
# ``os.<name>.id.value``): the ids an OVA's ``ovirt:id`` carries.
OS_IDS = {
    0: "other", 1: "windows_xp", 3: "windows_2003", 4: "windows_2008", 5: "other_linux",
    7: "rhel_5", 8: "rhel_4", 9: "rhel_3", 10: "windows_2003x64", 11: "windows_7",
    12: "windows_7x64", 13: "rhel_5x64", 14: "rhel_4x64", 15: "rhel_3x64",
    16: "windows_2008x64", 17: "windows_2008R2x64", 18: "rhel_6", 19: "rhel_6x64",
    20: "windows_8", 21: "windows_8x64", 23: "windows_2012x64", 24: "rhel_7x64",
    25: "windows_2012R2x64", 26: "windows_10", 27: "windows_10x64",
    29: "windows_2016x64",
}
OS_BY_NAME = {v.lower(): k for k, v in OS_IDS.items()}
# The shape of an osinfo name; one the table lacks is kept as named.
OS_NAME = re.compile(r"[A-Za-z0-9_.]{1,64}")

# The API's BiosType values in the order of the engine's enum (oVirt 4.4);
# OVFs older than 4.4 (virt-v2v writes 0.9) count from i440fx_sea_bios = 0.
BIOS_TYPES = ("cluster_default", "i440fx_sea_bios", "q35_sea_bios", "q35_ovmf",
              "q35_secure_boot")

# Disk interfaces: the API's names and the engine's OVF spelling.
ENGINE_INTERFACES = {"virtio": "VirtIO", "virtio_scsi": "VirtIO_SCSI", "ide": "IDE",
                     "sata": "SATA", "spapr_vscsi": "SPAPR_VSCSI"}

# NIC models: the engine's VmInterfaceType numbers (rasd:ResourceSubType of
# its OVFs) and the API's NicInterface names.
NIC_TYPES = {0: "rtl8139_virtio", 1: "rtl8139", 2: "e1000", 3: "virtio", 4: "spapr_vlan",
             5: "pci_passthrough"}
NIC_NUMBERS = {v: k for k, v in NIC_TYPES.items()}
# DMTF OVFs name the model (VMware E1000, VirtualBox E1000, PCNet32...).
_DMTF_NICS = {"e1000": "e1000", "virtio": "virtio", "pv": "virtio", "rtl8139": "rtl8139"}

# Bounds for values read from a file anyone may have written: above what an
# oVirt VM can have, low enough that no later arithmetic or listing suffers.
MAX_MEMORY = 16 << 40
MAX_CPUS = 4096
MAX_NICS = 64
MAX_BOOT_ORDER = 1000
MAX_NAME = 255
MAX_TEXT = 4000

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PROPERTY = re.compile(r"^[A-Za-z0-9_]{1,100}$")

# VirtualSystem children that are structure or identity, never settings.
_STRUCTURE = {"Info", "Name", "Description", "Comment", "TemplateId", "TemplateName",
              "CreationDate", "ExportDate", "IsTemplate", "Origin", "VmType", "ClusterName",
              "Section", "OperatingSystemSection", "VirtualHardwareSection",
              "MinAllocatedMem", "MaxMemorySizeMb", "BiosType", "CustomProperties",
              "Generation", "AnnotationSection", "ProductSection", "EulaSection",
              "IsInitilized", "IsInitialized", "ApplicationList", "LastModified"}
# Hardware items kept (CPU, memory, NIC, disk) and left alone as structure
# (DMTF disk controllers: the disk's interface says what the engine keeps).
_RT_CPU, _RT_MEMORY, _RT_NIC, _RT_DISK = 3, 4, 10, 17
_RT_CONTROLLERS = {5, 6}   # IDE and SCSI controllers


class OvfSettingsError(FormatError):
    """A VM setting in the OVF is malformed or out of bounds."""


@dataclass
class OvfNic:
    name: str
    interface: str = "virtio"
    mac: str | None = None
    network: str | None = None       # None: not connected
    profile: str | None = None       # vNIC profile name (default: the network's)
    linked: bool = True
    plugged: bool = True


@dataclass
class OvfDiskSettings:
    interface: str = "virtio_scsi"
    bootable: bool = False
    active: bool = True
    boot_order: int = 0


@dataclass
class OvfVm:
    """The settings an OVF gives its VM; None where it says nothing."""

    name: str | None = None
    description: str | None = None
    comment: str | None = None
    memory: int | None = None              # bytes
    memory_guaranteed: int | None = None   # bytes
    memory_max: int | None = None          # bytes
    sockets: int | None = None
    cores: int | None = None
    threads: int | None = None
    os_type: str | None = None             # the engine's name (rhel_7x64)
    bios_type: str | None = None           # the API's BiosType value
    custom_properties: list[tuple[str, str]] | None = None
    disks: dict[str, OvfDiskSettings] = field(default_factory=dict)
    nics: list[OvfNic] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- reading ----------------------------------------------------------------

def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _attr(el: ET.Element, name: str, ns: str | None = None) -> str | None:
    if ns is not None:
        return el.attrib.get(f"{{{ns}}}{name}")
    for k, v in el.attrib.items():
        if _local(k) == name and not k.startswith(f"{{{OVIRT_NS}}}"):
            return v
    return None


def _kids(el: ET.Element) -> dict[str, str]:
    """Text of each child by local name (the first of a name wins)."""
    out: dict[str, str] = {}
    for c in el:
        out.setdefault(_local(c.tag), (c.text or "").strip())
    return out


def _text(value: str | None, what: str, limit: int = MAX_NAME) -> str | None:
    if value is None:
        return None
    if len(value) > limit:
        raise OvfSettingsError(f"OVF {what} is {len(value)} characters long: at most "
                               f"{limit} are allowed")
    if not value.isprintable():
        raise OvfSettingsError(f"OVF {what} contains the character "
                               f"{ascii(next(c for c in value if not c.isprintable()))}: "
                               "only printable text is allowed")
    return value


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


def check_mac(value: str, what: str = "MAC address") -> str:
    """A unicast MAC address ``aa:bb:cc:dd:ee:ff``, lower-cased; else OvfSettingsError."""
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        raise OvfSettingsError(f"{what} {value[:40]!a} is not a MAC address "
                               "(six hex pairs separated by ':')")
    if int(mac[:2], 16) & 1:
        raise OvfSettingsError(f"{what} {mac} is a multicast address")
    return mac


def parse_custom_properties(text: str, what: str = "OVF CustomProperties"
                            ) -> list[tuple[str, str]]:
    """``name=value;name=value`` (the engine's own spelling) as pairs."""
    out = []
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not _PROPERTY.match(name.strip()):
            raise OvfSettingsError(f"{what}: {part[:60]!a} is not name=value with a name "
                                   "of letters, digits and '_'")
        out.append((name.strip(), _text(value, f"{what} value", MAX_TEXT) or ""))
    return out


def _system(root: ET.Element) -> ET.Element | None:
    for el in root.iter():
        if _local(el.tag) in ("VirtualSystem", "Content"):
            return el
    return None


def _sections(vs: ET.Element, kind: str) -> list[ET.Element]:
    """``<XSection>`` or ``<Section xsi:type="ovf:XSection_Type">`` children."""
    return [c for c in vs if _local(c.tag) == kind
            or (_local(c.tag) == "Section" and (_attr(c, "type") or "").endswith(f"{kind}_Type"))]


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
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise OvfSettingsError(f"cannot parse the OVF: {e}") from None
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
    unkept = sorted({_local(c.tag) for c in vs} - _STRUCTURE - {""})
    if unkept:
        out.notes.append("settings not kept: " + ", ".join(unkept[:20]))
    _read_os(vs, out)
    _read_disks(root, kind, out)
    hws = _sections(vs, "VirtualHardwareSection")
    for item in (list(hws[0]) if hws else []):
        if _local(item.tag) == "Item":
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
        if _local(el.tag) != "Disk":
            continue
        attrs = {_local(k): v for k, v in el.attrib.items()}
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
    if rtype == _RT_CPU:
        sockets = _num(k.get("num_of_sockets"), "num_of_sockets", 1, MAX_CPUS)
        cores = _num(k.get("cpu_per_socket"), "cpu_per_socket", 1, MAX_CPUS)
        threads = _num(k.get("threads_per_cpu"), "threads_per_cpu", 1, MAX_CPUS)
        if sockets is None and cores is None:
            sockets = _num(k.get("VirtualQuantity"), "CPU VirtualQuantity", 1, MAX_CPUS)
        out.sockets, out.cores, out.threads = sockets or 1, cores or 1, threads or 1
        if out.sockets * out.cores * out.threads > MAX_CPUS:
            raise OvfSettingsError(f"OVF CPU topology {out.sockets}x{out.cores}x"
                                   f"{out.threads} is more than {MAX_CPUS} CPUs")
    elif rtype == _RT_MEMORY:
        from imagetool.ova.ovf import parse_units
        q = _num(k.get("VirtualQuantity"), "memory VirtualQuantity", 1, MAX_MEMORY)
        if q is not None:
            units = k.get("AllocationUnits") or "byte * 2^20"
            memory = q * parse_units(units, "memory")
            if not 1 << 20 <= memory <= MAX_MEMORY:
                raise OvfSettingsError(f"OVF memory {memory} bytes is out of range "
                                       f"(1 MiB to {MAX_MEMORY >> 40} TiB)")
            out.memory = memory
    elif rtype == _RT_NIC:
        if len(out.nics) >= MAX_NICS:
            raise OvfSettingsError(f"the OVF has more than {MAX_NICS} NICs")
        out.nics.append(_read_nic(k, len(out.nics), out))
    elif rtype == _RT_DISK:
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
    return OvfNic(name=name, interface=interface,
                  mac=check_mac(mac, f"NIC {name} MAC address") if mac else None,
                  network=network, profile=profile,
                  linked=True if linked is None else linked,
                  plugged=True if plugged is None else plugged)


# --- writing ------------------------------------------------------------------

def _e(value: object) -> str:
    return escape(str(value))


def vm_elements(s: OvfVm) -> str:
    """The VirtualSystem's setting elements (after Name and Description)."""
    parts = [f"<Comment>{_e(s.comment or '')}</Comment>"]
    if s.memory_guaranteed:
        parts.append(f"<MinAllocatedMem>{s.memory_guaranteed >> 20}</MinAllocatedMem>")
    if s.memory_max:
        parts.append(f"<MaxMemorySizeMb>{s.memory_max >> 20}</MaxMemorySizeMb>")
    if s.bios_type in BIOS_TYPES:
        parts.append(f"<BiosType>{BIOS_TYPES.index(s.bios_type)}</BiosType>")
    if s.custom_properties:
        text = ";".join(f"{n}={v}" for n, v in s.custom_properties)
        parts.append(f"<CustomProperties>{_e(text)}</CustomProperties>")
    return "".join(parts)


def os_section(s: OvfVm, section_id: str, ova: bool) -> str:
    """The OperatingSystemSection: the engine's id as ``ovirt:id``, its name
    as Description; ``ova`` chooses the element spelling of an OVA's OVF."""
    name = s.os_type or "other"
    os_id = OS_BY_NAME.get(name.lower(), 0)
    attrs = f"ovf:id={quoteattr(section_id)} ovirt:id=\"{os_id}\" ovf:required=\"false\""
    head = (f"<OperatingSystemSection {attrs}>" if ova else
            f'<Section {attrs} xsi:type="ovf:OperatingSystemSection_Type">')
    tail = "</OperatingSystemSection>" if ova else "</Section>"
    return f"{head}<Info>Guest Operating System</Info><Description>{_e(name)}</Description>{tail}"


def cpu_memory_items(s: OvfVm) -> str:
    """The CPU and memory items of the VirtualHardwareSection."""
    sockets, cores, threads = s.sockets or 1, s.cores or 1, s.threads or 1
    cpus = sockets * cores * threads
    mem_mb = max(1, (s.memory or 1 << 30) >> 20)
    return (
        "<Item>"
        f"<rasd:Caption>{cpus} virtual cpu</rasd:Caption>"
        "<rasd:Description>Number of virtual CPU</rasd:Description>"
        f"<rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>{_RT_CPU}</rasd:ResourceType>"
        f"<rasd:num_of_sockets>{sockets}</rasd:num_of_sockets>"
        f"<rasd:cpu_per_socket>{cores}</rasd:cpu_per_socket>"
        f"<rasd:threads_per_cpu>{threads}</rasd:threads_per_cpu>"
        f"<rasd:max_num_of_vcpus>{max(16, cpus)}</rasd:max_num_of_vcpus>"
        f"<rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>"
        "</Item>"
        "<Item>"
        f"<rasd:Caption>{mem_mb} MB of memory</rasd:Caption>"
        "<rasd:Description>Memory Size</rasd:Description>"
        f"<rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>{_RT_MEMORY}</rasd:ResourceType>"
        "<rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>"
        f"<rasd:VirtualQuantity>{mem_mb}</rasd:VirtualQuantity>"
        "</Item>")


def nic_items(s: OvfVm) -> str:
    """One item per NIC, as the engine's OVF writer spells them."""
    out = []
    for i, n in enumerate(s.nics):
        out.append(
            "<Item>"
            f"<rasd:Caption>Ethernet adapter on {_e(n.network or '[No Network]')}</rasd:Caption>"
            f"<rasd:InstanceId>{100 + i}</rasd:InstanceId>"
            f"<rasd:ResourceType>{_RT_NIC}</rasd:ResourceType>"
            f"<rasd:ResourceSubType>{NIC_NUMBERS.get(n.interface, 3)}</rasd:ResourceSubType>"
            + (f"<rasd:Connection>{_e(n.network)}</rasd:Connection>" if n.network else "")
            + (f"<VnicProfileName>{_e(n.profile)}</VnicProfileName>" if n.profile else "")
            + f"<rasd:Linked>{str(n.linked).lower()}</rasd:Linked>"
            f"<rasd:Name>{_e(n.name)}</rasd:Name>"
            + (f"<rasd:MACAddress>{_e(n.mac)}</rasd:MACAddress>" if n.mac else "")
            + "<Type>interface</Type><Device>bridge</Device>"
            f"<IsPlugged>{str(n.plugged).lower()}</IsPlugged>"
            "</Item>")
    return "".join(out)
