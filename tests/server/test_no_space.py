"""The local engine on a file system that runs out of space: each error names
the file it could not write ("<file>: No space left on device"), never a
bare "[Errno 28] No space left on device", and leaves nothing behind.

The storage domains live on a 2 MiB tmpfs (mounting one needs root: the
module is skipped otherwise)."""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
from urllib.parse import urlsplit

import pytest

from helpers import (ENGINE_PASSWORD, MiB, api_json, api_request, make_random_raw, put_file,
                     wait_for)

pytestmark = pytest.mark.slow

sdk = pytest.importorskip("ovirtsdk4")
types = sdk.types
XML = {"Content-Type": "application/xml"}
NO_SPACE = "No space left on device"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(engine, sdk connection, tmpfs mount, data domain id, export domain id)."""
    from imagetool.server.local import LocalEngine
    mnt = tmp_path_factory.mktemp("tiny")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    eng = LocalEngine(str(tmp_path_factory.mktemp("engine")), password=ENGINE_PASSWORD,
                      storage_dirs=[str(mnt)])
    try:
        eng.start()
        con = sdk.Connection(url=eng.url, username="admin@internal", password=ENGINE_PASSWORD,
                             ca_file=eng.cafile)
        system = con.system_service()
        dc = system.data_centers_service().list()[0]
        ids = []
        for name, sd_type in (("tiny-data", "data"), ("tiny-export", "export")):
            sd = system.storage_domains_service().add(types.StorageDomain(
                name=name, type=types.StorageDomainType(sd_type), host=types.Host(name="local"),
                storage=types.HostStorage(type=types.StorageType.LOCALFS, path=str(mnt))))
            system.data_centers_service().data_center_service(
                dc.id).storage_domains_service().add(types.StorageDomain(id=sd.id))
            ids.append(sd.id)
        yield eng, con, str(mnt), *ids
        con.close()
    finally:
        eng.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def files_below(path):
    return sorted(os.path.relpath(os.path.join(r, n), path)
                  for r, ds, fs in os.walk(path) for n in ds + fs)


def test_upload_past_the_space_names_the_volume(small, tmp_path):
    eng, con, mnt, data_sd, _ = small
    status, disk = api_json(eng, "POST", "disks", {
        "name": "fills", "format": "raw", "provisioned_size": 4 * MiB,
        "storage_domains": {"storage_domain": [{"id": data_sd}]}})
    assert status == 201, disk
    status, t = api_json(eng, "POST", "imagetransfers", {
        "disk": {"id": disk["id"]}, "direction": "upload", "format": "raw"})
    assert status == 201, t
    t = wait_for(lambda: api_json(eng, "GET", f"imagetransfers/{t['id']}")[1],
                 lambda t: t["phase"] == "transferring")
    data = os.urandom(4 * MiB)
    parts = urlsplit(t["transfer_url"])
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=30,
                                       context=ssl.create_default_context(cafile=eng.cafile))
    try:
        conn.request("PUT", parts.path, body=data,
                     headers={"Content-Range": f"bytes 0-{len(data) - 1}/*"})
        resp = conn.getresponse()
        text = resp.read().decode().strip()
    finally:
        conn.close()
    assert resp.status == 507, text
    volume = f"{mnt}/{data_sd}/images/{disk['id']}/"
    assert text.startswith(f"Cannot write: {volume}") and text.endswith(f": {NO_SPACE}"), text
    status, _, _ = api_request(eng, "POST", f"imagetransfers/{t['id']}/cancel", "<action/>",
                               XML)
    assert status == 200
    wait_for(lambda: api_json(eng, "GET", f"disks/{disk['id']}"),
             lambda r: r[0] == 404, timeout=30)   # a disk created for the upload goes


def test_export_names_the_file_and_leaves_nothing(small, tmp_path):
    eng, con, mnt, _, export_sd = small
    system = con.system_service()
    src = make_random_raw(str(tmp_path / "src.raw"), 4 * MiB, seed=3)
    disk = system.disks_service().add(types.Disk(
        name="big", format=types.DiskFormat.RAW, provisioned_size=4 * MiB,
        storage_domains=[types.StorageDomain(name="data")]))
    t = system.image_transfers_service().add(types.ImageTransfer(
        disk=types.Disk(id=disk.id), direction=types.ImageTransferDirection.UPLOAD))
    t = wait_for(system.image_transfers_service().image_transfer_service(t.id).get,
                 lambda t: t.phase == types.ImageTransferPhase.TRANSFERRING)
    put_file(t.transfer_url, eng.cafile, src)
    system.image_transfers_service().image_transfer_service(t.id).finalize()
    wait_for(lambda: system.disks_service().disk_service(disk.id).get().status,
             lambda s: s == types.DiskStatus.OK)
    vm = system.vms_service().add(types.Vm(name="fat", cluster=types.Cluster(name="Default")))
    vm_service = system.vms_service().vm_service(vm.id)
    vm_service.disk_attachments_service().add(types.DiskAttachment(
        disk=types.Disk(id=disk.id), interface=types.DiskInterface.VIRTIO_SCSI, active=True))
    before = files_below(os.path.join(mnt, export_sd))
    with pytest.raises(sdk.Error) as e:
        vm_service.export(storage_domain=types.StorageDomain(id=export_sd))
    assert e.value.code == 409
    msg = str(e.value)
    assert f"Cannot export: {mnt}/{export_sd}/images/" in msg and f": {NO_SPACE}." in msg, msg
    assert "Errno" not in msg
    assert files_below(os.path.join(mnt, export_sd)) == before
    assert system.disks_service().disk_service(disk.id).get().status == types.DiskStatus.OK


def _filled_disk(system, eng, sd_id, name, data: bytes, tmp_path):
    """A raw disk on domain ``sd_id`` holding ``data``."""
    src = tmp_path / f"{name}.raw"
    src.write_bytes(data)
    disk = system.disks_service().add(types.Disk(
        name=name, format=types.DiskFormat.RAW, provisioned_size=len(data), sparse=True,
        storage_domains=[types.StorageDomain(id=sd_id)]))
    wait_for(lambda: system.disks_service().disk_service(disk.id).get().status,
             lambda s: s == types.DiskStatus.OK)
    t = system.image_transfers_service().add(types.ImageTransfer(
        disk=types.Disk(id=disk.id), direction=types.ImageTransferDirection.UPLOAD))
    t = wait_for(system.image_transfers_service().image_transfer_service(t.id).get,
                 lambda t: t.phase == types.ImageTransferPhase.TRANSFERRING)
    put_file(t.transfer_url, eng.cafile, str(src))
    system.image_transfers_service().image_transfer_service(t.id).finalize()
    wait_for(lambda: system.disks_service().disk_service(disk.id).get().status,
             lambda s: s == types.DiskStatus.OK)
    return disk


def test_copies_that_run_out_of_space_leave_nothing(small, tmp_path):
    """A disk copy, and a template whose second disk copy fails, remove the
    copies they made: no volume stays behind that no disk lists."""
    eng, con, mnt, data_sd, _ = small
    system = con.system_service()
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    big = (free * 11 // 20) // (64 * 1024) * (64 * 1024)    # fits once, not twice
    small_disk = _filled_disk(system, eng, data_sd, "first", os.urandom(64 * 1024), tmp_path)
    big_disk = _filled_disk(system, eng, data_sd, "second", os.urandom(big), tmp_path)
    images = os.path.join(mnt, data_sd, "images")
    before = files_below(images)

    with pytest.raises(sdk.Error) as e:
        system.disks_service().disk_service(big_disk.id).copy(
            storage_domain=types.StorageDomain(id=data_sd))
    assert 400 <= e.value.code < 500 or e.value.code == 507, e.value
    assert files_below(images) == before

    vm = system.vms_service().add(types.Vm(name="two-disks", cluster=types.Cluster(name="Default")))
    atts = system.vms_service().vm_service(vm.id).disk_attachments_service()
    for d in (small_disk, big_disk):
        atts.add(types.DiskAttachment(disk=types.Disk(id=d.id),
                                      interface=types.DiskInterface.VIRTIO_SCSI, active=True))
    with pytest.raises(sdk.Error) as e:
        system.templates_service().add(types.Template(name="too-big", vm=types.Vm(id=vm.id)))
    assert 400 <= e.value.code < 500 or e.value.code == 507, e.value
    assert files_below(images) == before
    assert [t.name for t in system.templates_service().list()] == ["Blank"]
    assert sorted(d.name for d in system.disks_service().list()
                  if d.storage_domains[0].id == data_sd) == ["first", "second"]
