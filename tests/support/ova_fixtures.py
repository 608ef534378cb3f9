"""Shared by the OVA tests: a VM with a raw and a qcow2 disk, a second
engine, a VMware-style OVA and ways to spoil one."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

from helpers import ENGINE_PASSWORD, MiB, make_raw, qemu_img, qemu_io

SD = "data"


def second_engine(data_dir: str):
    """Another local engine (the import target of a round trip)."""
    from imagetool.server.local import LocalEngine
    eng = LocalEngine(data_dir, password=ENGINE_PASSWORD, finished_ttl=60.0)
    eng.start()
    return eng


def connect(engine):
    from imagetool.engine import Connection
    from imagetool.server.local import LocalEngine
    return Connection(engine.url, username=LocalEngine.username, password=ENGINE_PASSWORD,
                      cafile=engine.cafile)


def make_sources(d: str, size: int = 8 * MiB) -> dict[str, str]:
    """A raw image (data, holes, a zeroed range) and a qcow2 one (data, zero
    clusters, unallocated clusters)."""
    raw = os.path.join(d, "raw.img")
    make_raw(raw, size, [(0, MiB), (3 * MiB, 512 * 1024), (size - 64 * 1024, 64 * 1024)],
             seed=3)
    with open(raw, "r+b") as f:          # an explicitly zeroed (allocated) range
        f.seek(5 * MiB)
        f.write(bytes(MiB))
    qcow = os.path.join(d, "cow.qcow2")
    qemu_img("create", "-f", "qcow2", qcow, str(size + 3 * MiB))
    mb = size // MiB
    qemu_io(qcow, "write -P 0x5a 1M 2M", "write -z 3M 1M", f"write -P 0x11 {mb - 1}M 64k",
            f"write -P 0x22 {mb + 2}M 512k")
    return {"raw": raw, "qcow2": qcow}


def make_vm(conn, sources: dict[str, str], name: str):
    """Upload the sources as disks and attach them to a new VM; (vm, disks)."""
    from imagetool import upload_disk
    disks = {}
    for kind, path in sources.items():
        disks[kind] = upload_disk(conn, path, SD, name=f"{name}-{kind}")
    vm = conn.vms.add(name=name)
    for i, d in enumerate(disks.values()):
        conn.vms.attach_disk(vm.id, d.id, bootable=i == 0)
    return vm, disks


VMWARE_OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
 xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
 xmlns:vmw="http://www.vmware.com/schema/ovf"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="web-disk1.vmdk" ovf:id="file1" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{mib}" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1"
     ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
     ovf:populatedSize="{size}"/>
  </DiskSection>
  <NetworkSection><Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="web">
    <Info>A virtual machine</Info>
    <Name>web</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest"><Info>OS</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemIdentifier>web</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-10</vssd:VirtualSystemType></System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>2048MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>lsilogicsas</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>7</rasd:AddressOnParent><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection><rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def add_member(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


def make_vmware_ova(d: str, manifest: str | None = "sha256", ovf: str | None = None,
                    mf_override: str | None = None) -> dict:
    """A VMware-style OVA: DMTF OVF, a streamOptimized VMDK, a manifest."""
    qcow = os.path.join(d, "src.qcow2")
    qemu_img("create", "-f", "qcow2", qcow, "6M")
    qemu_io(qcow, "write -P 0x33 512k 1M", "write -P 0x44 4M 64k")
    vmdk = os.path.join(d, "web-disk1.vmdk")
    qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", qcow, vmdk)
    raw = os.path.join(d, "expected.raw")
    qemu_img("convert", "-O", "raw", vmdk, raw)
    data = open(vmdk, "rb").read()
    text = (ovf or VMWARE_OVF).replace("{size}", str(len(data))).replace("{mib}", "6")
    ova = os.path.join(d, "web.ova")
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as t:
        add_member(t, "web.ovf", text.encode())
        if manifest:
            algo = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}[manifest]
            lines = [f"{manifest.upper()}({n})= {algo(b).hexdigest()}"
                     for n, b in (("web.ovf", text.encode()), ("web-disk1.vmdk", data))]
            add_member(t, "web.mf", (mf_override or "\n".join(lines) + "\n").encode())
        add_member(t, "web-disk1.vmdk", data)
    return {"ova": ova, "raw": raw}


def inventory(conn) -> tuple[set, set]:
    """The ids of the engine's disks and VMs (what a failed import must not change)."""
    return {d.id for d in conn.disks.list()}, {v.id for v in conn.vms.list()}


def rewrite_ova(src: str, dst: str, members: dict[str, bytes | None], order=None) -> str:
    """Copy an OVA, replacing (bytes) or dropping (None) members, adding new ones."""
    with tarfile.open(src) as t:
        old = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    names = [n for n, _ in old] + [n for n in members if n not in dict(old)]
    with tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as t:
        for n in order or names:
            data = members.get(n, dict(old).get(n))
            if data is not None:
                add_member(t, n, data)
    return dst
