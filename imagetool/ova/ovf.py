"""OVF descriptors of OVAs: the oVirt dialect written, both dialects read.

Written: the OVF the oVirt engine puts in its own OVA exports
(ovirt-engine ``OvfOvaWriter``): the DMTF envelope namespace as the
default namespace (the engine's reader matches unprefixed element names),
``ovf:``-prefixed attributes, and an ``xmlns:ovirt`` declaration, which is
what makes the engine treat an OVA as its own. Each disk's file id, href
and tar member name is its image (volume) id; the capacity is in whole GiB
(``byte * 2^30``) and the exact virtual size lives in the qcow2 member.

Read: that dialect and the DMTF one written by VMware and VirtualBox (DMTF
DSP0243 "Open Virtualization Format Specification" 1.x and 2.x).
Elements and attributes are matched by local name, so the namespace
prefixes and the OVF version do not matter. Disks are resolved as
DSP0243 says: ``Disk/@fileRef`` -> ``References/File/@id`` -> ``@href``.

An OVA comes from anyone, so the reader is strict: no DTD in any encoding
(imagetool.xmlsafe), UTF-8 text only, units and sizes bounded by the one
unit parser (imagetool.units), and no disk named anywhere but in the
DiskSection, since the engine attaches every disk an OVF names.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from imagetool import xmlsafe
from imagetool.errors import FormatError
from imagetool.formats.tar import TarError, check_name
from imagetool.ova import ovfvm
from imagetool.units import MAX_DISK_BYTES, MAX_MEMORY_BYTES, scaled

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
QCOW_URI = "http://www.gnome.org/~markmc/qcow-image-format.html"
BLANK = "00000000-0000-0000-0000-000000000000"
GiB = 1 << 30
MAX_OVF_BYTES = 16 << 20


class OvfError(FormatError):
    """The OVF cannot be used (unparsable, or disks that do not resolve)."""


@dataclass
class OvfDisk:
    """One disk of an OVF, resolved to the file (tar member) holding it."""

    disk_id: str
    file_id: str
    href: str
    capacity: int                      # bytes
    file_size: int | None = None       # File/@ovf:size
    populated_size: int | None = None
    volume_type: str | None = None     # oVirt: Sparse | Preallocated
    interface: str | None = None
    boot: bool = False
    alias: str | None = None


@dataclass
class Ovf:
    """What an OVA's descriptor says about its VM."""

    text: str
    dialect: str                       # "ovirt" or "dmtf"
    vm_id: str | None
    name: str | None
    cpus: int | None
    memory: int | None                 # bytes
    disks: list[OvfDisk] = field(default_factory=list)
    nics: list[dict] = field(default_factory=list)
    template: bool = False


# --- writing ----------------------------------------------------------------------

def _a(**attrs: object) -> str:
    """``ovf:name="value"`` attribute pairs, values escaped."""
    return " ".join(f"ovf:{k}={quoteattr(str(v))}" for k, v in attrs.items())


# Element text, escaped: every value written goes through this or ``_a``.
_t = xmlsafe.text


