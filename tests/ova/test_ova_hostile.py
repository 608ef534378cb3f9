"""Hostile OVAs and OVFs: units, encodings, hidden disks, tar member types.

Each case: exit code 1, the one-line error, no traceback, nothing written
beside the OVA, no disk or VM created, and no other VM's disk changed.
"""

from __future__ import annotations

import codecs
import os
import tarfile
import time
import uuid

import pytest

from helpers import MiB, qemu_img, qemu_io
from ova_fixtures import SD, VMWARE_OVF, add_member, inventory, make_vmware_ova, rewrite_ova

ENTITY_DTD = '<!DOCTYPE Envelope [<!ENTITY boom "ENTITY-EXPANDED">]>'


def _vmware_with(scratch: str, ovf: str, name: str, codec: str = "utf-8",
                 bom: bytes = b"") -> str:
    """The VMware OVA with its OVF replaced (no manifest), in ``codec``."""
    good = make_vmware_ova(scratch, manifest=None)["ova"]
    with tarfile.open(good) as t:
        size = t.getmember("web-disk1.vmdk").size
    out = os.path.join(scratch, f"{name}.ova")
    data = ovf.replace("{size}", str(size)).replace("{mib}", "6")
    return rewrite_ova(good, out, {"web.ovf": bom + data.encode(codec)})


@pytest.fixture
def victim(conn, scratch):
    """Another VM with a disk of known content: nothing here may touch it."""
    from imagetool import upload_disk
    src = os.path.join(scratch, "victim.qcow2")
    qemu_img("create", "-f", "qcow2", src, "1M")
    qemu_io(src, "write -P 0x77 0 64k")
    disk = upload_disk(conn, src, SD, name=f"victim-{uuid.uuid4().hex[:6]}")
    vm = conn.vms.add(name=f"owner-{uuid.uuid4().hex[:6]}")
    conn.vms.attach_disk(vm.id, disk.id, bootable=True)
    yield vm, conn.disks.get(disk.id)
    conn.vms.remove(vm.id)


def _state(conn, vm, disk) -> tuple:
    d = conn.disks.get(disk.id)
    return ([a.disk_id for a in conn.vms.disk_attachments(vm.id)], d.image_id, d.status,
            d.actual_size, d.provisioned_size)


def _refused(cli, conn, scratch, path: str, message: str, import_too: bool = True):
    """``ova info`` and ``ova import`` of ``path`` fail with ``message``."""
    before = (inventory(conn), sorted(os.listdir(scratch)))
    runs = [("ova", "info", path)]
    if import_too:
        runs.append(("ova", "import", path, "--sd", SD, "--name", "hostile"))
    for argv in runs:
        code, out, err = cli(*argv)
        assert code == 1, (argv, out, err)
        assert err.startswith("imagetool: error: ") and message in err, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "ENTITY-EXPANDED" not in out + err
    assert (inventory(conn), sorted(os.listdir(scratch))) == before


# --- units --------------------------------------------------------------------

def _units_ovf(capacity: str = "6", units: str = "byte * 2^20", mem_units: str = "byte * 2^20",
               mem: str = "2048") -> str:
    return (VMWARE_OVF.replace('ovf:capacity="{mib}" ovf:capacityAllocationUnits="byte * 2^20"',
                               f'ovf:capacity="{capacity}" ovf:capacityAllocationUnits="{units}"')
            .replace("<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>",
                     f"<rasd:AllocationUnits>{mem_units}</rasd:AllocationUnits>")
            .replace("<rasd:VirtualQuantity>2048</rasd:VirtualQuantity>",
                     f"<rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>"))


UNIT_CASES = [
    # 520 KB of "* 2^80" terms ran over 60 s of big-integer work.
    ("many-terms", dict(units="byte" + " * 2^80" * 65000), "is longer than 64 characters"),
    ("seven-terms", dict(units="byte*2*2*2*2*2*2*2"), "has more than 6 terms"),
    ("huge-exponent", dict(units="byte * 2^80"), "is out of range"),
    ("factor", dict(units="byte * 2^40 * 2^40"), "out of range (over 2^60 bytes)"),
    ("long", dict(units="byte * " + "0" * 80 + "2^20"), "longer than 64 characters"),
    ("not-bytes", dict(units="hertz * 10^6"), "is not based on bytes"),
    ("disk-9-TiB", dict(capacity="9", units="byte * 2^40"), "is more than 8.00 TiB"),
    ("memory-huge", dict(mem="99999999999999999999", mem_units="byte * 2^60"),
     "memory: 99999999999999999999 x 'byte * 2^60' is more than 16.00 TiB"),
    ("memory-unit", dict(mem_units="byte * 2^64"), "memory: unit 'byte * 2^64' is out of range"),
]


