"""The oVirt Python SDK's own examples, run unmodified against the local
engine: only their connection settings and object names are substituted.

The examples come from the ``ovirt-engine-sdk-python`` sdist (its
``examples/`` directory), fetched with pip at test time into a cache
directory (the sdk_examples fixture: $IMAGETOOL_SDK_CACHE, else ~/.cache) and
never kept in this repository. Each runs with ``sys.executable`` in its own
directory (the helpers-based ones read ``~/.config/ovirt.conf``, written
into a temporary $HOME); the test then judges the effect on the engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from helpers import qemu_compare as same
from helpers import sdk_vm_with_disk
from helpers import sdk_download as download
from helpers import MiB, qemu_img
from helpers import ENGINE_PASSWORD as PASSWORD
from helpers import qemu_io

sdk = pytest.importorskip("ovirtsdk4")
types = sdk.types
client = pytest.importorskip("ovirt_imageio.client")

pytestmark = pytest.mark.slow



def sub(text: str, old: str, new: str) -> str:
    """Replace every ``old`` (which must be there: a changed example fails loudly)."""
    assert old in text, f"{old!r} not in the example"
    return text.replace(old, new)


class Runner:
    """Copies an example, substitutes settings and names, runs it."""

    def __init__(self, examples, engine, tmp_path):
        self.engine = engine
        self.dir = tmp_path / "run"
        shutil.copytree(examples, self.dir)
        self.home = tmp_path / "home"
        (self.home / ".config").mkdir(parents=True)
        base = engine.url[:-len("/ovirt-engine/api")]
        (self.home / ".config" / "ovirt.conf").write_text(
            f"[engine]\nengine_url = {base}\nusername = admin@internal\n"
            f"password = {PASSWORD}\ncafile = {engine.cafile}\n")

    def run(self, name, names=(), args=()):
        path = self.dir / f"{name}.py"
        text = path.read_text()
        if "sdk.Connection(" in text and "url='" in text:
            text, n = re.subn(r"url='https://[^']*/ovirt-engine/api'",
                              lambda m: f"url={self.engine.url!r}", text)
            assert n == 1
            text = sub(text, "password='redhat123'", f"password={PASSWORD!r}")
            text = sub(text, "ca_file='ca.pem'", f"ca_file={self.engine.cafile!r}")
        for old, new in names:
            text = sub(text, old, new)
        path.write_text(text)
        env = dict(os.environ, HOME=str(self.home))
        cmd = [sys.executable, str(path)] + (["-c", "engine", *args] if args or
                                            "helpers import common" in text else [])
        res = subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True, env=env,
                             timeout=300)
        assert res.returncode == 0, f"{name} failed:\n{res.stdout}\n{res.stderr}"
        return res.stdout


@pytest.fixture
def runner(sdk_examples, engine, tmp_path):
    return Runner(sdk_examples, engine, tmp_path)










@pytest.fixture
def vm(connection, engine, tmp_path):
    """A VM with one uploaded disk: (vm, vm_service, disk, source image)."""
    with sdk_vm_with_disk(connection, engine, tmp_path, "ex") as made:
        yield made


def active_volume(engine, connection, disk_id):
    d = connection.system_service().disks_service().disk_service(disk_id).get()
    return os.path.join(engine.data_dir, d.storage_domains[0].id, "images", disk_id, d.image_id)


MYVM = ("'name=myvm'", None)


def vm_name(vm):
    return [("name=myvm", f"name={vm.name}")]


# --- snapshots ---------------------------------------------------------------------------

def test_add_and_list_vm_snapshots(runner, connection, vm):
    vm_, vm_service, disk, _ = vm
    runner.run("add_vm_snapshot", vm_name(vm_))
    snaps = {s.description: s for s in vm_service.snapshots_service().list()}
    assert snaps["My snapshot"].snapshot_status == types.SnapshotStatus.OK
    out = runner.run("list_vm_snapshots")
    assert f"{vm_.name}:My snapshot:{disk.name}:data" in out.splitlines()
    assert f"{vm_.name}:Active VM:{disk.name}:data" in out.splitlines()


def test_download_vm_ovf(runner, connection, vm):
    vm_, _, disk, _ = vm
    runner.run("download_vm_ovf", [("vm_name = 'myvm'", f"vm_name = {vm_.name!r}")])
    root = ET.parse(runner.dir / f"{vm_.id}.ovf").getroot()
    assert root.find(".//Name").text == vm_.name
    refs = [d.get("{http://schemas.dmtf.org/ovf/envelope/1/}fileRef") for d in root.iter("Disk")]
    image = connection.system_service().disks_service().disk_service(disk.id).get().image_id
    assert refs == [f"{disk.id}/{image}"]


def test_list_vm_disks(runner, vm):
    vm_, _, disk, _ = vm
    out = runner.run("list_vm_disks", vm_name(vm_))
    assert f"name: {disk.name}" in out and f"id: {disk.id}" in out
    assert f"provisioned_size: {4 * MiB}" in out and "status: ok" in out


def test_list_and_download_disk_snapshots(runner, connection, engine, tmp_path, vm):
    vm_, vm_service, disk, src = vm
    vm_service.snapshots_service().add(types.Snapshot(description="s", persist_memorystate=False))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x7a 0 128k", fmt="qcow2")
    out = runner.run("list_disk_snapshots", args=[disk.id])
    chain = json.loads(out)
    assert len(chain) == 2 and chain[0]["parent"] is None
    assert chain[1]["parent"] == chain[0]["id"]
    assert chain[1]["id"] == connection.system_service().disks_service().disk_service(
        disk.id).get().image_id

    dst = str(tmp_path / "snap.raw")
    runner.run("download_disk_snapshot", args=["data", chain[0]["id"], dst])
    same(dst, src)
    # The disk is usable again afterwards (the transfer was finalized).
    assert connection.system_service().disks_service().disk_service(
        disk.id).get().status == types.DiskStatus.OK


def test_clone_vm_from_snapshot(runner, connection, engine, tmp_path, vm):
    vm_, vm_service, disk, src = vm
    vm_service.snapshots_service().add(types.Snapshot(description=f"mysnap-{vm_.id[:8]}",
                                                      persist_memorystate=False))
    qemu_io(active_volume(engine, connection, disk.id), "write -P 0x7a 0 128k", fmt="qcow2")
    clone_name = f"clone-{vm_.name}"[:60]
    runner.run("clone_vm_from_snapshot", vm_name(vm_) + [
        ("'mysnap'", repr(f"mysnap-{vm_.id[:8]}")), ("'myclonedvm'", repr(clone_name)),
        ("'mycluster'", "'Default'")])
    vms = connection.system_service().vms_service()
    clone = vms.list(search=f"name={clone_name}")[0]
    clone_service = vms.vm_service(clone.id)
    try:
        att = clone_service.disk_attachments_service().list()[0]
        same(download(connection, engine, str(tmp_path / "c.qcow2"), att.disk.id), src)
    finally:
        clone_service.remove()


# --- export / import --------------------------------------------------------------------

def test_export_and_import_vm(runner, connection, engine, tmp_path, vm):
    vm_, vm_service, disk, src = vm
    system = connection.system_service()
    root = tmp_path / "exportdir"
    root.mkdir()
    sds = system.storage_domains_service()
    name = f"myexp-{vm_.id[:8]}"
    sd = sds.add(types.StorageDomain(
        name=name, type=types.StorageDomainType.EXPORT,
        storage=types.HostStorage(type=types.StorageType.NFS, address="nfs.example.com",
                                  path=str(root)),
        host=types.Host(name="local")))
    dc = system.data_centers_service().list()[0]
    attached = system.data_centers_service().data_center_service(
        dc.id).storage_domains_service()
    attached.add(types.StorageDomain(id=sd.id))
    expected = download(connection, engine, str(tmp_path / "before.qcow2"), disk.id)

    runner.run("export_vm", vm_name(vm_) + [("'myexport'", repr(name))])
    ovf = root / sd.id / "master" / "vms" / vm_.id / f"{vm_.id}.ovf"
    assert ET.parse(ovf).getroot().find(".//Name").text == vm_.name
    image = system.disks_service().disk_service(disk.id).get().image_id
    same(str(root / sd.id / "images" / disk.id / image), expected)

    vm_service.remove()
    runner.run("import_vm", [("'name=myexport'", repr(f"name={name}")),
                             ("'name=mydata'", "'name=data'"), ("'mycluster'", "'Default'")])
    back = system.vms_service().vm_service(vm_.id).get()
    assert back.name == vm_.name
    atts = system.vms_service().vm_service(vm_.id).disk_attachments_service().list()
    assert [a.disk.id for a in atts] == [disk.id]
    same(download(connection, engine, str(tmp_path / "after.qcow2"), disk.id), expected)

    sds.storage_domain_service(sd.id).vms_service().vm_service(vm_.id).remove()
    attached.storage_domain_service(sd.id).deactivate()
    attached.storage_domain_service(sd.id).remove()
    sds.storage_domain_service(sd.id).remove(format=True)
    assert os.listdir(root) == []


# --- disks -------------------------------------------------------------------------------

def test_extend_disk(runner, connection, engine, vm):
    vm_, vm_service, _, _ = vm
    disk_name = f"mydisk-{vm_.id[:8]}"
    runner.run("extend_disk", vm_name(vm_) + [("'mydisk'", repr(disk_name)),
                                              ("'bs-scsi-012'", "'data'")])
    disk = connection.system_service().disks_service().list(search=f"name={disk_name}")[0]
    assert disk.provisioned_size == 12 * 2**30 and disk.status == types.DiskStatus.OK
    info = json.loads(qemu_img("info", "--output=json",
                               active_volume(engine, connection, disk.id)))
    assert info["virtual-size"] == 12 * 2**30 and info["format"] == "qcow2"
    atts = vm_service.disk_attachments_service().list()
    assert disk.id in [a.disk.id for a in atts]


def test_sparsify_disk(runner, connection, engine, tmp_path):
    disks = connection.system_service().disks_service()
    name = f"mydisk-sp-{tmp_path.name}"[:50]
    disk = disks.add(types.Disk(name=name, format=types.DiskFormat.RAW,
                                provisioned_size=4 * MiB,
                                storage_domains=[types.StorageDomain(name="data")]))
    path = active_volume(engine, connection, disk.id)
    with open(path, "r+b") as f:
        f.write(b"\x11" * MiB + bytes(3 * MiB))
        os.fsync(f.fileno())
    before = os.stat(path).st_blocks * 512
    with open(path, "rb") as f:
        content = f.read()
    runner.run("sparsify_disk", [("'name=mydisk'", repr(f"name={name}"))])
    assert os.stat(path).st_blocks * 512 <= before - 3 * MiB
    with open(path, "rb") as f:
        assert f.read() == content
    disks.disk_service(disk.id).remove()
