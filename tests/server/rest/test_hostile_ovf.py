"""Hostile OVFs at the local engine: ``POST /vms`` never takes another VM's
disk, the OVFs the engine writes escape every value, DTDs are refused.

Each case asserts the status and the one-line detail, no traceback, nothing
written outside the data directory, and the other VM's disk unchanged.
"""

from __future__ import annotations

import json
import re
import uuid
import xml.etree.ElementTree as ET

import pytest

from test_hostile_rest import Box, disk_ids, disk_json, fault

OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    b = Box(tmp_path_factory.mktemp("hostile-ovf"))
    try:
        yield b
    finally:
        b.stop()


def _post_json(box, path: str, doc: dict):
    return box.request("POST", path, json.dumps(doc), "application/json")


def _ok(reply) -> dict:
    status, headers, body = reply
    assert status in (200, 201), body
    return json.loads(body) if "json" in headers.get("content-type", "") else \
        {"xml": ET.fromstring(body)}


@pytest.fixture(scope="module")
def victim(box):
    """A VM owning a disk: no OVF may take it."""
    disk = _ok(_post_json(box, "disks", json.loads(disk_json(name="victim-disk"))))["xml"]
    vm = _ok(_post_json(box, "vms", {"name": "owner", "cluster": {"name": "Default"}}))["xml"]
    _ok(box.request("POST", f"vms/{vm.get('id')}/diskattachments",
                    f'<disk_attachment><disk id="{disk.get("id")}"/></disk_attachment>'))
    return vm.get("id"), disk.get("id"), disk.findtext("image_id")


def _attached(box, vm_id: str) -> list[str]:
    status, _, body = box.request("GET", f"vms/{vm_id}/diskattachments")
    assert status == 200
    return [a.get("id") for a in ET.fromstring(body).findall("disk_attachment")]


def _vm_names(box) -> list[str]:
    status, _, body = box.request("GET", "vms")
    return [v.findtext("name") for v in ET.fromstring(body).findall("vm")]


@pytest.fixture
def guard(box, victim):
    """Nothing outside the data dir, no disk row, no victim attachment changes."""
    before = (box.outside(), disk_ids(box), _attached(box, victim[0]))
    yield
    assert (box.outside(), disk_ids(box), _attached(box, victim[0])) == before


def _vm_from_ovf(box, name: str, ovf: str, kind: str = "ovf"):
    return _post_json(box, "vms", {"name": name, "cluster": {"name": "Default"},
                                   "initialization": {"configuration": {
                                       "type": kind, "data": ovf}}})


def _ovf(disks: str, section: str = "DiskSection") -> str:
    return (f'<ovf:Envelope xmlns:ovf="{OVF_NS}" xmlns:xsi="{XSI}">'
            f"<{section}>{disks}</{section.split()[0]}>"
            "<Content><Name>x</Name></Content></ovf:Envelope>")


def test_ovf_naming_another_vms_disk_is_refused(box, guard, victim):
    _, disk_id, image_id = victim
    for kind, disk in (("ovf", f'<Disk ovf:fileRef="{disk_id}/{image_id}"/>'),
                       ("ova", f'<Disk ovf:diskId="{disk_id}" ovf:fileRef="{image_id}"/>')):
        for section in ("DiskSection", 'Section xsi:type="ovf:DiskSection_Type"'):
            st, reason, detail = fault(_vm_from_ovf(box, f"thief-{kind}", _ovf(disk, section),
                                                    kind), box)
            assert (st, reason, detail) == (
                409, "Operation Failed",
                f"[Cannot add VM. Disks {disk_id} (vm owner) are attached to a VM or "
                "template already; a new one gets only disks of its own.]")
    st, _, detail = fault(_post_json(box, "templates", {
        "name": "thief-t", "initialization": {"configuration": {
            "type": "ovf", "data": _ovf(f'<Disk ovf:fileRef="{disk_id}/{image_id}"/>')}}}),
        box)
    assert st == 409 and detail.startswith(f"[Cannot add Template. Disks {disk_id} (vm owner)")
    st, _, detail = fault(_post_json(box, "vms", {
        "name": "thief-att", "cluster": {"name": "Default"},
        "disk_attachments": {"disk_attachment": [{"disk": {"id": disk_id}}]}}), box)
    assert st == 409 and detail.startswith(f"[Cannot add VM. Disks {disk_id} (vm owner)")
    assert not {"thief-ovf", "thief-ova", "thief-att"} & set(_vm_names(box))