@pytest.mark.parametrize("case, kw, message", UNIT_CASES, ids=[c[0] for c in UNIT_CASES])
def test_bad_units_are_refused_quickly(cli, conn, engine_env, scratch, case, kw, message):
    path = _vmware_with(scratch, _units_ovf(**kw), case)
    start = time.monotonic()
    _refused(cli, conn, scratch, path, message)
    assert time.monotonic() - start < 10


def test_one_unit_parser():
    """The units of both OVF dialects and of the engine's own OVF go through
    imagetool.units.unit_factor; its bounds hold for any input."""
    from imagetool.units import MAX_UNIT_FACTOR, unit_factor
    assert unit_factor("byte * 2^30") == 1 << 30
    assert unit_factor(" byte*10^3 ") == 1000
    assert unit_factor("MegaBytes") == 1 << 20
    assert unit_factor(None) == unit_factor("") == 1
    for bad in ("2^20", "byte * byte", "byte * -2^3", "byte * 2^-3", "byte * 0^2",
                "byte * 2^20 * 2^20 * 2^20 * 2^20"):
        with pytest.raises(ValueError):
            unit_factor(bad)
    assert unit_factor("byte * 2^60") == MAX_UNIT_FACTOR


# --- encodings ----------------------------------------------------------------

def _encoded(text: str, codec: str, bom: bytes) -> bytes:
    return bom + text.encode(codec)


ENCODINGS = [
    ("utf-16-le", b""), ("utf-16-le", codecs.BOM_UTF16_LE),
    ("utf-16-be", b""), ("utf-16-be", codecs.BOM_UTF16_BE),
]


@pytest.mark.parametrize("codec, bom", ENCODINGS,
                         ids=[f"{c}{'-bom' if b else ''}" for c, b in ENCODINGS])
def test_dtd_refused_in_utf16(cli, conn, engine_env, scratch, codec, bom):
    """The entity would name the VM; the DTD is refused whatever the encoding."""
    text = VMWARE_OVF.replace('encoding="UTF-8"', 'encoding="UTF-16"').replace(
        "<Envelope ", ENTITY_DTD + "<Envelope ", 1).replace("<Name>web</Name>",
                                                          "<Name>&boom;</Name>")
    path = _vmware_with(scratch, text, "dtd", codec, bom)
    _refused(cli, conn, scratch, path, "web.ovf: the OVF is refused: it declares a DTD "
             "or entities, which are refused")


@pytest.mark.parametrize("codec, bom", ENCODINGS,
                         ids=[f"{c}{'-bom' if b else ''}" for c, b in ENCODINGS])
def test_utf16_without_dtd_is_refused_as_not_utf8(cli, conn, engine_env, scratch, codec, bom):
    text = VMWARE_OVF.replace('encoding="UTF-8"', 'encoding="UTF-16"')
    path = _vmware_with(scratch, text, "u16", codec, bom)
    _refused(cli, conn, scratch, path, "web.ovf: the OVF is not UTF-8 text; convert it to UTF-8",
             import_too=False)


@pytest.mark.parametrize("codec, bom", [("utf-32-le", codecs.BOM_UTF32_LE),
                                        ("utf-32-be", codecs.BOM_UTF32_BE),
                                        ("utf-32-le", b"")])
def test_utf32_and_utf7_refused(cli, conn, engine_env, scratch, codec, bom):
    text = ENTITY_DTD + "<Envelope><Name>&boom;</Name></Envelope>"
    good = make_vmware_ova(scratch, manifest=None)["ova"]
    path = rewrite_ova(good, os.path.join(scratch, "u32.ova"),
                    {"web.ovf": _encoded(text, codec, bom)})
    _refused(cli, conn, scratch, path, "web.ovf: the OVF is refused: cannot parse it")
    utf7 = ('<?xml version="1.0" encoding="UTF-7"?>+ADw-!DOCTYPE Envelope +AFs-+ADw-!ENTITY '
            'boom "ENTITY-EXPANDED"+AD4-+AF0-+AD4-<Envelope><Name>&boom;</Name></Envelope>')
    path = rewrite_ova(good, os.path.join(scratch, "u7.ova"), {"web.ovf": utf7.encode()})
    _refused(cli, conn, scratch, path, "web.ovf: the OVF is refused: cannot decode it")


def test_xmlsafe_refuses_dtds_in_every_encoding():
    from imagetool import xmlsafe
    doc = ('<?xml version="1.0" encoding="{enc}"?>' + ENTITY_DTD +
           "<Envelope>&boom;</Envelope>")
    for codec, bom in ENCODINGS + [("utf-8", b""), ("utf-8", codecs.BOM_UTF8)]:
        enc = "UTF-16" if "16" in codec else "UTF-8"
        with pytest.raises(xmlsafe.XmlRefused, match="declares a DTD"):
            xmlsafe.parse(bom + doc.format(enc=enc).encode(codec))
    with pytest.raises(xmlsafe.XmlRefused, match="declares a DTD"):
        xmlsafe.parse(doc.format(enc="UTF-8"))           # str, as the REST OVF is
    assert xmlsafe.parse('<a x="1">é</a>'.encode("utf-16")).text == "é"


