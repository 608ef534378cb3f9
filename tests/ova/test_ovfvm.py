"""The VM settings of an OVF (imagetool.ova.ovfvm): read from each dialect,
written by the OVA writer and read back unchanged, hostile values refused."""

from __future__ import annotations

import pytest

from imagetool.ova.ovf import build_ovirt_ovf
from imagetool.ova.ovfvm import OvfDiskSettings, OvfNic, OvfSettingsError, OvfVm
from imagetool.ova.ovfvm_read import parse_vm_settings

MiB = 1 << 20
DISK = "0b1c63fe-3a24-4b36-9d6f-0e6f2ad3a5c1"


def ova_ovf(settings: OvfVm | None = None, **disk) -> str:
    return build_ovirt_ovf(vm_id="5b0e0f43-5d8c-4b39-9a41-0d6d6c8e2a01", name="vm",
                           description="web server", memory=512 * MiB,
                           disks=[dict({"disk_id": DISK, "image_id": DISK, "member_size": 0,
                                        "virtual_size": MiB, "interface": "SATA",
                                        "boot": True}, **disk)],
                           settings=settings)


def test_written_settings_read_back_unchanged():
    s = OvfVm(comment="tier 1", memory=3 * 1024 * MiB, memory_guaranteed=1024 * MiB,
              memory_max=8 * 1024 * MiB, sockets=2, cores=4, threads=2,
              os_type="windows_2016x64", bios_type="q35_secure_boot",
              custom_properties=[("sap_agent", "true"), ("viodiskcache", "writeback")],
              nics=[OvfNic(name="lan", interface="e1000", mac="56:6f:01:02:03:04",
                           network="red & blue", profile="red-prof", linked=False),
                    OvfNic(name="off", interface="rtl8139", mac="56:6f:01:02:03:05",
                           plugged=False)])
    got = parse_vm_settings(ova_ovf(s, boot_order=2, active=False))
    assert got.notes == []
    for key in ("comment", "memory", "memory_guaranteed", "memory_max", "sockets", "cores",
                "threads", "os_type", "bios_type", "custom_properties", "nics"):
        assert getattr(got, key) == getattr(s, key), key
    assert (got.name, got.description) == ("vm", "web server")
    assert got.disks == {DISK: OvfDiskSettings(interface="sata", bootable=True, active=False,
                                               boot_order=2)}


def test_without_settings_the_ova_says_memory_and_cpus():
    got = parse_vm_settings(ova_ovf())
    assert (got.memory, got.memory_guaranteed, got.memory_max) == (512 * MiB, 512 * MiB,
                                                                   2048 * MiB)
    assert (got.sockets, got.cores, got.threads, got.os_type) == (1, 1, 1, "other")


@pytest.mark.parametrize("version, value, bios", [
    ("0.9", "0", "i440fx_sea_bios"), ("0.9", "2", "q35_ovmf"),
    ("4.4.0.0", "0", "cluster_default"), ("4.4.0.0", "3", "q35_ovmf")])
def test_bios_type_follows_the_ovf_version(version, value, bios):
    text = ova_ovf(OvfVm(bios_type="q35_ovmf")).replace(
        'ovf:version="4.4.0.0"', f'ovf:version="{version}"').replace(
        "<BiosType>3</BiosType>", f"<BiosType>{value}</BiosType>")
    assert parse_vm_settings(text).bios_type == bios


def test_unknown_os_id_with_osinfo_name_is_kept_else_noted():
    text = ova_ovf(OvfVm(os_type="rhel_9x64"))
    assert 'ovirt:id="0"' in text
    assert parse_vm_settings(text).os_type == "rhel_9x64"
    odd = text.replace("<Description>rhel_9x64</Description>",
                       "<Description>Red Hat 9</Description>").replace(
        'ovirt:id="0"', 'ovirt:id="9999"')
    got = parse_vm_settings(odd)
    assert got.os_type == "other"
    assert got.notes == ["operating system Red Hat 9 is not one the engine knows: "
                         "other is used"]


