"""Hostile uploads against the local engine's storage.

A qcow2 header is written by the client: its backing file name must never
make the engine read another file (oVirt keeps the chain in its own
metadata; the engine REST API guide says an uploaded qcow2 must have no
backing file). A failed or cancelled upload must not destroy what a disk
held before the transfer; only a disk that never held data (created for
the upload) is removed, as the engine does for an uploaded disk.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import xml.etree.ElementTree as ET

import pytest

from imagetool.phases import TERMINAL

from helpers import MiB, api_json, api_request, put_file, qemu_img, wait_for

SECRET = b"TOP-SECRET-KEY-MATERIAL\n" * 4096       # 96 KiB, recognisable


def new_disk(engine, name, fmt="cow", size=4 * MiB, initial=8 * MiB):
    body = (f"<disk><name>{name}</name><format>{fmt}</format>"
            f"<provisioned_size>{size}</provisioned_size>"
            f"<initial_size>{initial}</initial_size>"
            f"<storage_domains><storage_domain><name>data</name></storage_domain>"
            f"</storage_domains></disk>")
    status, _, reply = api_request(engine, "POST", "disks", body,
                                   {"Content-Type": "application/xml"})
    assert status == 201, reply
    return ET.fromstring(reply).get("id")


def start(engine, disk_id, direction="upload", fmt="raw"):
    body = (f'<image_transfer><disk id="{disk_id}"/><direction>{direction}</direction>'
            f"<format>{fmt}</format></image_transfer>")
    status, _, reply = api_request(engine, "POST", "imagetransfers", body,
                                   {"Content-Type": "application/xml"})
    assert status == 201, reply
    tid = ET.fromstring(reply).get("id")
    return wait_for(lambda: api_json(engine, "GET", f"imagetransfers/{tid}")[1],
                    lambda t: t["phase"] == "transferring")


def end(engine, t, action="finalize"):
    status, _, body = api_request(engine, "POST", f"imagetransfers/{t['id']}/{action}",
                                  "<action/>", {"Content-Type": "application/xml"})
    assert status == 200, body
    return wait_for(lambda: api_json(engine, "GET", f"imagetransfers/{t['id']}")[1],
                    lambda t: t["phase"] in TERMINAL)["phase"]


def disk_status(engine, disk_id):
    status, body = api_json(engine, "GET", f"disks/{disk_id}")
    return body.get("status") if status == 200 else status


def download_raw(engine, disk_id) -> bytes:
    """The disk's guest data (format raw: read through the qcow2 chain)."""
    import http.client
    import ssl
    t = start(engine, disk_id, "download", "raw")
    parts = urllib.parse.urlsplit(t["transfer_url"])
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=30,
                                       context=ssl.create_default_context(
                                           cafile=engine.cafile))
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data[:200]
    finally:
        conn.close()
    assert end(engine, t) == "finished_success"
    return data


def upload_raw(engine, disk_id, data: bytes, tmp_path, action="finalize") -> str:
    path = str(tmp_path / f"payload-{hashlib.sha1(data).hexdigest()[:8]}")
    with open(path, "wb") as f:
        f.write(data)
    t = start(engine, disk_id, "upload", "raw")
    put_file(t["transfer_url"], engine.cafile, path)
    return end(engine, t, action)


