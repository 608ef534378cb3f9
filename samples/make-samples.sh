#!/bin/sh
# Rebuild the small sample images and the sample OVA in this directory
# (each under 2 MiB).
# Needs: python3, qemu-img, qemu-io (qemu-utils), xorriso or genisoimage.
# The content is deterministic (seeded), the qcow2 layout is qemu's.
#
# Note: git stores holes as zeros, so a fresh checkout of data-holes.raw is
# fully allocated; run `fallocate -d samples/data-holes.raw` (or this
# script) to punch the holes again.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Sparse raw file: 1.5 MiB, data at 0-192K and 1M-1088K, the rest holes.
python3 - <<'PY'
import random
r = random.Random(2)
with open("data-holes.raw", "wb") as f:
    f.truncate(1536 * 1024)
    f.write(r.randbytes(192 * 1024))
    f.seek(1024 * 1024)
    f.write(r.randbytes(64 * 1024))
PY

# qcow2 v3, 16 MiB virtual: random data, text, a zero cluster, holes.
python3 - "$tmp/dh.raw" <<'PY'
import random, sys
r = random.Random(1)
with open(sys.argv[1], "wb") as f:
    f.truncate(16 << 20)
    f.write(r.randbytes(512 << 10))
    f.seek(4 << 20)
    f.write(b"imagetool sample: data, zeros and holes\n" * 6000)
    f.seek((16 << 20) - (128 << 10))
    f.write(r.randbytes(128 << 10))
PY
rm -f data-holes.qcow2
qemu-img convert -q -f raw -O qcow2 -o compat=1.1 "$tmp/dh.raw" data-holes.qcow2
qemu-io -f qcow2 -c "write -z 8M 256k" -c "write -z 128k 64k" data-holes.qcow2 >/dev/null

# Compressed qcow2 (zlib), 32 MiB virtual, mostly compressible text.
python3 - "$tmp/c.raw" <<'PY'
import random, sys
r = random.Random(3)
with open(sys.argv[1], "wb") as f:
    f.truncate(32 << 20)
    line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    f.write(line * ((6 << 20) // len(line)))
    f.seek(20 << 20)
    f.write(r.randbytes(256 << 10))
PY
rm -f compressed.qcow2
qemu-img convert -q -c -f raw -O qcow2 "$tmp/c.raw" compressed.qcow2

# ISO 9660 image with one small file.
mkdir "$tmp/iso"
printf 'imagetool sample ISO 9660 image\n' > "$tmp/iso/README.TXT"
rm -f tiny.iso
if command -v xorriso >/dev/null; then
    xorriso -as mkisofs -quiet -V IMAGETOOL -o tiny.iso "$tmp/iso"
else
    genisoimage -quiet -V IMAGETOOL -o tiny.iso "$tmp/iso"
fi

# A VMware-style OVA (DMTF OVF, a streamOptimized VMDK, a SHA-256
# manifest): a 1-CPU, 512 MiB VM "appliance" with one 8 MiB disk, for
# `imagetool ova info|import samples/appliance.ova`.
python3 - "$tmp/app.raw" <<'PY'
import random, sys
r = random.Random(4)
with open(sys.argv[1], "wb") as f:
    f.truncate(8 << 20)
    f.write(r.randbytes(128 << 10))
    f.seek(2 << 20)
    f.write(b"imagetool sample appliance disk\n" * 4000)
PY
qemu-img convert -q -f raw -O vmdk -o subformat=streamOptimized "$tmp/app.raw" \
    "$tmp/appliance-disk1.vmdk"
python3 - "$tmp/appliance-disk1.vmdk" <<'PY'
import hashlib, io, os, sys, tarfile
vmdk = open(sys.argv[1], "rb").read()
ovf = f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
 xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:href="appliance-disk1.vmdk" ovf:id="file1" ovf:size="{len(vmdk)}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1"
     ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="appliance">
    <Info>A virtual machine</Info>
    <Name>appliance</Name>
    <OperatingSystemSection ovf:id="101"><Info>OS</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemIdentifier>appliance</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-10</vssd:VirtualSystemType></System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>512MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>512</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>lsilogicsas</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
""".encode()
members = [("appliance.ovf", ovf)]
members.append(("appliance.mf", "".join(
    f"SHA256({n})= {hashlib.sha256(b).hexdigest()}\n"
    for n, b in (("appliance.ovf", ovf), ("appliance-disk1.vmdk", vmdk))).encode()))
members.append(("appliance-disk1.vmdk", vmdk))
with tarfile.open("appliance.ova", "w", format=tarfile.USTAR_FORMAT) as t:
    for name, data in members:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        t.addfile(info, io.BytesIO(data))
PY

ls -ls data-holes.raw data-holes.qcow2 compressed.qcow2 tiny.iso appliance.ova
