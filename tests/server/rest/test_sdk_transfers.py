"""End to end with the real clients: ovirtsdk4 drives the local engine over
TLS, ovirt_imageio.client moves the bytes, qemu-img judges the result."""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers import (MiB, get_file, make_pattern_image, put_file, qemu_img, qemu_io,
                     wait_for, wait_phase)

sdk = pytest.importorskip("ovirtsdk4")
types = sdk.types
client = pytest.importorskip("ovirt_imageio.client")


def add_disk(connection, name, fmt, size, initial_size=None):
    disks = connection.system_service().disks_service()
    disk = disks.add(types.Disk(
        name=name, format=types.DiskFormat(fmt), provisioned_size=size,
        initial_size=initial_size, sparse=True,
        storage_domains=[types.StorageDomain(name="data")]))
    service = disks.disk_service(disk.id)
    return wait_for(service.get, lambda d: d.status == types.DiskStatus.OK)


def start_transfer(connection, direction, fmt, disk_id=None, snapshot_id=None):
    transfers = connection.system_service().image_transfers_service()
    transfer = transfers.add(types.ImageTransfer(
        disk=types.Disk(id=disk_id) if disk_id else None,
        snapshot=types.DiskSnapshot(id=snapshot_id) if snapshot_id else None,
        direction=types.ImageTransferDirection(direction),
        format=types.DiskFormat(fmt), inactivity_timeout=60))
    return wait_phase(connection, transfer.id, ["transferring"])


def finish(connection, transfer):
    service = connection.system_service().image_transfers_service().image_transfer_service(
        transfer.id)
    service.finalize()
    return wait_phase(connection, transfer.id, ["finished_success", "finished_failure"]).phase.value


def compare(a, b):
    res = qemu_img("compare", a, b)
    assert "Images are identical" in res


def test_storage_domains_listed(connection):
    sds = connection.system_service().storage_domains_service().list()
    by_name = {sd.name: sd for sd in sds}
    assert by_name["data"].type == types.StorageDomainType.DATA
    assert by_name["export"].type == types.StorageDomainType.EXPORT
    st = os.statvfs(by_name["data"].storage.path)
    # available comes from the real file system (allow for concurrent writers)
    assert abs(by_name["data"].available - st.f_bavail * st.f_frsize) < 256 * MiB


@pytest.mark.slow
@pytest.mark.parametrize("file_fmt,disk_fmt", [("raw", "raw"), ("qcow2", "cow"), ("raw", "cow")])
def test_upload_download_raw_transfers(connection, engine, tmp_path, file_fmt, disk_fmt):
    """Guest data both ways through the real imageio client (transfer format raw)."""
    src = make_pattern_image(str(tmp_path / f"src.{file_fmt}"), file_fmt)
    disk = add_disk(connection, f"up-{file_fmt}-{disk_fmt}", disk_fmt, 4 * MiB)
    transfer = start_transfer(connection, "upload", "raw", disk.id)
    client.upload(src, transfer.transfer_url, engine.cafile)
    assert finish(connection, transfer) == "finished_success"
    disk = connection.system_service().disks_service().disk_service(disk.id).get()
    assert disk.status == types.DiskStatus.OK

    transfer = start_transfer(connection, "download", "raw", disk.id)
    dst = str(tmp_path / "dst.qcow2")
    client.download(transfer.transfer_url, dst, engine.cafile, fmt="qcow2")
    assert finish(connection, transfer) == "finished_success"
    compare(src, dst)
    if disk_fmt == "cow":
        # The stored volume itself is a valid qcow2 image (checked by qemu).
        vol = os.path.join(engine.data_dir, disk.storage_domains[0].id, "images", disk.id,
                           disk.image_id)
        qemu_img("check", "-f", "qcow2", vol)


@pytest.mark.slow
@pytest.mark.parametrize("file_fmt,disk_fmt", [("qcow2", "cow"), ("raw", "raw")])
def test_upload_download_cow_transfers(connection, engine, tmp_path, file_fmt, disk_fmt):
    """The volume's own bytes both ways (transfer format cow)."""
    src = make_pattern_image(str(tmp_path / f"src.{file_fmt}"), file_fmt)
    initial = os.path.getsize(src) if file_fmt == "qcow2" else None
    disk = add_disk(connection, f"cow-{file_fmt}", disk_fmt, 4 * MiB, initial)
    transfer = start_transfer(connection, "upload", "cow", disk.id)
    put_file(transfer.transfer_url, engine.cafile, src)
    assert finish(connection, transfer) == "finished_success"

    transfer = start_transfer(connection, "download", "cow", disk.id)
    dst = str(tmp_path / f"dst.{file_fmt}")
    get_file(transfer.transfer_url, engine.cafile, dst)
    assert finish(connection, transfer) == "finished_success"
    compare(src, dst)
    assert qemu_img("info", "--output=json", dst).count(f'"format": "{file_fmt}"') == 1

    # And the same disk as guest data through the imageio client.
    transfer = start_transfer(connection, "download", "raw", disk.id)
    dst2 = str(tmp_path / "dst2.raw")
    client.download(transfer.transfer_url, dst2, engine.cafile, fmt="raw")
    assert finish(connection, transfer) == "finished_success"
    compare(src, dst2)