def test_disk_outside_the_disk_section_is_refused(box, guard, victim):
    _, disk_id, image_id = victim
    ovf = (f'<ovf:Envelope xmlns:ovf="{OVF_NS}"><DiskSection/><Content><Name>x</Name>'
           f'<Disk ovf:fileRef="{disk_id}/{image_id}"/></Content></ovf:Envelope>')
    st, reason, detail = fault(_vm_from_ovf(box, "hidden", ovf), box)
    assert (st, reason, detail) == (
        400, "Operation Failed", "Cannot add from the OVF: a Disk element outside the "
        f"DiskSection (disk '{disk_id}/{image_id}')")
    assert "hidden" not in _vm_names(box)


@pytest.mark.parametrize("codec", ["utf-8", "utf-16-le", "utf-16-be"])
def test_ovf_with_a_dtd_is_refused(box, guard, codec):
    """The entity would have named the VM (ET expands internal entities)."""
    ovf = (f'<?xml version="1.0" encoding="{codec[:6].upper()}"?>'
           '<!DOCTYPE Envelope [<!ENTITY n "entity-name">]>'
           f'<Envelope xmlns="{OVF_NS}"><Content><Name>&n;</Name></Content></Envelope>')
    if codec != "utf-8":        # as text, a UTF-16 OVF is its characters
        ovf = ovf.encode(codec).decode("latin-1")
    body = json.dumps({"initialization": {"configuration": {"type": "ovf", "data": ovf}},
                       "cluster": {"name": "Default"}})
    st, reason, detail = fault(box.request("POST", "vms", body, "application/json"), box)
    assert st == 400 and detail.startswith("Cannot read the OVF: "), detail
    assert "entity-name" not in _vm_names(box)


def test_engine_ovf_escapes_os_type_and_names(box, guard, victim):
    """os.type is an OS name or refused at the door; texts become OVF text:
    markup in them stays text, and the OVF read back by POST /vms takes no
    disk it smuggled in."""
    _, disk_id, image_id = victim
    smuggle = (f'</Description></Section><Section xsi:type="ovf:DiskSection_Type">'
               f'<Disk ovf:fileRef="{disk_id}/{image_id}"/></Section><Section><Description>')
    st, _, detail = fault(_post_json(box, "vms", {"name": "os-smuggle", "os": {"type": smuggle},
                                                  "cluster": {"name": "Default"}}), box)
    assert st == 400 and detail.startswith("Invalid value ") and "for os.type" in detail
    name = 'a"b<c>&d'
    vm = _ok(_post_json(box, "vms", {"name": name, "description": smuggle, "comment": smuggle,
                                     "cluster": {"name": "Default"}}))["xml"]
    st, _, body = box.request("GET", f"vms/{vm.get('id')}?all_content=true")
    assert st == 200
    ovf = ET.fromstring(body).findtext("initialization/configuration/data")
    root = ET.fromstring(ovf)                     # well-formed
    names = [e.text for e in root.iter() if e.tag.endswith("Description")]
    assert smuggle in names
    assert [e.text for e in root.iter() if e.tag == "Comment"] == [smuggle]
    assert not [e for e in root.iter() if e.tag.endswith("Disk")]
    assert [e.text for e in root.iter() if e.tag == "Name"] == [name]
    new = _ok(_vm_from_ovf(box, f"copy-{uuid.uuid4().hex[:6]}", ovf))["xml"]
    assert _attached(box, new.get("id")) == []
    for v in (vm, new):
        assert box.request("DELETE", f"vms/{v.get('id')}")[0] == 200