def build_ovirt_ovf(*, vm_id: str, name: str, description: str = "",
                    cpus: int = 1, memory: int = GiB, disks: list[dict],
                    template: bool = False, settings: ovfvm.OvfVm | None = None) -> str:
    """The oVirt-dialect OVF of an OVA (see the module docstring).

    ``settings``: the VM's memory policy, CPU topology, OS, BIOS, NICs and
    texts (imagetool.ova.ovfvm); without them, ``cpus`` sockets and
    ``memory`` bytes. Each disk's ``boot_order`` and ``active`` go in its
    drive item when given.

    ``disks``: dicts with ``disk_id``, ``image_id`` (the member name),
    ``member_size``, ``virtual_size``, ``alias``, ``interface`` (engine enum
    name, e.g. VirtIO_SCSI), ``boot``, ``sparse``. Every value is escaped,
    ids included: they come from an engine or an OVA, not from this code.
    """
    refs, dsec, items = [], [], []
    for d in disks:
        img = d["image_id"]
        refs.append(f'<File {_a(href=img, id=img, size=d["member_size"])}/>')
        attrs = {"diskId": d["disk_id"], "capacity": -(-d["virtual_size"] // GiB),
                 "capacityAllocationUnits": "byte * 2^30",
                 "populatedSize": d["member_size"], "parentRef": "", "fileRef": img,
                 "format": QCOW_URI, "volume-format": "COW",
                 "volume-type": "Sparse" if d.get("sparse", True) else "Preallocated",
                 "disk-interface": d.get("interface") or "VirtIO_SCSI",
                 "boot": str(bool(d.get("boot"))).lower(), "pass-discard": "false",
                 "wipe-after-delete": "false", "incremental-backup": "false",
                 "disk-alias": d.get("alias") or img, "description": "",
                 "disk_storage_type": "IMAGE", "cinder_volume_type": ""}
        dsec.append(f"<Disk {_a(**attrs)}/>")
        alias = _t(d.get("alias") or img)
        items.append(
            "<Item>"
            f"<rasd:Caption>{alias}</rasd:Caption>"
            f"<rasd:InstanceID>{_t(img)}</rasd:InstanceID>"
            f"<rasd:ResourceType>{ovfvm.RT_DISK}</rasd:ResourceType>"
            f"<rasd:HostResource>ovf:/disk/{_t(d['disk_id'])}</rasd:HostResource>"
            f"<rasd:Parent>{BLANK}</rasd:Parent><rasd:Template>{BLANK}</rasd:Template>"
            "<rasd:ApplicationList></rasd:ApplicationList>"
            "<Type>disk</Type><Device>disk</Device>"
            f"<BootOrder>{int(d.get('boot_order', 1 if d.get('boot') else 0))}</BootOrder>"
            f"<IsPlugged>{str(d.get('active', True) is not False).lower()}</IsPlugged>"
            "<IsReadOnly>false</IsReadOnly>"
            f"<Alias>{alias}</Alias>"
            "</Item>")
    if settings is None:
        settings = ovfvm.OvfVm(memory=int(memory), sockets=int(cpus), cores=1, threads=1,
                               memory_guaranteed=int(memory), memory_max=int(memory) * 4)
    settings.memory = settings.memory or int(memory)
    cpus = (settings.sockets or 1) * (settings.cores or 1) * (settings.threads or 1)
    mem_mb = max(1, settings.memory >> 20)
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n"
        f'<Envelope xmlns="{OVF_NS}" xmlns:ovf="{OVF_NS}" xmlns:rasd="{RASD_NS}" '
        f'xmlns:vssd="{VSSD_NS}" xmlns:xsi="{XSI_NS}" xmlns:ovirt="{ovfvm.OVIRT_NS}" '
        'ovf:version="4.4.0.0">'
        f"<References>{''.join(refs)}</References>"
        "<NetworkSection><Info>List of networks</Info></NetworkSection>"
        f"<DiskSection><Info>List of Virtual Disks</Info>{''.join(dsec)}</DiskSection>"
        f"<VirtualSystem {_a(id=vm_id)}>"
        f"<Name>{_t(name)}</Name><Description>{_t(description)}</Description>"
        f"{ovfvm.vm_elements(settings)}<TemplateId>{BLANK}</TemplateId>"
        f"<TemplateName>Blank</TemplateName><IsTemplate>{str(template).lower()}</IsTemplate>"
        "<Origin>0</Origin>"
        f"{ovfvm.os_section(settings, '1', ova=True)}"
        f"<VirtualHardwareSection><Info>{cpus} CPU, {mem_mb} Memory</Info>"
        f"<System><vssd:VirtualSystemType>ENGINE 4.4.0.0</vssd:VirtualSystemType></System>"
        f"{ovfvm.cpu_memory_items(settings)}"
        f"{''.join(items)}{ovfvm.nic_items(settings)}"
        "</VirtualHardwareSection>"
        "</VirtualSystem></Envelope>\n")


# --- reading ----------------------------------------------------------------------

def local_name(tag: str) -> str:
    """An element's or attribute's name without its namespace."""
    return tag.rsplit("}", 1)[-1]