# --- hidden disks ---------------------------------------------------------------

def _ovirt_ova(scratch: str, name: str, extra: str = "", where: str = "</VirtualSystem>",
               disk_id: str | None = None) -> tuple[str, str]:
    """An oVirt-dialect OVA of one small qcow2 disk; ``extra`` XML put before
    ``where`` in its OVF. Returns (path, disk id)."""
    from imagetool.ova.ovf import build_ovirt_ovf
    img = os.path.join(scratch, f"{name}.qcow2")
    qemu_img("create", "-f", "qcow2", img, "1M")
    qemu_io(img, "write -P 0x42 0 64k")
    data = open(img, "rb").read()
    disk_id, image_id = disk_id or str(uuid.uuid4()), str(uuid.uuid4())
    ovf = build_ovirt_ovf(vm_id=str(uuid.uuid4()), name=name, disks=[{
        "disk_id": disk_id, "image_id": image_id, "member_size": len(data),
        "virtual_size": MiB}])
    ovf = ovf.replace(where, extra + where, 1)
    path = os.path.join(scratch, f"{name}.ova")
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        add_member(t, "vm.ovf", ovf.encode())
        add_member(t, image_id, data)
    return path, disk_id


def test_hidden_disk_outside_disk_section_is_refused(cli, conn, engine_env, scratch, victim):
    vm, disk = victim
    before = _state(conn, vm, disk)
    hidden = (f'<Disk ovf:diskId="{disk.id}" ovf:fileRef="{disk.image_id}" '
              'ovf:capacity="1"/>')
    path, _ = _ovirt_ova(scratch, "hidden", hidden)
    _refused(cli, conn, scratch, path,
             f"a Disk element outside the DiskSection (disk id '{disk.id}'); refused")
    assert _state(conn, vm, disk) == before


def test_hardware_item_naming_another_disk_is_refused(cli, conn, engine_env, scratch, victim):
    vm, disk = victim
    before = _state(conn, vm, disk)
    item = (f"<Item><rasd:ResourceType>17</rasd:ResourceType>"
            f"<rasd:HostResource>ovf:/disk/{disk.id}</rasd:HostResource></Item>")
    path, _ = _ovirt_ova(scratch, "item", item, where="</VirtualHardwareSection>")
    _refused(cli, conn, scratch, path, f"a hardware item attaches disk '{disk.id}', "
             "which the DiskSection does not list; refused")
    assert _state(conn, vm, disk) == before


def test_import_sends_only_its_own_disks():
    """The last check before the engine sees the OVF: a name of any disk the
    import did not create stops it."""
    from imagetool.errors import ImagetoolError
    from imagetool.ova.importer import _check_own_disks
    from imagetool.ova.ovf import build_ovirt_ovf
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    ovf = build_ovirt_ovf(vm_id=str(uuid.uuid4()), name="x", disks=[
        {"disk_id": d, "image_id": d, "member_size": 0, "virtual_size": MiB}
        for d in (mine, other)])
    _check_own_disks(ovf, [mine, other], "x.ova")
    with pytest.raises(ImagetoolError, match=f"names disks this import did not create "
                                             fr"\({other}\); refused"):
        _check_own_disks(ovf, [mine.upper()], "x.ova")


@pytest.mark.slow
def test_failed_import_removes_only_its_own_disks(conn, engine, scratch, victim,
                                                 monkeypatch):
    """If the engine attached a disk the import did not create anyway, the
    import fails and its clean-up detaches that disk, removing only its own."""
    from imagetool import import_ova
    from imagetool.errors import ImagetoolError
    from imagetool.ova import importer
    vm, disk = victim
    before = _state(conn, vm, disk)
    path, mine = _ovirt_ova(scratch, "cleanup")
    real_add = importer._add_entity

    def lax_add(conn_, kind, name, cluster, ovf_text):
        vm_id = real_add(conn_, kind, name, cluster, ovf_text)
        store = engine.server.store              # as a lax engine might
        doc = store.get("vm", vm_id)
        doc["attachments"].append({"disk_id": disk.id, "interface": "virtio_scsi"})
        store.put("vm", doc)
        return vm_id
    monkeypatch.setattr(importer, "_add_entity", lax_add)
    with pytest.raises(ImagetoolError, match=f"the engine attached disks this import did "
                                             fr"not create \({disk.id}\)"):
        import_ova(conn, path, SD, name="cleanup-vm")
    assert _state(conn, vm, disk)[1:] == before[1:]
    assert mine not in {d.id for d in conn.disks.list()}
    assert "cleanup-vm" not in {v.name for v in conn.vms.list()}


