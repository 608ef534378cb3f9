"""OVA export and the round trip to a second local engine."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import xml.etree.ElementTree as ET

import pytest

from helpers import MiB, qemu_check, qemu_compare
from ova_fixtures import SD, connect, make_sources, make_vm, second_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    eng = second_engine(str(tmp_path_factory.mktemp("engine2")))
    try:
        yield eng
    finally:
        eng.stop()


def _extract(ova: str, member: str, out: str) -> str:
    with tarfile.open(ova) as t:
        with t.extractfile(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def _checksum(path: str, algorithm: str) -> str:
    from imagetool.checksum import checksum_file
    return checksum_file(path, algorithm=algorithm)["checksum"]


def test_round_trip(conn, engine, target, scratch):
    from imagetool import export_ova, import_ova
    from imagetool.transfer.disk_checksum import disk_checksum
    sources = make_sources(scratch)
    vm, disks = make_vm(conn, sources, "rt-vm")
    ova = os.path.join(scratch, "rt.ova")

    r = export_ova(conn, "rt-vm", ova)

    assert r.path == ova and r.vm_id == vm.id and r.bytes > 0
    assert not os.path.exists(ova + ".imagetool-part")
    # The temporary snapshot is gone again.
    assert [s.snapshot_type for s in conn.snapshots.list(vm.id)] == ["active"]
    by_disk = {d.disk_id: d for d in r.disks}
    assert set(by_disk) == {d.id for d in disks.values()}
    with tarfile.open(ova) as t:
        names = t.getnames()
        info = {m.name: m for m in t.getmembers()}
        ovf = t.extractfile("vm.ovf").read()
    # The engine's layout: the OVF first, one member per disk named by image id.
    assert names[0] == "vm.ovf" and len(names) == 3
    assert b"xmlns:ovirt=" in ovf
    root = ET.fromstring(ovf)
    ns = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1"}
    files = {f.get(f"{{{ns['ovf']}}}href"): int(f.get(f"{{{ns['ovf']}}}size"))
             for f in root.findall("ovf:References/ovf:File", ns)}
    ovf_disks = {d.get(f"{{{ns['ovf']}}}diskId"): d.get(f"{{{ns['ovf']}}}fileRef")
                 for d in root.findall("ovf:DiskSection/ovf:Disk", ns)}
    for kind, d in disks.items():
        e = by_disk[d.id]
        member = e.member
        assert ovf_disks[d.id] == member and files[member] == info[member].size
        img = _extract(ova, member, os.path.join(scratch, f"{kind}.member"))
        qemu_check(img)
        qemu_compare(sources[kind], img)
        assert e.checksum.value == _checksum(sources[kind], e.checksum.algorithm)
        assert len(e.sha256) == 64
    assert [m["name"] for m in r.members] == names

    with connect(target) as conn2:
        out = import_ova(conn2, ova, SD)
        assert out.name == "rt-vm" and out.kind == "vm" and out.id
        got = {d.disk_id: d for d in out.disks}
        assert set(got) == set(by_disk)
        for disk_id, e in by_disk.items():
            assert got[disk_id].checksum == e.checksum
            remote = disk_checksum(conn2, disk_id, algorithm=e.checksum.algorithm)
            assert remote["checksum"] == e.checksum.value
        imported = conn2.vms.get(out.id, all_content=True)
        assert {a.disk_id for a in conn2.vms.disk_attachments(out.id)} == set(by_disk)
        for disk_id in by_disk:
            assert disk_id in imported.ovf


def test_export_of_named_snapshot_keeps_it(conn, scratch):
    from imagetool import export_ova
    from imagetool.checksum import checksum
    from imagetool.formats import open_image
    sources = make_sources(scratch, size=4 * MiB)
    vm, disks = make_vm(conn, {"raw": sources["raw"]}, "snap-vm")
    snap = conn.snapshots.add(vm.id, description="before")
    ova = os.path.join(scratch, "snap.ova")
    r = export_ova(conn, vm.id, ova, snapshot="before", manifest=True)
    assert snap.id in [s.id for s in conn.snapshots.list(vm.id)]
    with tarfile.open(ova) as t:
        names = t.getnames()
        mf = t.extractfile(names[-1]).read().decode()
    assert names[-1] == "snap-vm.mf"
    assert mf.splitlines() == [f"SHA256({m['name']})= {m['sha256']}"
                               for m in r.members[:-1]]
    m = tarfile.open(ova).getmember(r.disks[0].member)
    with open_image(ova, offset=m.offset_data, length=m.size) as b:
        assert checksum(b, algorithm=r.disks[0].checksum.algorithm)["checksum"] == \
            r.disks[0].checksum.value


def test_cli_export_json_and_info(cli, conn, engine_env, scratch):
    sources = make_sources(scratch, size=4 * MiB)
    make_vm(conn, {"qcow2": sources["qcow2"]}, "cli-vm")
    ova = os.path.join(scratch, "cli.ova")
    code, out, err = cli("ova", "export", "cli-vm", ova, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert set(r) >= {"path", "vm_id", "disks", "bytes", "seconds"}
    assert set(r["disks"][0]) >= {"disk_id", "member", "virtual_size", "checksum"}
    code, out, err = cli("ova", "export", "cli-vm", ova)
    assert code == 1 and "file exists" in err
    code, out, err = cli("ova", "info", ova, "--verify", "--json",
                         "--algorithm", r["disks"][0]["checksum"]["algorithm"])
    assert code == 0, err
    info = json.loads(out)
    assert info["name"] == "cli-vm" and info["dialect"] == "ovirt"
    assert [(d["member"], d["format"], d["virtual_size"], d["checksum"])
            for d in info["disks"]] == [(r["disks"][0]["member"], "qcow2",
                                         r["disks"][0]["virtual_size"],
                                         r["disks"][0]["checksum"])]