def _attr(el: ET.Element, name: str) -> str | None:
    for k, v in el.attrib.items():
        if local_name(k) == name:
            return v
    return None


def _child(el: ET.Element, name: str) -> ET.Element | None:
    for c in el:
        if local_name(c.tag) == name:
            return c
    return None


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if local_name(c.tag) == name]


def _text(el: ET.Element | None, name: str) -> str | None:
    c = _child(el, name) if el is not None else None
    if c is None or c.text is None:
        return None
    return c.text.strip() or None


def _bytes(quantity: int, units: str | None, limit: int, what: str) -> int:
    """``quantity`` of ``units`` in bytes, bounded (imagetool.units.scaled)."""
    try:
        return scaled(quantity, units, limit)
    except ValueError as e:
        raise OvfError(f"{what}: {e}") from None


def _int(value: str | None, what: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    if not re.fullmatch(r"\s*\d{1,20}\s*", value):
        raise OvfError(f"{what}: {value!r} is not a non-negative integer")
    return int(value)


def _no_hidden_disks(root: ET.Element, sections: list[ET.Element]) -> None:
    """OvfError for a ``Disk`` element anywhere but in a DiskSection.

    An engine reading the OVF may take such an element as a disk of the VM
    and attach the existing disk of that id, another VM's: the OVA would
    then import a VM that owns a disk it never brought (and removing the VM
    would delete it). Only the DiskSection's disks are the OVA's own.
    """
    listed = {id(d) for sec in sections for d in _children(sec, "Disk")}
    for el in root.iter():
        if local_name(el.tag) == "Disk" and id(el) not in listed:
            raise OvfError(f"a Disk element outside the DiskSection (disk id "
                           f"{_attr(el, 'diskId') or _attr(el, 'fileRef')!r}); refused")


def parse_ovf(data: bytes) -> Ovf:
    """Read an OVA's descriptor (either dialect); OvfError when unusable."""
    if len(data) > MAX_OVF_BYTES:
        raise OvfError(f"the OVF is larger than {MAX_OVF_BYTES >> 20} MiB")
    try:
        # Before anything reads the text: a DTD is refused in any encoding.
        root = xmlsafe.parse(data)
    except xmlsafe.XmlRefused as e:
        raise OvfError(f"the OVF is refused: {e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        # UTF-16 without a byte order mark decodes as UTF-8 with NULs (which
        # XML never holds); the text is what an engine is given for the VM.
        raise OvfError("the OVF is not UTF-8 text; convert it to UTF-8")
    if local_name(root.tag) != "Envelope":
        raise OvfError(f"the OVF's root element is {local_name(root.tag)!r}, not Envelope")
    dialect = "ovirt" if "xmlns:ovirt" in text else "dmtf"

    files: dict[str, tuple[str, int | None]] = {}
    refs = _child(root, "References")
    for f in (_children(refs, "File") if refs is not None else []):
        fid, href = _attr(f, "id"), _attr(f, "href")
        if not fid or not href:
            raise OvfError("a References/File lacks ovf:id or ovf:href")
        if _attr(f, "compression") not in (None, "", "identity"):
            raise OvfError(f"file {href!r} is compressed "
                           f"({_attr(f, 'compression')}); not supported")
        if _attr(f, "chunkSize"):
            raise OvfError(f"file {href!r} is split in chunks; not supported")
        try:
            check_name(href)
        except TarError as e:
            raise OvfError(f"References/File: {e}") from None
        files[fid] = (href, _int(_attr(f, "size"), f"size of file {href!r}"))

    vs = _child(root, "VirtualSystem")
    if vs is None:
        # oVirt's own (non-OVA) OVF calls it Content; templates too.
        vs = _child(root, "Content")
    if vs is None:
        coll = _child(root, "VirtualSystemCollection")
        systems = _children(coll, "VirtualSystem") if coll is not None else []
        if len(systems) != 1:
            raise OvfError("the OVF describes no VirtualSystem (or several)")
        vs = systems[0]
    hw = _child(vs, "VirtualHardwareSection")
    name = _text(vs, "Name") or _text(_child(hw, "System") if hw is not None else None,
                                       "ElementName") or _attr(vs, "id")
    template = (_text(vs, "IsTemplate") or "").lower() == "true"

    disks_by_id: dict[str, OvfDisk] = {}
    order: list[str] = []
    sections = _children(root, "DiskSection") + [
        s for s in _children(root, "Section") if "DiskSection" in (_attr(s, "type") or "")]
    for sec in sections:
        for d in _children(sec, "Disk"):
            did = _attr(d, "diskId")
            ref = _attr(d, "fileRef")
            if not did:
                raise OvfError("a Disk lacks ovf:diskId")
            if not ref:
                raise OvfError(f"disk {did} has no ovf:fileRef (an empty disk); "
                               "not supported")
            if ref not in files:
                raise OvfError(f"disk {did} names file {ref!r}, which References "
                               "does not list")
            if did in disks_by_id:
                raise OvfError(f"disk id {did} appears twice")
            cap = _int(_attr(d, "capacity"), f"capacity of disk {did}")
            if cap is None:
                raise OvfError(f"disk {did} lacks ovf:capacity")
            cap = _bytes(cap, _attr(d, "capacityAllocationUnits"), MAX_DISK_BYTES,
                         f"capacity of disk {did}")
            href, fsize = files[ref]
            disks_by_id[did] = OvfDisk(
                disk_id=did, file_id=ref, href=href, capacity=cap, file_size=fsize,
                populated_size=_int(_attr(d, "populatedSize"), f"populatedSize of {did}"),
                volume_type=_attr(d, "volume-type"),
                interface=_attr(d, "disk-interface"),
                boot=(_attr(d, "boot") or "").lower() == "true",
                alias=_attr(d, "disk-alias"))
            order.append(did)
    _no_hidden_disks(root, sections)
    hrefs = [disks_by_id[d].href for d in order]
    if len(set(hrefs)) != len(hrefs):
        raise OvfError("two disks name the same file")

    cpus = memory = None
    nics = []
    for item in (_children(hw, "Item") if hw is not None else []):
        rtype = _int(_text(item, "ResourceType"), "ResourceType")
        if rtype == ovfvm.RT_CPU:
            q = _int(_text(item, "VirtualQuantity"), "CPU VirtualQuantity")
            if q is None:
                sockets = _int(_text(item, "num_of_sockets"), "num_of_sockets") or 1
                cores = _int(_text(item, "cpu_per_socket"), "cpu_per_socket") or 1
                threads = _int(_text(item, "threads_per_cpu"), "threads_per_cpu") or 1
                q = sockets * cores * threads
            cpus = q
        elif rtype == ovfvm.RT_MEMORY:
            q = _int(_text(item, "VirtualQuantity"), "memory VirtualQuantity")
            units = _text(item, "AllocationUnits") or "byte * 2^20"
            if q is not None:
                memory = _bytes(q, units, MAX_MEMORY_BYTES, "memory")
        elif rtype == ovfvm.RT_NIC:
            nics.append({"name": _text(item, "ElementName") or _text(item, "Name")
                         or _text(item, "Caption"),
                         "network": _text(item, "Connection"),
                         "model": _text(item, "ResourceSubType"),
                         "mac": _text(item, "MACAddress") or _text(item, "Address")})
    # Disks in the order the hardware section attaches them, then the rest.
    ordered = []
    for item in (_children(hw, "Item") if hw is not None else []):
        res = _text(item, "HostResource") or ""
        m = re.match(r"^(?:ovf:)?/disk/(.+)$", res)
        if m and m.group(1) not in disks_by_id:
            raise OvfError(f"a hardware item attaches disk {m.group(1)!r}, which the "
                           "DiskSection does not list; refused")
        if m and m.group(1) not in ordered:
            ordered.append(m.group(1))
    ordered += [d for d in order if d not in ordered]
    return Ovf(text=text, dialect=dialect, vm_id=_attr(vs, "id"), name=name,
               cpus=cpus, memory=memory, disks=[disks_by_id[d] for d in ordered],
               nics=nics, template=template)