def upload_cow_bytes(engine, disk_id, path, action="finalize") -> str:
    """A transfer of format cow: the file's own bytes become the volume."""
    t = start(engine, disk_id, "upload", "cow")
    put_file(t["transfer_url"], engine.cafile, path)
    return end(engine, t, action)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plant(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(SECRET)
    return path


def hostile_qcow2(tmp_path, backing: str, name: str = "hostile.qcow2") -> str:
    """A qcow2 with no data of its own over ``backing`` (a raw file name)."""
    out = str(tmp_path / name)
    qemu_img("create", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", out, str(4 * MiB))
    return out


def sd_dir(engine) -> str:
    status, body = api_json(engine, "GET", "storagedomains")
    sd = next(s for s in body["storage_domain"] if s["name"] == "data")
    return os.path.join(engine.data_dir, sd["id"])


def layered_disk(engine, connection, tmp_path, name, base: bytes) -> str:
    """A cow disk with ``base`` as guest data, then a VM snapshot: two layers."""
    types = pytest.importorskip("ovirtsdk4").types
    disk_id = new_disk(engine, name)
    assert upload_raw(engine, disk_id, base, tmp_path) == "finished_success"
    system = connection.system_service()
    vm = system.vms_service().add(types.Vm(
        name=f"vm-{name}", cluster=types.Cluster(name="Default"),
        template=types.Template(name="Blank")))
    vm_service = system.vms_service().vm_service(vm.id)
    vm_service.disk_attachments_service().add(types.DiskAttachment(
        disk=types.Disk(id=disk_id), interface=types.DiskInterface.VIRTIO_SCSI,
        bootable=True, active=True))
    snaps = vm_service.snapshots_service()
    snap = snaps.add(types.Snapshot(description="s", persist_memorystate=False))
    wait_for(snaps.snapshot_service(snap.id).get,
             lambda s: s.snapshot_status == types.SnapshotStatus.OK)
    assert len(system.disks_service().disk_service(disk_id)
               .disk_snapshots_service().list()) == 2
    return disk_id


def base_data() -> bytes:
    data = bytearray(4 * MiB)
    data[:65536] = b"\x61" * 65536
    data[MiB:MiB + 131072] = b"\x62" * 131072
    return bytes(data)


def _targets(engine, tmp_path):
    """(backing name written in the header, file it would resolve to)."""
    data_dir = engine.data_dir
    return [
        (os.path.join(data_dir, "ca-key.pem.secret"),) * 2,
        (str(tmp_path / "outside-secret"),) * 2,
        # Relative names resolve next to the volume: images/<disk>/<vol>.
        ("../../admin-password", os.path.join(sd_dir(engine), "admin-password")),
        ("../../../admin-password", os.path.join(data_dir, "admin-password")),
    ]


# --- item: no file outside the recorded chain is ever read ------------------------

@pytest.mark.slow
def test_failed_finalize_of_hostile_layer_restores_the_layer(engine, connection, tmp_path):
    """A layered disk (the upload is not the disk's only volume) receives a
    qcow2 over a secret file: finalize fails, the disk is ok again and its
    guest data is what it was, never the secret's bytes."""
    base = base_data()
    disk_id = layered_disk(engine, connection, tmp_path, "layered-victim", base)
    before = sha(download_raw(engine, disk_id))
    assert before == sha(base)
    for i, (name, real) in enumerate(_targets(engine, tmp_path)):
        plant(real)
        hostile = hostile_qcow2(tmp_path, name, f"h{i}.qcow2")
        assert upload_cow_bytes(engine, disk_id, hostile) == "finished_failure"
        assert disk_status(engine, disk_id) == "ok"
        got = download_raw(engine, disk_id)
        assert SECRET[:64] not in got, name
        assert sha(got) == before, name


@pytest.mark.slow
def test_download_ignores_the_header_backing_name(engine, connection, tmp_path):
    """Even a volume already in place whose header names another file reads
    through the parent the inventory records (here: the base layer)."""
    base = base_data()
    disk_id = layered_disk(engine, connection, tmp_path, "header-ignored", base)
    status, disk = api_json(engine, "GET", f"disks/{disk_id}")
    top = os.path.join(sd_dir(engine), "images", disk_id, disk["image_id"])
    for name, real in _targets(engine, tmp_path):
        plant(real)
        qemu_img("create", "-f", "qcow2", "-u", "-b", name, "-F", "raw", top, str(4 * MiB))
        got = download_raw(engine, disk_id)
        assert SECRET[:64] not in got, name
        assert got == base, name


def test_new_disk_with_hostile_backing_is_removed(engine, tmp_path):
    secret = plant(os.path.join(engine.data_dir, "new-disk-secret"))
    disk_id = new_disk(engine, "hostile-new")
    assert upload_cow_bytes(engine, disk_id, hostile_qcow2(tmp_path, secret)) == \
        "finished_failure"
    assert disk_status(engine, disk_id) == 404


def test_external_data_file_is_refused(engine, tmp_path):
    """A qcow2 naming an external data file (it would be read for guest data)."""
    secret = plant(str(tmp_path / "data-file-secret"))
    path = str(tmp_path / "datafile.qcow2")
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on",
             path, str(len(SECRET)))
    disk_id = new_disk(engine, "datafile-existing")
    first = base_data()
    assert upload_raw(engine, disk_id, first, tmp_path) == "finished_success"
    assert upload_cow_bytes(engine, disk_id, path) == "finished_failure"
    assert disk_status(engine, disk_id) == "ok"
    got = download_raw(engine, disk_id)
    assert SECRET[:64] not in got and got == first


# --- item: a cancelled or failed upload never destroys earlier content ------------

@pytest.mark.parametrize("fmt", ["raw", "cow"])
@pytest.mark.slow
def test_cancel_upload_into_disk_with_data_keeps_it(engine, tmp_path, fmt):
    disk_id = new_disk(engine, f"kept-{fmt}", fmt=fmt)
    first = base_data()
    assert upload_raw(engine, disk_id, first, tmp_path) == "finished_success"
    before = sha(download_raw(engine, disk_id))
    other = os.urandom(4 * MiB)
    assert upload_raw(engine, disk_id, other, tmp_path, action="cancel") == "finished_failure"
    assert disk_status(engine, disk_id) == "ok"
    assert sha(download_raw(engine, disk_id)) == before == sha(first)


@pytest.mark.slow
def test_failed_finalize_into_disk_with_data_keeps_it(engine, tmp_path):
    """A raw disk that receives a qcow2 fails verification: the old bytes stay."""
    disk_id = new_disk(engine, "kept-verify", fmt="raw")
    first = base_data()
    assert upload_raw(engine, disk_id, first, tmp_path) == "finished_success"
    q = str(tmp_path / "wrong.qcow2")
    qemu_img("create", "-f", "qcow2", q, str(MiB))
    assert upload_cow_bytes(engine, disk_id, q) == "finished_failure"
    assert disk_status(engine, disk_id) == "ok"
    assert download_raw(engine, disk_id) == first


def test_cancel_upload_into_new_disk_removes_it(engine, tmp_path):
    disk_id = new_disk(engine, "new-cancelled", fmt="raw")
    assert upload_raw(engine, disk_id, os.urandom(MiB), tmp_path, action="cancel") == \
        "finished_failure"
    assert disk_status(engine, disk_id) == 404


@pytest.mark.slow
def test_second_upload_success_replaces_and_drops_the_copy(engine, tmp_path):
    disk_id = new_disk(engine, "replaced", fmt="raw")
    assert upload_raw(engine, disk_id, base_data(), tmp_path) == "finished_success"
    second = os.urandom(4 * MiB)
    assert upload_raw(engine, disk_id, second, tmp_path) == "finished_success"
    assert download_raw(engine, disk_id) == second
    disk_dir = os.path.join(sd_dir(engine), "images", disk_id)
    assert not [f for f in os.listdir(disk_dir) if f.endswith(".pre-transfer")]


@pytest.mark.parametrize("head", [
    b'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n'
    b'RW 8 FLAT "../../admin-password" 0\n',
    b"KDMV" + bytes(508),
], ids=["vmdk-descriptor", "vmdk-sparse-header"])
def test_raw_disk_keeps_bytes_that_look_like_an_image(engine, tmp_path, head):
    """A raw disk's bytes are the guest's: data that starts like a VMDK (a
    descriptor naming a file outside, or a sparse header) is stored and
    given back as it is, never parsed or followed at finalize."""
    data = head + os.urandom(MiB - len(head))
    disk_id = new_disk(engine, "looks-like-vmdk", fmt="raw", size=MiB, initial=MiB)
    assert upload_raw(engine, disk_id, data, tmp_path) == "finished_success"
    assert disk_status(engine, disk_id) == "ok"
    assert sha(download_raw(engine, disk_id)) == sha(data)
