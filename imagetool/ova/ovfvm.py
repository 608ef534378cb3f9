"""The VM an OVF describes beyond its disks' files: memory, CPU topology,
OS, BIOS, per-disk interface and boot flags, boot order, NICs, texts.

Read (imagetool.ova.ovfvm_read) from both OVF dialects the oVirt engine
reads (ovirt-engine ``OvfReader`` for its own and export-domain OVFs,
``OvfOvaReader`` for OVAs, which is also the shape virt-v2v's ``create_ovf`` writes for
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
from dataclasses import dataclass, field
from imagetool.errors import FormatError
from imagetool.xmlsafe import text as _e
from imagetool.units import MAX_MEMORY_BYTES

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
MAX_MEMORY = MAX_MEMORY_BYTES
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
# Hardware items (CIM ResourceType values, DSP0243) kept (CPU, memory, NIC,
# disk) and left alone as structure (DMTF disk controllers: the disk's
# interface says what the engine keeps).
RT_CPU, RT_MEMORY, RT_NIC, RT_DISK = 3, 4, 10, 17
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


# --- checks ---------------------------------------------------------------------

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


# --- writing ------------------------------------------------------------------

def vm_elements(s: OvfVm) -> str:
    """The VirtualSystem's setting elements (after Name and Description)."""
    parts = [f"<Comment>{_e(s.comment or '')}</Comment>"]
    if s.memory_guaranteed:
        parts.append(f"<MinAllocatedMem>{int(s.memory_guaranteed) >> 20}</MinAllocatedMem>")
    if s.memory_max:
        parts.append(f"<MaxMemorySizeMb>{int(s.memory_max) >> 20}</MaxMemorySizeMb>")
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
    attrs = f"ovf:id=\"{_e(section_id)}\" ovirt:id=\"{os_id}\" ovf:required=\"false\""
    head = (f"<OperatingSystemSection {attrs}>" if ova else
            f'<Section {attrs} xsi:type="ovf:OperatingSystemSection_Type">')
    tail = "</OperatingSystemSection>" if ova else "</Section>"
    return f"{head}<Info>Guest Operating System</Info><Description>{_e(name)}</Description>{tail}"


def cpu_memory_items(s: OvfVm) -> str:
    """The CPU and memory items of the VirtualHardwareSection."""
    sockets, cores, threads = int(s.sockets or 1), int(s.cores or 1), int(s.threads or 1)
    cpus = sockets * cores * threads
    mem_mb = max(1, int(s.memory or 1 << 30) >> 20)
    return (
        "<Item>"
        f"<rasd:Caption>{cpus} virtual cpu</rasd:Caption>"
        "<rasd:Description>Number of virtual CPU</rasd:Description>"
        f"<rasd:InstanceId>1</rasd:InstanceId><rasd:ResourceType>{RT_CPU}</rasd:ResourceType>"
        f"<rasd:num_of_sockets>{sockets}</rasd:num_of_sockets>"
        f"<rasd:cpu_per_socket>{cores}</rasd:cpu_per_socket>"
        f"<rasd:threads_per_cpu>{threads}</rasd:threads_per_cpu>"
        f"<rasd:max_num_of_vcpus>{max(16, cpus)}</rasd:max_num_of_vcpus>"
        f"<rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>"
        "</Item>"
        "<Item>"
        f"<rasd:Caption>{mem_mb} MB of memory</rasd:Caption>"
        "<rasd:Description>Memory Size</rasd:Description>"
        f"<rasd:InstanceId>2</rasd:InstanceId><rasd:ResourceType>{RT_MEMORY}</rasd:ResourceType>"
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
            f"<rasd:ResourceType>{RT_NIC}</rasd:ResourceType>"
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