def test_dmtf_nic_models_and_unknown_devices_are_noted():
    from ova_fixtures import VMWARE_OVF
    text = VMWARE_OVF.replace("{size}", "1").replace("{mib}", "6").replace(
        "<rasd:ResourceSubType>E1000<", "<rasd:ResourceSubType>VmxNet3<")
    got = parse_vm_settings(text)
    assert (got.memory, got.sockets, got.cores) == (2048 * MiB, 2, 1)
    assert [(n.name, n.interface, n.network, n.mac) for n in got.nics] == [
        ("Network adapter 1", "virtio", "VM Network", None)]
    assert got.notes == ["NIC Network adapter 1: model 'VmxNet3' is not one the engine has: "
                         "virtio is used"]


@pytest.mark.parametrize("settings, message", [
    (OvfVm(nics=[OvfNic(name="n", mac="01:00:5e:00:00:01")]),
     "NIC n MAC address 01:00:5e:00:00:01 is a multicast address"),
    (OvfVm(sockets=64, cores=64, threads=2),
     "OVF CPU topology 64x64x2 is more than 4096 CPUs"),
    (OvfVm(custom_properties=[("bad name", "x")]),
     "OVF CustomProperties: 'bad name=x' is not name=value"),
    (OvfVm(memory_max=(16 << 40) + MiB), "OVF MaxMemorySizeMb 16777217 is out of range"),
])
def test_hostile_values_are_refused(settings, message):
    with pytest.raises(OvfSettingsError, match=message.replace("(", r"\(")):
        parse_vm_settings(ova_ovf(settings))


@pytest.mark.parametrize("old, new, message", [
    ("<rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>",
     "<rasd:AllocationUnits>byte" + " * 2^80" * 5000 + "</rasd:AllocationUnits>",
     "OVF memory: unit 'byte * 2^80 * 2^80 * 2^8'... is longer than 64 characters"),
    ("<rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>",
     "<rasd:AllocationUnits>byte * 2^60</rasd:AllocationUnits>",
     "OVF memory: 512 x 'byte * 2^60' is more than 16.00 TiB"),
], ids=["long-unit", "huge-unit"])
def test_memory_units_go_through_the_bounded_parser(old, new, message):
    """The memory item's unit is read by imagetool.units, bounded before any
    arithmetic (a long ``* 2^80`` chain once cost quadratic big-int work)."""
    ovf = ova_ovf()
    assert old in ovf
    with pytest.raises(OvfSettingsError) as e:
        parse_vm_settings(ovf.replace(old, new, 1))
    assert str(e.value) == message


@pytest.mark.parametrize("codec", ["utf-8", "utf-16-le", "utf-16-be"])
def test_settings_reader_refuses_dtds_in_any_encoding(codec):
    """The entity would have named the VM; a UTF-16 OVF without a byte order
    mark never shows the bytes ``<!DOCTYPE``."""
    ovf = (f'<?xml version="1.0" encoding="{codec[:6].upper()}"?>'
           '<!DOCTYPE Envelope [<!ENTITY n "entity-name">]>'
           '<Envelope><VirtualSystem><Name>&n;</Name></VirtualSystem></Envelope>')
    with pytest.raises(OvfSettingsError) as e:
        parse_vm_settings(ovf.encode(codec))
    assert str(e.value) == ("the OVF is refused: it declares a DTD or entities, "
                            "which are refused")


def test_a_nic_boot_order_is_named_not_dropped():
    from ova_fixtures import VMWARE_OVF
    text = VMWARE_OVF.replace("{size}", "1").replace("{mib}", "6").replace(
        "<rasd:ResourceSubType>E1000</rasd:ResourceSubType>",
        "<rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:BootOrder>1</rasd:BootOrder>")
    assert "<rasd:BootOrder>1<" in text
    got = parse_vm_settings(text)
    assert got.notes == ["NIC Network adapter 1: boot order 1 (network boot)"]