def test_export_ovf_escapes_every_value():
    from imagetool.ova.ovfvm import OvfNic
    from imagetool.server.domain.ovf import build_export_ovf, parse_export_ovf
    from imagetool.server.domain.vmsettings import settings_of
    hostile = 'x"y\'z<w>&v</Description></Content>'
    ids = [str(uuid.uuid4()) for _ in range(5)]
    vm = {"id": ids[0], "name": hostile, "description": hostile, "os_type": hostile,
          "comment": hostile, "custom_properties": [["p", hostile]],
          "active_snapshot_id": ids[1], "memory": 1 << 30}
    disk = {"id": ids[2], "name": hostile, "description": hostile, "provisioned_size": 1 << 20,
            "sd_id": ids[3]}
    settings = settings_of(None, vm)
    settings.nics.append(OvfNic(name=hostile, network=hostile, profile=hostile,
                                mac="00:1a:4a:16:01:51"))
    ovf = build_export_ovf(vm, [{"disk": disk, "attachment": {"interface": hostile},
                                 "volumes": [{"id": ids[4], "format": "raw"}],
                                 "snapshots": []}], settings, cluster_name=hostile)
    got = parse_export_ovf(ovf)
    os_names = [e.findtext("Description") for e in ET.fromstring(ovf).iter()
                if e.get(f"{{{XSI}}}type") == "ovf:OperatingSystemSection_Type"]
    assert os_names == [hostile]
    # An OS name the engine does not know is read back as "other".
    assert (got["name"], got["os_type"]) == (hostile, "other")
    s = got["settings"]
    assert (s.description, s.comment, s.custom_properties) == (hostile, hostile,
                                                               [("p", hostile)])
    assert [(n.name, n.network, n.profile) for n in s.nics] == [(hostile,) * 3]
    assert list(got["disks"]) == [ids[2]]
    assert got["disks"][ids[2]]["alias"] == hostile
    assert got["disks"][ids[2]]["description"] == hostile


def _export_ovf(**vm) -> str:
    from imagetool.server.domain.ovf import build_export_ovf
    from imagetool.server.domain.vmsettings import settings_of
    ids = [str(uuid.uuid4()) for _ in range(4)]
    base = dict({"id": ids[0], "name": "v", "active_snapshot_id": ids[1], "memory": 1 << 30},
                **vm)
    disk = {"id": ids[2], "name": "d", "provisioned_size": 1 << 20, "sd_id": ids[3]}
    return build_export_ovf(base, [{
        "disk": disk, "attachment": {}, "volumes": [{"id": str(uuid.uuid4()),
                                                     "format": "raw"}]}],
        settings_of(None, base))


@pytest.mark.parametrize("old, new, message", [
    ("<rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>",
     "<rasd:AllocationUnits>byte * 2^60</rasd:AllocationUnits>", "is more than 16.00 TiB"),
    ("<rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>",
     "<rasd:AllocationUnits>byte" + " * 2^80" * 5000 + "</rasd:AllocationUnits>",
     "is longer than 64 characters"),
    ('ovf:capacity="1048576"', 'ovf:capacity="9" ovf:capacityAllocationUnits="byte * 2^40"',
     "9 x 'byte * 2^40' is more than 8.00 TiB"),
    ('ovf:capacity="1048576"', 'ovf:capacity="1' + "0" * 30 + '"', "is not a number"),
    ('<?xml version="1.0" encoding="UTF-8"?>',
     '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x "y">]>', "declares a DTD"),
])
def test_export_ovf_units_and_dtds_are_bounded(old, new, message):
    """The export domain's OVF goes through the same unit parser and DTD guard."""
    from imagetool.server.domain.ovf import parse_export_ovf
    ovf = _export_ovf()
    assert parse_export_ovf(ovf)["memory"] == 1 << 30
    assert old in ovf
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_export_ovf(ovf.replace(old, new, 1))