# --- escaping -------------------------------------------------------------------

HOSTILE = ('a"b\'c<d>&e</Name></VirtualSystem><Disk ovf:diskId="x"/>'
           ']]><!-- &amp; \u00e9')


def test_ova_ovf_writer_escapes_every_value():
    from imagetool.ova.ovf import build_ovirt_ovf, parse_ovf
    disk_id, image_id = str(uuid.uuid4()), 'i<m>&"g\''
    ovf = build_ovirt_ovf(vm_id=HOSTILE, name=HOSTILE, description=HOSTILE,
                          disks=[{"disk_id": disk_id, "image_id": image_id, "alias": HOSTILE,
                                  "interface": HOSTILE, "member_size": 0,
                                  "virtual_size": MiB}])
    parsed = parse_ovf(ovf.encode())
    assert (parsed.vm_id, parsed.name) == (HOSTILE, HOSTILE)
    assert [(d.disk_id, d.href, d.alias, d.interface) for d in parsed.disks] == \
        [(disk_id, image_id, HOSTILE, HOSTILE)]


# --- tar member types -----------------------------------------------------------

def _retype(path: str, member: str, typeflag: bytes) -> None:
    """Rewrite one member's header type in place, with a valid checksum."""
    with tarfile.open(path) as t:
        offset = t.getmember(member).offset
    with open(path, "r+b") as f:
        f.seek(offset)
        head = bytearray(f.read(512))
        head[156:157] = typeflag
        head[148:156] = b" " * 8
        head[148:156] = b"%06o\0 " % sum(head)
        f.seek(offset)
        f.write(head)


def test_gnu_sparse_member_is_refused_by_name(cli, conn, engine_env, scratch):
    path = make_vmware_ova(scratch, manifest=None)["ova"]
    _retype(path, "web-disk1.vmdk", b"S")
    _refused(cli, conn, scratch, path, "is a GNU sparse file (type 'S'), whose data is "
             "not stored as written")


def test_contiguous_member_reads_as_a_regular_file(cli, scratch):
    import json
    made = make_vmware_ova(scratch)
    code, out, err = cli("ova", "info", made["ova"], "--json", "--verify")
    assert code == 0, err
    want = json.loads(out)["disks"]
    _retype(made["ova"], "web-disk1.vmdk", b"7")
    with tarfile.open(made["ova"]) as t:
        assert t.getmember("web-disk1.vmdk").type == tarfile.CONTTYPE
    code, out, err = cli("ova", "info", made["ova"], "--json", "--verify")
    assert code == 0, err
    assert json.loads(out)["disks"] == want


# --- an OVA exported from the same engine ----------------------------------------

@pytest.mark.slow
def test_reimport_needs_clone_and_clone_gives_new_ids(cli, conn, engine_env, scratch):
    from imagetool import export_ova
    from imagetool.transfer.disk_checksum import disk_checksum
    from ova_fixtures import make_sources, make_vm
    vm, disks = make_vm(conn, {"raw": make_sources(scratch, size=2 * MiB)["raw"]},
                        f"same-{uuid.uuid4().hex[:6]}")
    [disk] = disks.values()
    ova = os.path.join(scratch, "same.ova")
    exported = export_ova(conn, vm.id, ova)
    before = (inventory(conn), sorted(os.listdir(scratch)))
    code, out, err = cli("ova", "import", ova, "--sd", SD, "--name", "again")
    assert code == 1, (out, err)
    assert err == (f"imagetool: error: {ova}: disk {disk.id} of the OVA already exists on "
                   "the engine (was the OVA exported from it?); import it with --clone "
                   "(clone=True) to give the VM and its disks new ids\n")
    assert (inventory(conn), sorted(os.listdir(scratch))) == before

    code, out, err = cli("ova", "import", ova, "--sd", SD, "--name", "again", "--clone",
                         "--json")
    assert code == 0, err
    import json
    r = json.loads(out)
    assert r["vm_id"] != vm.id
    [new] = r["disks"]
    assert new["disk_id"] not in (disk.id, disk.image_id)
    assert [a.disk_id for a in conn.vms.disk_attachments(r["vm_id"])] == [new["disk_id"]]
    assert [a.disk_id for a in conn.vms.disk_attachments(vm.id)] == [disk.id]
    alg = exported.disks[0].checksum.algorithm
    assert new["checksum"]["algorithm"] == alg
    assert new["checksum"]["value"] == disk_checksum(conn, disk.id, algorithm=alg)[
        "checksum"] == disk_checksum(conn, new["disk_id"], algorithm=alg)["checksum"]
    conn.vms.remove(r["vm_id"])
    conn.vms.remove(vm.id)
