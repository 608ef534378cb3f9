"""Storage domains added through the API and the export domain of the local
engine, driven with the real ovirtsdk4 over TLS: add (data, export, iso in a
local directory), attach, list, deactivate, detach, remove; VM export
(with and without discard_snapshots, exclusive), StorageDomainVms
list/get/import (clone, vm.name)/remove and their disk attachments.

An export domain must keep the layout vdsm gives one, so the files are
checked directly: the OVF parses and names the volumes, every volume is a
valid image (qemu-img check) with a vdsm ``.meta``, and guest data equals
the source (qemu-img compare)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import xml.etree.ElementTree as ET

import pytest

from helpers import qemu_compare as same
from helpers import sdk_vm_with_disk
from helpers import sdk_download as download
from helpers import sdk_finalize as finalize
from helpers import sdk_start_transfer as start_transfer
from helpers import MiB, OpenWatch, api_request, make_pattern_image, qemu_img, qemu_io

# Every test here starts engines or CLI processes: out of the quick loop.
pytestmark = pytest.mark.slow

sdk = pytest.importorskip("ovirtsdk4")
types = sdk.types
client = pytest.importorskip("ovirt_imageio.client")

OVF = "{http://schemas.dmtf.org/ovf/envelope/1/}"
XML = {"Content-Type": "application/xml"}










def fault(reply):
    status, _, body = reply
    return status, body.decode()


def tree(path):
    """Every file and directory below ``path`` (relative), sorted."""
    out = []
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            out.append(os.path.relpath(os.path.join(root, n), path))
    return sorted(out)


def add_domain(connection, name, sd_type, path, storage_type="localfs", attach=True):
    system = connection.system_service()
    sd = system.storage_domains_service().add(types.StorageDomain(
        name=name, type=types.StorageDomainType(sd_type),
        host=types.Host(name="local"),
        storage=types.HostStorage(type=types.StorageType(storage_type), path=str(path),
                                  address="nfs.example.com" if storage_type == "nfs" else None)))
    assert sd.status == types.StorageDomainStatus.UNATTACHED
    if attach:
        dc = system.data_centers_service().list()[0]
        attached = system.data_centers_service().data_center_service(
            dc.id).storage_domains_service().add(types.StorageDomain(id=sd.id))
        assert attached.status == types.StorageDomainStatus.ACTIVE
    return sd


def detach_and_remove(connection, sd, fmt=True):
    system = connection.system_service()
    dc = system.data_centers_service().list()[0]
    attached = system.data_centers_service().data_center_service(
        dc.id).storage_domains_service().storage_domain_service(sd.id)
    attached.deactivate()
    attached.remove()
    system.storage_domains_service().storage_domain_service(sd.id).remove(format=fmt)


@pytest.fixture
def export_sd(connection, tmp_path):
    """A fresh export domain in its own directory, attached; removed after."""
    root = tmp_path / "export-nfs"
    root.mkdir()
    sd = add_domain(connection, f"exp-{tmp_path.name}"[:50], "export", root, "nfs")
    yield sd, root / sd.id
    try:
        detach_and_remove(connection, sd)
    except sdk.Error:
        pass


@pytest.fixture
def vm_disk(connection, engine, tmp_path):
    """A VM with one uploaded qcow2 disk and a snapshot with a write after it."""
    with sdk_vm_with_disk(connection, engine, tmp_path, "x") as (vm, vm_service, disk, src):
        snap = vm_service.snapshots_service().add(types.Snapshot(
            description="before-write", persist_memorystate=False))
        d = connection.system_service().disks_service().disk_service(disk.id).get()
        top = os.path.join(engine.data_dir, d.storage_domains[0].id, "images", disk.id,
                           d.image_id)
        qemu_io(top, "write -P 0x7a 512k 256k", fmt="qcow2")
        now = download(connection, engine, str(tmp_path / "now.qcow2"), disk.id)
        yield vm_service, vm, disk, src, now, snap


def read_meta(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[-1] == "EOF" and os.path.getsize(path) <= 512
    return dict(line.split("=", 1) for line in lines[:-1])


# --- domains ---------------------------------------------------------------------------

def test_domains_added_in_a_local_directory_have_vdsm_layout(connection, engine, tmp_path):
    system = connection.system_service()
    for sd_type in ("data", "export", "iso"):
        root = tmp_path / sd_type
        root.mkdir()
        sd = add_domain(connection, f"{sd_type}-{tmp_path.name}"[:50], sd_type, root,
                        attach=sd_type != "iso")
        top = root / sd.id
        expected = {"dom_md", "dom_md/metadata", "images"}
        if sd_type == "export":
            expected |= {"master", "master/vms"}
        assert set(tree(top)) == expected
        assert stat.S_IMODE(os.stat(top).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(top / "dom_md" / "metadata").st_mode) == 0o600
        lines = (top / "dom_md" / "metadata").read_text().splitlines()
        fields = dict(line.split("=", 1) for line in lines)
        body = [line for line in lines if not line.startswith("_SHA_CKSUM=")]
        assert body == sorted(body)
        assert fields["_SHA_CKSUM"] == hashlib.sha1("".join(body).encode()).hexdigest()
        assert fields["SDUUID"] == sd.id
        assert fields["CLASS"] == {"data": "Data", "export": "Backup", "iso": "Iso"}[sd_type]
        got = system.storage_domains_service().storage_domain_service(sd.id).get()
        assert got.type == types.StorageDomainType(sd_type)
        assert got.storage.path == str(root)
        if sd_type == "iso":
            assert got.status == types.StorageDomainStatus.UNATTACHED
            system.storage_domains_service().storage_domain_service(sd.id).remove(format=True)
        else:
            dc = system.data_centers_service().list()[0]
            assert fields["POOL_UUID"] == dc.id
            listed = system.data_centers_service().data_center_service(
                dc.id).storage_domains_service().list()
            assert sd.id in {s.id for s in listed}
            detach_and_remove(connection, sd)
        assert not top.exists() and root.exists()


def test_data_domain_in_a_directory_holds_disks(connection, engine, tmp_path):
    root = tmp_path / "data2"
    root.mkdir()
    sd = add_domain(connection, f"d2-{tmp_path.name}"[:50], "data", root)
    disks = connection.system_service().disks_service()
    src = make_pattern_image(str(tmp_path / "s.qcow2"), "qcow2")
    disk = disks.add(types.Disk(name="in-d2", format=types.DiskFormat.COW,
                                provisioned_size=4 * MiB,
                                storage_domains=[types.StorageDomain(id=sd.id)]))
    t = start_transfer(connection, "upload", disk.id)
    client.upload(src, t.transfer_url, engine.cafile)
    finalize(connection, t)
    d = disks.disk_service(disk.id).get()
    assert os.path.isfile(root / sd.id / "images" / disk.id / d.image_id)
    same(download(connection, engine, str(tmp_path / "o.qcow2"), disk.id), src)
    # A domain holding disks is neither detached nor removed.
    system = connection.system_service()
    dc = system.data_centers_service().list()[0]
    attached = system.data_centers_service().data_center_service(
        dc.id).storage_domains_service().storage_domain_service(sd.id)
    with pytest.raises(sdk.Error, match="active: deactivate"):
        attached.remove()
    attached.deactivate()
    with pytest.raises(sdk.Error, match="holds disks"):
        attached.remove()
    attached.activate()
    disks.disk_service(disk.id).remove()
    detach_and_remove(connection, sd)
    assert not (root / sd.id).exists()


@pytest.mark.parametrize("path, code, why", [
    ("relative/dir", 400, "Directory 'relative/dir' is not an absolute path."),
    ("/", 409, "Directory / is not one this engine may write to (allowed: the "
               "--storage-dir directories and their subdirectories)."),
    ("/srv/imagetool-test-dir", 409, "Directory /srv/imagetool-test-dir is not one this "
                                     "engine may write to"),
    ("MISSING", 409, "is not an existing directory on the host."),
    ("FILE", 409, "is not an existing directory on the host."),
    ("LINKOUT", 409, "is not one this engine may write to"),
    ("DATA", 400, "inside the engine's data directory"),
    ("DATASUB", 400, "inside the engine's data directory"),
])
def test_bad_domain_paths_are_refused(connection, engine, tmp_path, path, code, why):
    """Only directories below a ``serve --storage-dir`` (the engine of these
    tests allows pytest's base temporary directory), symlinks resolved, and
    not the data directory: nothing is created anywhere else."""
    f = tmp_path / "a-file"
    f.write_text("x")
    outside = tempfile.mkdtemp(prefix="imagetool-outside-", dir="/var/tmp")
    (tmp_path / "link-out").symlink_to(outside)
    path = {"FILE": str(f), "DATA": engine.data_dir, "MISSING": str(tmp_path / "nope"),
            "LINKOUT": str(tmp_path / "link-out"),
            "DATASUB": next(os.path.join(engine.data_dir, n) for n in
                            sorted(os.listdir(engine.data_dir))
                            if os.path.isdir(os.path.join(engine.data_dir, n)))
            }.get(path, path)
    before = tree(engine.data_dir)
    body = (f"<storage_domain><name>bad</name><type>export</type><storage><type>localfs</type>"
            f"<path>{path}</path></storage></storage_domain>")
    status, text = fault(api_request(engine, "POST", "storagedomains", body, XML))
    assert status == code and why in text, text
    assert "Traceback" not in text and not os.path.exists("/srv/imagetool-test-dir")
    assert os.listdir(outside) == []
    os.rmdir(outside)
    assert "bad" not in {s.name for s in
                         connection.system_service().storage_domains_service().list()}
    assert set(tree(engine.data_dir)) - set(before) <= {"inventory.db-wal", "inventory.db-shm"}


def test_engine_without_storage_dirs_adds_no_domain(connection, engine, tmp_path,
                                                    monkeypatch):
    """With no ``serve --storage-dir`` every path is refused, saying why."""
    monkeypatch.setattr(engine.server, "storage_dirs", [])
    body = (f"<storage_domain><name>nodir</name><type>data</type><storage><type>localfs"
            f"</type><path>{tmp_path}</path></storage></storage_domain>")
    status, text = fault(api_request(engine, "POST", "storagedomains", body, XML))
    assert status == 409
    assert ("[Cannot add Storage Domain. This engine keeps storage domains only in its data "
            "directory: it was started without --storage-dir.]") in text
    assert os.listdir(tmp_path) == []
    assert "nodir" not in {s.name for s in
                           connection.system_service().storage_domains_service().list()}


def test_bad_domain_types_and_duplicate_names(connection, engine, tmp_path):
    for body, code, why in [
        ("<storage_domain><name>x</name><type>image</type><storage><type>localfs</type>"
         f"<path>{tmp_path}</path></storage></storage_domain>", 400, "storage domain type"),
        ("<storage_domain><name>x</name><type>data</type><storage><type>iscsi</type>"
         f"<path>{tmp_path}</path></storage></storage_domain>", 400, "storage type"),
        ("<storage_domain><name>data</name><type>data</type><storage><type>localfs</type>"
         f"<path>{tmp_path}</path></storage></storage_domain>", 409, "already in use"),
        ("<storage_domain><name>x</name><type>data</type></storage_domain>", 400, "storage"),
    ]:
        status, text = fault(api_request(engine, "POST", "storagedomains", body, XML))
        assert status == code and why in text, text
    assert os.listdir(tmp_path) == []


# --- export ----------------------------------------------------------------------------

def test_export_keeps_chain_and_snapshots(connection, engine, tmp_path, export_sd, vm_disk):
    sd, top_dir = export_sd
    vm_service, vm, disk, src, now, snap = vm_disk
    vm_service.export(storage_domain=types.StorageDomain(name=sd.name), exclusive=False,
                      discard_snapshots=False)
    ovf_file = top_dir / "master" / "vms" / vm.id / f"{vm.id}.ovf"
    root = ET.parse(ovf_file).getroot()
    assert root.find(".//Name").text == vm.name
    vols = {d.get(f"{OVF}diskId"): d for d in root.iter("Disk")}
    assert len(vols) == 2
    d = connection.system_service().disks_service().disk_service(disk.id).get()
    top = vols[d.image_id]
    base_id = top.get(f"{OVF}parentRef").split("/")[1]
    assert vols[base_id].get(f"{OVF}parentRef") == ""
    assert vols[base_id].get(f"{OVF}vm_snapshot_id") == snap.id
    assert "before-write" in [e.text for e in root.iter("Description")]
    images = top_dir / "images" / disk.id
    assert sorted(os.listdir(images)) == sorted([base_id, base_id + ".meta", d.image_id,
                                                 d.image_id + ".meta"])
    meta_top, meta_base = read_meta(images / f"{d.image_id}.meta"), read_meta(
        images / f"{base_id}.meta")
    assert meta_top["PUUID"] == base_id and meta_top["VOLTYPE"] == "LEAF"
    assert meta_base["PUUID"] == "00000000-0000-0000-0000-000000000000"
    assert meta_base["VOLTYPE"] == "INTERNAL" and meta_top["CAP"] == str(4 * MiB)
    assert meta_top["IMAGE"] == disk.id and meta_top["DOMAIN"] == sd.id
    for v in (base_id, d.image_id):
        qemu_img("check", str(images / v))
        assert stat.S_IMODE(os.stat(images / v).st_mode) == 0o600
    # The exported chain reads as the VM's disk does now; its base as the snapshot.
    same(str(images / d.image_id), now)
    same(str(images / base_id), src)
    # No staging directories left behind.
    assert os.listdir(top_dir / "images") == [disk.id]

    # Listed with its disk attachments.
    vms = connection.system_service().storage_domains_service().storage_domain_service(
        sd.id).vms_service()
    assert [v.id for v in vms.list()] == [vm.id]
    got = vms.vm_service(vm.id).get()
    assert got.name == vm.name
    atts = vms.vm_service(vm.id).disk_attachments_service().list()
    assert [a.id for a in atts] == [disk.id]

    # Again without exclusive: refused, the files as they were.
    before = {p: os.stat(top_dir / p).st_mtime_ns for p in tree(top_dir)}
    with pytest.raises(sdk.Error) as e:
        vm_service.export(storage_domain=types.StorageDomain(id=sd.id))
    assert e.value.code == 409 and "exclusive" in str(e.value)
    assert {p: os.stat(top_dir / p).st_mtime_ns for p in tree(top_dir)} == before
    # With exclusive (and collapsed): replaced by one volume.
    vm_service.export(storage_domain=types.StorageDomain(id=sd.id), exclusive=True,
                      discard_snapshots=True)
    assert sorted(os.listdir(images)) == [d.image_id, d.image_id + ".meta"]
    assert read_meta(images / f"{d.image_id}.meta")["PUUID"] == \
        "00000000-0000-0000-0000-000000000000"
    info = json.loads(qemu_img("info", "--output=json", str(images / d.image_id)))
    assert "backing-filename" not in info
    same(str(images / d.image_id), now)


def test_export_then_import_same_and_clone(connection, engine, tmp_path, export_sd, vm_disk):
    sd, top_dir = export_sd
    vm_service, vm, disk, src, now, snap = vm_disk
    vm_service.export(storage_domain=types.StorageDomain(id=sd.id))
    system = connection.system_service()
    vms = system.storage_domains_service().storage_domain_service(sd.id).vms_service()
    data_sd = system.storage_domains_service().list(search="name=data")[0]
    cluster = system.clusters_service().list()[0]

    # The VM still exists: a plain import is refused, nothing created.
    n_disks = len(system.disks_service().list())
    with pytest.raises(sdk.Error) as e:
        vms.vm_service(vm.id).import_(storage_domain=types.StorageDomain(id=data_sd.id),
                                      cluster=types.Cluster(id=cluster.id))
    assert e.value.code == 409 and "already exists" in str(e.value)
    # A clone of a VM with snapshots needs collapse_snapshots.
    with pytest.raises(sdk.Error) as e:
        vms.vm_service(vm.id).import_(storage_domain=types.StorageDomain(id=data_sd.id),
                                      cluster=types.Cluster(id=cluster.id), clone=True,
                                      vm=types.Vm(name="the-clone"))
    assert e.value.code == 409 and "collapse_snapshots" in str(e.value)
    assert len(system.disks_service().list()) == n_disks

    vms.vm_service(vm.id).import_(storage_domain=types.StorageDomain(id=data_sd.id),
                                  cluster=types.Cluster(id=cluster.id), clone=True,
                                  collapse_snapshots=True, vm=types.Vm(name=f"cl-{vm.name}"))
    clone = system.vms_service().list(search=f"name=cl-{vm.name}")[0]
    assert clone.id != vm.id
    clone_service = system.vms_service().vm_service(clone.id)
    catts = clone_service.disk_attachments_service().list()
    assert len(catts) == 1 and catts[0].disk.id != disk.id
    assert [s.description for s in clone_service.snapshots_service().list()] == ["Active VM"]
    same(download(connection, engine, str(tmp_path / "clone.qcow2"), catts[0].disk.id), now)
    clone_service.remove()

    # Remove the source VM, then import it as it was: same ids, chain and snapshot.
    vm_service.remove()
    vms.vm_service(vm.id).import_(storage_domain=types.StorageDomain(id=data_sd.id),
                                  cluster=types.Cluster(id=cluster.id))
    back = system.vms_service().vm_service(vm.id)
    assert back.get().name == vm.name
    assert [a.disk.id for a in back.disk_attachments_service().list()] == [disk.id]
    snaps = {s.description: s for s in back.snapshots_service().list()}
    assert snaps["before-write"].id == snap.id
    layers = system.disks_service().disk_service(disk.id).disk_snapshots_service().list()
    assert len(layers) == 2
    same(download(connection, engine, str(tmp_path / "back.qcow2"), disk.id), now)
    snap_disk = back.snapshots_service().snapshot_service(snap.id).disks_service().list()[0]
    base = next(s for s in layers if s.parent is None)
    assert snap_disk.image_id == base.id
    # Still on the export domain until removed from it.
    vms.vm_service(vm.id).remove()
    assert vms.list() == []
    assert os.listdir(top_dir / "master" / "vms") == []
    assert os.listdir(top_dir / "images") == []


def test_export_to_unattached_or_data_domain_is_refused(connection, engine, tmp_path,
                                                        vm_disk):
    vm_service, vm, disk, src, now, snap = vm_disk
    root = tmp_path / "loose"
    root.mkdir()
    sd = add_domain(connection, f"loose-{tmp_path.name}"[:50], "export", root, attach=False)
    before = tree(root)
    with pytest.raises(sdk.Error) as e:
        vm_service.export(storage_domain=types.StorageDomain(id=sd.id))
    assert e.value.code == 409 and "not attached" in str(e.value)
    assert tree(root) == before
    with pytest.raises(sdk.Error) as e:
        vm_service.export(storage_domain=types.StorageDomain(name="data"))
    assert e.value.code == 409 and "not an export domain" in str(e.value)
    status, text = fault(api_request(engine, "GET", f"storagedomains/{sd.id}/vms"))
    assert status == 409 and "not attached" in text
    with pytest.raises(sdk.Error) as e:
        vm_service.export(storage_domain=types.StorageDomain(name="no-such-domain"))
    assert e.value.code == 404
    connection.system_service().storage_domains_service().storage_domain_service(
        sd.id).remove(format=True)


def test_export_of_vm_with_locked_disk_is_refused(connection, engine, export_sd, vm_disk):
    sd, top_dir = export_sd
    vm_service, vm, disk, *_ = vm_disk
    t = start_transfer(connection, "download", disk.id)
    try:
        with pytest.raises(sdk.Error) as e:
            vm_service.export(storage_domain=types.StorageDomain(id=sd.id))
        assert e.value.code == 409 and "locked" in str(e.value)
    finally:
        finalize(connection, t)
    assert os.listdir(top_dir / "images") == [] and os.listdir(top_dir / "master/vms") == []


def test_unusable_ovf_on_export_domain(connection, engine, export_sd):
    """Another tool wrote a VM whose OVF names a path: listed without it, 409 on get."""
    sd, top_dir = export_sd
    vm_id = "0b5e7d52-1111-4222-8333-444455556666"
    d = top_dir / "master" / "vms" / vm_id
    d.mkdir(parents=True)
    (d / f"{vm_id}.ovf").write_text(
        '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><Section xsi:type="ovf:DiskSection_Type">'
        '<Disk ovf:diskId="x" ovf:fileRef="../../etc/passwd"/></Section>'
        f'<Content><Section ovf:id="{vm_id}" xsi:type="ovf:OperatingSystemSection_Type"/>'
        '</Content></ovf:Envelope>')
    vms = connection.system_service().storage_domains_service().storage_domain_service(
        sd.id).vms_service()
    assert vms.list() == []
    status, text = fault(api_request(engine, "GET", f"storagedomains/{sd.id}/vms/{vm_id}"))
    assert status == 409 and "unusable" in text
    status, text = fault(api_request(
        engine, "GET", f"storagedomains/{sd.id}/vms/6f1b3c52-0000-4000-8000-000000000001"))
    assert status == 404


def test_export_never_writes_over_files_it_does_not_own(connection, engine, export_sd,
                                                        vm_disk):
    """A directory for the VM that the domain cannot read, or a disk directory
    left by something else, makes the export a 409 with those files untouched."""
    sd, top_dir = export_sd
    vm_service, vm, disk, *_ = vm_disk
    vm_dir = top_dir / "master" / "vms" / vm.id
    vm_dir.mkdir()
    (vm_dir / f"{vm.id}.ovf").write_text("not an OVF")
    for exclusive in (False, True):
        with pytest.raises(sdk.Error) as e:
            vm_service.export(storage_domain=types.StorageDomain(id=sd.id),
                              exclusive=exclusive)
        assert e.value.code == 409 and "cannot read" in str(e.value)
        assert (vm_dir / f"{vm.id}.ovf").read_text() == "not an OVF"
    (vm_dir / f"{vm.id}.ovf").unlink()
    vm_dir.rmdir()
    other = top_dir / "images" / disk.id
    other.mkdir()
    (other / "keep").write_text("mine")
    with pytest.raises(sdk.Error) as e:
        vm_service.export(storage_domain=types.StorageDomain(id=sd.id))
    assert e.value.code == 409 and "already holds files" in str(e.value)
    assert tree(top_dir / "images") == [disk.id, f"{disk.id}/keep"]
    assert os.listdir(top_dir / "master" / "vms") == []


# --- hostile export domains ------------------------------------------------------------
# Another tool, host or user writes an export domain: links out of it, hard
# links to host files and lying metadata must be refused with a one-line
# reason, without reading the host file, writing outside the domain or
# changing any disk of the engine.

SECRET = b"-----BEGIN PRIVATE KEY----- stand-in for pki/server.key\n" * 2048


def snapshot_of(path):
    """(relative path, size, mtime) of everything below ``path``."""
    out = []
    for rel in tree(path):
        st = os.lstat(os.path.join(path, rel))
        out.append((rel, st.st_size, st.st_mtime_ns))
    return out


def engine_disks(engine):
    """Every disk row of the engine and its files in the data domain."""
    status, _, body = api_request(engine, "GET", "disks")
    assert status == 200
    ids = sorted(d.get("id") for d in ET.fromstring(body).iter("disk"))
    return ids, snapshot_of(engine.data_dir + "/" + data_domain_id(engine))


def data_domain_id(engine):
    status, _, body = api_request(engine, "GET", "storagedomains")
    return next(s.get("id") for s in ET.fromstring(body).iter("storage_domain")
                if s.findtext("name") == "data")


IMPORT = ("<action><storage_domain><name>data</name></storage_domain>"
          "<cluster><name>Default</name></cluster><clone>true</clone>"
          "<collapse_snapshots>true</collapse_snapshots><vm><name>{name}</name></vm>"
          "</action>")


@pytest.fixture
def exported(connection, engine, tmp_path, export_sd, vm_disk):
    """The VM exported (one collapsed volume per disk), a secret host file
    outside the domain, and a function that runs the import and asserts it
    is refused without reading the secret or changing any disk."""
    sd, top_dir = export_sd
    vm_service, vm, disk, src, now, snap = vm_disk
    vm_service.export(storage_domain=types.StorageDomain(id=sd.id), discard_snapshots=True)
    image_id = connection.system_service().disks_service().disk_service(disk.id).get().image_id
    secret = tmp_path / "host" / "server.key"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    vol = top_dir / "images" / disk.id / image_id

    def refused(code, why, watch=(str(secret),)):
        before = engine_disks(engine)
        with OpenWatch(*watch) as w:
            status, text = fault(api_request(
                engine, "POST", f"storagedomains/{sd.id}/vms/{vm.id}/import",
                IMPORT.format(name=f"imp-{tmp_path.name}"[:60]), XML))
            assert w.touched() == 0, "the host file was read"
        detail = ET.fromstring(text).findtext("detail")
        assert status == code, text
        assert why in detail and "\n" not in detail and "Traceback" not in text, detail
        assert engine_disks(engine) == before          # no disk row, no file, none changed
        assert secret.read_bytes() == SECRET
        return detail

    return sd, top_dir, vm, disk, vol, secret, refused


def test_import_refuses_a_volume_linked_to_a_host_file(exported):
    sd, top_dir, vm, disk, vol, secret, refused = exported
    vol.unlink()
    vol.symlink_to(secret)
    detail = refused(409, f"images/{disk.id}/{vol.name} is a symbolic link")
    assert f"Export domain {sd.name}" in detail


def test_import_refuses_a_volume_hard_linked_to_a_host_file(exported):
    sd, top_dir, vm, disk, vol, secret, refused = exported
    vol.unlink()
    os.link(secret, vol)
    refused(409, f"images/{disk.id}/{vol.name} is a hard link (2 names for one file)")


def test_import_refuses_a_linked_meta(exported):
    sd, top_dir, vm, disk, vol, secret, refused = exported
    meta = vol.with_name(vol.name + ".meta")
    elsewhere = secret.parent / "meta"
    os.rename(meta, elsewhere)                  # a valid .meta, outside the domain
    meta.symlink_to(elsewhere)
    refused(409, f"images/{disk.id}/{vol.name}.meta is a symbolic link",
            watch=(str(secret), str(elsewhere)))


def test_import_refuses_a_linked_disk_directory(exported):
    sd, top_dir, vm, disk, vol, secret, refused = exported
    elsewhere = secret.parent / "disk"
    os.rename(vol.parent, elsewhere)
    (elsewhere / vol.name).unlink()
    os.link(secret, elsewhere / vol.name)        # even a plain file there is not read
    vol.parent.symlink_to(elsewhere)
    refused(409, f"images/{disk.id} is a symbolic link")


def test_import_refuses_a_linked_images_directory(exported):
    sd, top_dir, vm, disk, vol, secret, refused = exported
    elsewhere = secret.parent / "images"
    os.rename(top_dir / "images", elsewhere)
    (top_dir / "images").symlink_to(elsewhere)
    refused(409, "images is a symbolic link")


def test_linked_vm_directory_is_not_read(exported, engine):
    sd, top_dir, vm, disk, vol, secret, refused = exported
    vm_dir = top_dir / "master" / "vms" / vm.id
    elsewhere = secret.parent / "vm"
    os.rename(vm_dir, elsewhere)
    vm_dir.symlink_to(elsewhere)
    ovf = str(elsewhere / f"{vm.id}.ovf")
    refused(409, f"master/vms/{vm.id} is a symbolic link", watch=(str(secret), ovf))
    with OpenWatch(ovf) as w:
        status, _, body = api_request(engine, "GET", f"storagedomains/{sd.id}/vms")
        assert status == 200 and vm.id not in body.decode()
        assert w.touched() == 0


@pytest.mark.parametrize("claim, why", [
    (str(9 << 40), "claims a size of 9895604649984 bytes: a disk holds 1 byte to 8 TiB"),
    (str(10 ** 30), f"claims a size of {10 ** 30} bytes: a disk holds 1 byte to 8 TiB"),
    ("0", "claims a size of 0 bytes"),
    (str(MiB), f"holds {4 * MiB} bytes, more than the {MiB} its metadata claims"),
])
def test_import_refuses_lying_metadata(exported, claim, why):
    sd, top_dir, vm, disk, vol, secret, refused = exported
    meta = vol.with_name(vol.name + ".meta")
    text = meta.read_text()
    meta.write_text("".join(f"CAP={claim}\n" if line.startswith("CAP=") else line + "\n"
                            for line in text.splitlines()))
    detail = refused(409, why)
    assert disk.id in detail


def test_import_refuses_a_volume_with_an_external_data_file(exported):
    """A qcow2 whose header names the host file as its data file."""
    sd, top_dir, vm, disk, vol, secret, refused = exported
    vol.unlink()
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on",
             str(vol), str(4 * MiB))
    secret.write_bytes(SECRET)                   # qemu-img truncated it: put it back
    refused(409, f"Volume {vol.name} of disk {disk.id} on export domain {sd.name} is not "
                 "a usable qcow2 image")


@pytest.mark.parametrize("linked", ["images", "master"])
def test_export_refuses_a_domain_linked_out(connection, exported, linked):
    """``images/`` or ``master/`` linked out of the domain: an export writes nothing."""
    sd, top_dir, vm, disk, vol, secret, refused = exported
    elsewhere = secret.parent / linked
    os.rename(top_dir / linked, elsewhere)
    (top_dir / linked).symlink_to(elsewhere)
    before = snapshot_of(secret.parent)
    vm_service = connection.system_service().vms_service().vm_service(vm.id)
    with pytest.raises(sdk.Error) as e:
        vm_service.export(storage_domain=types.StorageDomain(id=sd.id), exclusive=True)
    assert e.value.code == 409
    assert f"Export domain {sd.name}: {linked} is a symbolic link" in str(e.value)
    assert snapshot_of(secret.parent) == before
    assert [d.status for d in connection.system_service().disks_service().list(
        search=f"id={disk.id}")] == [types.DiskStatus.OK]