@pytest.mark.slow
def test_remote_checksum_matches_reference_client(connection, engine, tmp_path):
    """The data plane's checksum of an uploaded disk equals the reference
    client's checksum of the local file."""
    import json
    import ssl
    import http.client
    from urllib.parse import urlsplit
    src = make_pattern_image(str(tmp_path / "src.qcow2"), "qcow2")
    disk = add_disk(connection, "checksum", "cow", 4 * MiB)
    transfer = start_transfer(connection, "upload", "raw", disk.id)
    client.upload(src, transfer.transfer_url, engine.cafile)
    assert finish(connection, transfer) == "finished_success"
    transfer = start_transfer(connection, "download", "raw", disk.id)
    url = urlsplit(transfer.transfer_url)
    conn = http.client.HTTPSConnection(url.hostname, url.port,
                                       context=ssl.create_default_context(cafile=engine.cafile))
    conn.request("GET", url.path + "/checksum")
    resp = conn.getresponse()
    remote = json.loads(resp.read())
    conn.close()
    assert finish(connection, transfer) == "finished_success"
    local = client.checksum(src)
    assert remote["checksum"] == local["checksum"]


@pytest.mark.slow
def test_parallel_transfers(connection, engine, tmp_path):
    """Several uploads at once, each with its own disk and ticket."""
    import threading
    srcs, disks, transfers = [], [], []
    for i in range(3):
        srcs.append(make_pattern_image(str(tmp_path / f"p{i}.qcow2"), "qcow2"))
        qemu_io(srcs[-1], f"write -P {0x30 + i} 3M 64k")   # tell them apart
        disks.append(add_disk(connection, f"parallel-{i}", "cow", 4 * MiB))
        transfers.append(start_transfer(connection, "upload", "raw", disks[-1].id))
    errors = []

    def run(i):
        try:
            client.upload(srcs[i], transfers[i].transfer_url, engine.cafile)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(3):
        assert finish(connection, transfers[i]) == "finished_success"
        dst = str(tmp_path / f"d{i}.qcow2")
        t = start_transfer(connection, "download", "raw", disks[i].id)
        client.download(t.transfer_url, dst, engine.cafile, fmt="qcow2")
        assert finish(connection, t) == "finished_success"
        compare(srcs[i], dst)
        assert "Images are identical" not in subprocess.run(
            ["qemu-img", "compare", srcs[(i + 1) % 3], dst], capture_output=True, text=True).stdout


@pytest.mark.slow
def test_new_raw_transfer_keeps_data_of_a_cow_disk(connection, engine, tmp_path):
    """A second upload transfer to the same cow disk (a client resuming with a
    new transfer) sends only part of the data; the rest must still be there."""
    import http.client
    import json
    import ssl
    from urllib.parse import urlsplit
    src = make_pattern_image(str(tmp_path / "src.qcow2"), "qcow2")
    disk = add_disk(connection, "two-transfers", "cow", 4 * MiB)
    t = start_transfer(connection, "upload", "raw", disk.id)
    client.upload(src, t.transfer_url, engine.cafile)
    assert finish(connection, t) == "finished_success"
    t = start_transfer(connection, "upload", "raw", disk.id)
    url = urlsplit(t.transfer_url)
    conn = http.client.HTTPSConnection(url.hostname, url.port,
                                       context=ssl.create_default_context(cafile=engine.cafile))
    data = b"\x5a" * 65536
    conn.request("PUT", url.path, body=data, headers={"Content-Range": "bytes 196608-262143/*"})
    assert conn.getresponse().read() == b""
    conn.request("PATCH", url.path, body=json.dumps({"op": "flush"}))
    conn.getresponse().read()
    conn.close()
    assert finish(connection, t) == "finished_success"
    expected = str(tmp_path / "expected.qcow2")
    subprocess.run(["cp", src, expected], check=True)
    qemu_io(expected, "write -P 0x5a 192k 64k")
    t = start_transfer(connection, "download", "raw", disk.id)
    dst = str(tmp_path / "dst.qcow2")
    client.download(t.transfer_url, dst, engine.cafile, fmt="qcow2")
    assert finish(connection, t) == "finished_success"
    compare(expected, dst)
