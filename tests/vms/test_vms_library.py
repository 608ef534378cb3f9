"""``imagetool.vms``, ``imagetool.snapshots``, ``imagetool.disks`` and the
host choice, against the local engine over TLS.

Results are judged by what the engine then holds (snapshots, layers, disk
status) and by the guest data read back (checksums), never by the return
values alone.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
import os
import uuid

import pytest

import imagetool
from helpers import MiB, api_request, sigint_after
from helpers import ENGINE_PASSWORD as PASSWORD
from imagetool import disks as disk_ops, snapshots, vms
from imagetool.engine import Connection
from imagetool.engine.hosts import choose_host, local_vdsm_id, transfer_host, up_hosts
from imagetool.errors import (Conflict, EngineError, ImagetoolError, NotFound,
                              TimeoutExpired)
from imagetool.server.local import LocalEngine
from imagetool.transfer.download import download_disk
from imagetool.transfer.upload import upload_disk

# Every test here starts engines or CLI processes: out of the quick loop.
pytestmark = pytest.mark.slow

SIZE = 1 * MiB


@pytest.fixture(scope="module")
def mconn(engine):
    with Connection(engine.url, username=LocalEngine.username, password=PASSWORD,
                    cafile=engine.cafile) as c:
        yield c


def _file(tmp_path, byte: int) -> str:
    path = str(tmp_path / f"src-{byte:02x}-{uuid.uuid4().hex[:6]}.raw")
    with open(path, "wb") as f:
        f.write(bytes([byte]) * SIZE)
    return path


def _sha_of_disk(conn, disk_id, tmp_path, snapshot=None) -> str:
    out = str(tmp_path / f"dl-{uuid.uuid4().hex}.raw")
    download_disk(conn, disk_id, out, snapshot=snapshot)
    with open(out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.unlink(out)
    return digest


def _sha(byte: int) -> str:
    return hashlib.sha256(bytes([byte]) * SIZE).hexdigest()


@pytest.fixture
def vm(mconn, tmp_path):
    """A VM with one qcow2 disk of 0x11 bytes (removed with its disks after)."""
    name = f"vm-{uuid.uuid4().hex[:8]}"
    disk = upload_disk(mconn, _file(tmp_path, 0x11), "data", name=f"{name}-disk",
                       disk_format="qcow2")
    v = mconn.vms.add(name=name)
    mconn.vms.attach_disk(v.id, disk.id, bootable=True)
    yield v, disk
    try:
        mconn.vms.remove(v.id)
    except NotFound:
        pass


def _overwrite(conn, disk_id, byte, tmp_path):
    """Write new guest data over the whole disk (its active layer)."""
    from imagetool.imageio.client import ImageioClient
    from imagetool.transfer.session import TransferSession
    with TransferSession(conn, disk_id=disk_id, direction="upload") as s:
        with ImageioClient(s.url, cafile=conn_cafile[0]) as c:
            c.write(0, bytes([byte]) * SIZE)
            c.flush()


conn_cafile: list[str] = []


@pytest.fixture(autouse=True)
def _cafile(engine):
    conn_cafile[:] = [engine.cafile]


# --- VMs --------------------------------------------------------------------------

def test_list_get_and_ovf(mconn, vm):
    v, disk = vm
    assert v.id in [x.id for x in vms.list_vms(mconn)]
    assert vms.get_vm(mconn, v.name).id == v.id
    assert vms.get_vm(mconn, v.id).name == v.name
    ovf = vms.vm_ovf(mconn, v.name)
    assert ovf.lstrip().startswith("<") and "Envelope" in ovf
    assert v.name in ovf and disk.id in ovf
    # The top level offers the same calls.
    assert imagetool.vm_ovf(mconn, v.id) == ovf


def test_unknown_vm_is_named(mconn):
    with pytest.raises(NotFound) as e:
        vms.get_vm(mconn, "no-such-vm")
    assert str(e.value) == "no vm with id or name 'no-such-vm'"
    with pytest.raises(NotFound):
        snapshots.create_snapshot(mconn, "no-such-vm", "x")


# --- snapshots ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["vms.add", "disks.add", "upload_disk"])
def test_ctrl_c_while_create_vm_makes_something_leaves_nothing(mconn, tmp_path,
                                                              monkeypatch, where):
    """A real SIGINT once the engine made the VM, an empty disk, or an
    uploaded one, before its answer is back (issue 20): create_vm raises
    KeyboardInterrupt and the engine holds no new VM nor disk."""
    import imagetool.transfer.upload as upload_mod
    owner, name = where.split(".") if "." in where else ("", where)
    sigint_after(monkeypatch, getattr(mconn, owner) if owner else upload_mod, name)
    before = ({v.id for v in mconn.vms.list()}, {d.id for d in mconn.disks.list()})
    spec = SIZE if where == "disks.add" else _file(tmp_path, 0x22)
    with pytest.raises(KeyboardInterrupt):
        vms.create_vm(mconn, f"cc-{uuid.uuid4().hex[:6]}", "data", disks=[spec])
    assert ({v.id for v in mconn.vms.list()}, {d.id for d in mconn.disks.list()}) == before

def test_create_snapshot_waits_and_freezes_the_data(mconn, vm, tmp_path):
    v, disk = vm
    snap = snapshots.create_snapshot(mconn, v.name, description="before")
    assert snap.snapshot_status == "ok" and snap.description == "before"
    assert snap.persist_memorystate is False
    assert mconn.disks.get(disk.id).status == "ok"
    assert len(snapshots.disk_layers(mconn, disk.id)) == 2
    _overwrite(mconn, disk.id, 0x22, tmp_path)
    frozen = snapshots.snapshot_disks(mconn, v.id, snap)[0].image_id
    assert _sha_of_disk(mconn, disk.id, tmp_path, snapshot=frozen) == _sha(0x11)
    assert _sha_of_disk(mconn, disk.id, tmp_path) == _sha(0x22)


def test_create_snapshot_of_some_disks(mconn, vm, tmp_path):
    v, disk = vm
    other = upload_disk(mconn, _file(tmp_path, 0x33), "data", name=f"{v.name}-other")
    mconn.vms.attach_disk(v.id, other.id)
    snap = snapshots.create_snapshot(mconn, v.id, "only-first", disks=[disk.name])
    assert [d.id for d in snapshots.snapshot_disks(mconn, v.id, snap)] == [disk.id]
    assert len(snapshots.disk_layers(mconn, other.id)) == 1
    loose = upload_disk(mconn, _file(tmp_path, 0x44), "data", name=f"{v.name}-loose")
    try:
        with pytest.raises(ImagetoolError) as e:
            snapshots.create_snapshot(mconn, v.id, "bad", disks=[loose.id])
        assert str(e.value) == f"disk {loose.name} is not attached to VM {v.name}"
        assert [s.description for s in snapshots.list_snapshots(mconn, v.id)] == \
            ["Active VM", "only-first"]
    finally:
        mconn.disks.remove(loose.id)


def test_snapshot_of_a_locked_disk_is_refused_and_leaves_nothing(mconn, vm):
    from imagetool.transfer.session import TransferSession
    v, disk = vm
    with TransferSession(mconn, disk_id=disk.id, direction="download"):
        assert mconn.disks.get(disk.id).status == "locked"
        with pytest.raises(Conflict) as e:
            snapshots.create_snapshot(mconn, v.name, "while-locked")
        assert str(e.value) == (f"cannot take a snapshot of VM {v.name}: its disk "
                                f"{disk.name} is locked")
    assert [s.snapshot_type for s in snapshots.list_snapshots(mconn, v.id)] == ["active"]
    assert mconn.disks.get(disk.id).status == "ok"
    assert len(snapshots.disk_layers(mconn, disk.id)) == 1


def test_failed_wait_removes_the_snapshot_it_created(mconn, vm, monkeypatch):
    v, disk = vm
    real_get = mconn.snapshots.get

    def never_ok(vm_id, snap_id):
        s = real_get(vm_id, snap_id)
        s.snapshot_status = "locked"
        return s

    monkeypatch.setattr(mconn.snapshots, "get", never_ok)
    with pytest.raises(TimeoutExpired) as e:
        snapshots.create_snapshot(mconn, v.id, "stuck", timeout=0.5)
    assert "snapshot 'stuck' of VM" in str(e.value)
    monkeypatch.undo()
    assert [s.description for s in snapshots.list_snapshots(mconn, v.id)] == ["Active VM"]
    assert len(snapshots.disk_layers(mconn, disk.id)) == 1
    assert mconn.disks.get(disk.id).status == "ok"


def test_remove_snapshot_merges_and_keeps_the_data(mconn, vm, tmp_path):
    v, disk = vm
    snapshots.create_snapshot(mconn, v.id, "s1")
    _overwrite(mconn, disk.id, 0x55, tmp_path)
    snapshots.remove_snapshot(mconn, v.name, "s1")
    assert [s.description for s in snapshots.list_snapshots(mconn, v.id)] == ["Active VM"]
    assert len(snapshots.disk_layers(mconn, disk.id)) == 1
    assert mconn.disks.get(disk.id).status == "ok"
    assert _sha_of_disk(mconn, disk.id, tmp_path) == _sha(0x55)


def test_remove_the_active_snapshot_is_refused(mconn, vm):
    v, disk = vm
    active = snapshots.list_snapshots(mconn, v.id)[0]
    with pytest.raises(ImagetoolError) as e:
        snapshots.remove_snapshot(mconn, v.id, active.id)
    assert str(e.value) == (f"cannot remove the active snapshot of VM {v.name} "
                            f"(it is the VM's current state)")
    assert [s.id for s in snapshots.list_snapshots(mconn, v.id)] == [active.id]


def test_unknown_snapshot_is_named(mconn, vm):
    v, disk = vm
    with pytest.raises(NotFound) as e:
        snapshots.remove_snapshot(mconn, v.id, "never-taken")
    assert str(e.value) == (f"VM {v.name} has no snapshot with id or description "
                            f"'never-taken'")


def test_same_description_twice_asks_for_the_id(mconn, vm):
    v, disk = vm
    a = snapshots.create_snapshot(mconn, v.id, "twin")
    b = snapshots.create_snapshot(mconn, v.id, "twin")
    with pytest.raises(EngineError, match="are described 'twin'.*use the id"):
        snapshots.find_snapshot(mconn, v.id, "twin")
    assert snapshots.find_snapshot(mconn, v.id, b.id).id == b.id
    snapshots.remove_snapshot(mconn, v.id, a.id)
    assert snapshots.find_snapshot(mconn, v.id, "twin").id == b.id


def test_restore_snapshot_brings_the_data_back(mconn, vm, tmp_path):
    v, disk = vm
    snapshots.create_snapshot(mconn, v.id, "good")
    _overwrite(mconn, disk.id, 0x66, tmp_path)
    snapshots.create_snapshot(mconn, v.id, "bad")
    snapshots.restore_snapshot(mconn, v.id, "good")
    assert _sha_of_disk(mconn, disk.id, tmp_path) == _sha(0x11)
    assert [s.description for s in snapshots.list_snapshots(mconn, v.id)] == \
        ["Active VM", "good"]
    assert mconn.disks.get(disk.id).status == "ok"


def test_restore_the_active_snapshot_is_refused(mconn, vm):
    v, disk = vm
    with pytest.raises(ImagetoolError, match="cannot restore the active snapshot"):
        snapshots.restore_snapshot(mconn, v.id, "Active VM")


def test_preview_then_undo_and_commit(mconn, vm, tmp_path):
    v, disk = vm
    snapshots.create_snapshot(mconn, v.id, "p1")
    _overwrite(mconn, disk.id, 0x77, tmp_path)
    s = snapshots.preview_snapshot(mconn, v.id, "p1")
    assert s.snapshot_status == "in_preview"
    assert _sha_of_disk(mconn, disk.id, tmp_path) == _sha(0x11)
    snapshots.undo_snapshot(mconn, v.id)
    assert _sha_of_disk(mconn, disk.id, tmp_path) == _sha(0x77)
    snapshots.preview_snapshot(mconn, v.id, "p1")
    snapshots.commit_snapshot(mconn, v.id, "p1")
    assert _sha_of_disk(mconn, disk.id, tmp_path) == _sha(0x11)
    assert all(x.snapshot_status == "ok" for x in snapshots.list_snapshots(mconn, v.id))
    assert mconn.disks.get(disk.id).status == "ok"


def test_commit_without_a_preview_is_refused(mconn, vm):
    v, disk = vm
    with pytest.raises(Conflict) as e:
        snapshots.commit_snapshot(mconn, v.id)
    assert str(e.value) == f"VM {v.name} previews no snapshot: nothing to commit"
    with pytest.raises(Conflict, match="nothing to undo"):
        snapshots.undo_snapshot(mconn, v.id)


# --- disk operations -------------------------------------------------------------------

def test_copy_disk_waits_and_copies_the_data(mconn, vm, tmp_path):
    v, disk = vm
    snapshots.create_snapshot(mconn, v.id, "c1")
    _overwrite(mconn, disk.id, 0x88, tmp_path)
    copy = disk_ops.copy_disk(mconn, disk.name, "data", name=f"{v.name}-copy")
    try:
        assert copy.status == "ok" and copy.id != disk.id and copy.name == f"{v.name}-copy"
        assert len(snapshots.disk_layers(mconn, copy.id)) == 1    # flattened
        assert _sha_of_disk(mconn, copy.id, tmp_path) == _sha(0x88)
        assert mconn.disks.get(disk.id).status == "ok"
    finally:
        mconn.disks.remove(copy.id)


def test_move_to_the_same_domain_is_refused(mconn, vm):
    v, disk = vm
    with pytest.raises(ImagetoolError) as e:
        disk_ops.move_disk(mconn, disk.id, "data")
    assert str(e.value) == f"disk {disk.name} is already on storage domain data"


def _add_domain(engine, name: str, sd_type: str, path, attach: bool) -> str:
    """A localfs storage domain in ``path`` through the REST API; its id."""
    xml = {"Content-Type": "application/xml", "Accept": "application/xml"}
    body = (f"<storage_domain><name>{name}</name><type>{sd_type}</type>"
            f"<host><name>local</name></host><storage><type>localfs</type>"
            f"<path>{path}</path></storage></storage_domain>")
    status, _, reply = api_request(engine, "POST", "storagedomains", body, xml)
    assert status == 201, reply
    sd_id = ET.fromstring(reply).get("id")
    if attach:
        status, _, reply = api_request(engine, "GET", "datacenters", None, xml)
        dc_id = ET.fromstring(reply).find("data_center").get("id")
        status, _, reply = api_request(engine, "POST", f"datacenters/{dc_id}/storagedomains",
                                       f'<storage_domain id="{sd_id}"/>', xml)
        assert status == 201, reply
    return sd_id


def test_move_disk_to_another_domain(engine, mconn, vm, tmp_path):
    v, disk = vm
    (tmp_path / "sd2").mkdir()
    _add_domain(engine, f"data2-{uuid.uuid4().hex[:6]}", "data", tmp_path / "sd2", True)
    target = [sd for sd in mconn.storage_domains.list()
              if sd.type == "data" and sd.name.startswith("data2-")][0]
    moved = disk_ops.move_disk(mconn, disk.id, target.name)
    assert moved.storage_domain_ids == (target.id,) and moved.status == "ok"
    assert _sha_of_disk(mconn, disk.id, tmp_path) == _sha(0x11)


def test_sparsify_disk_keeps_the_data(mconn, tmp_path):
    d = upload_disk(mconn, _file(tmp_path, 0x99), "data", name="to-sparsify")
    try:
        out = disk_ops.sparsify_disk(mconn, d.id)
        assert out.status == "ok"
        assert _sha_of_disk(mconn, d.id, tmp_path) == _sha(0x99)
    finally:
        mconn.disks.remove(d.id)


# --- export domain ---------------------------------------------------------------------

def test_export_to_a_data_domain_is_refused(mconn, vm):
    v, disk = vm
    with pytest.raises(ImagetoolError) as e:
        vms.export_vm(mconn, v.id, "data")
    assert str(e.value) == "storage domain data is a data domain, not an export domain"


def test_export_then_import_as_a_clone(mconn, vm, tmp_path):
    v, disk = vm
    snapshots.create_snapshot(mconn, v.id, "e1")
    on_domain = vms.export_vm(mconn, v.id, "export", discard_snapshots=True)
    assert on_domain.id == v.id
    clone = vms.import_vm(mconn, v.name, "export", "data", clone=True,
                          new_name=f"{v.name}-clone")
    try:
        assert clone.id != v.id and clone.name == f"{v.name}-clone"
        disk_ids = [a.disk_id for a in mconn.vms.disk_attachments(clone.id)]
        assert len(disk_ids) == 1
        assert _sha_of_disk(mconn, disk_ids[0], tmp_path) == _sha(0x11)
    finally:
        mconn.vms.remove(clone.id)


def test_export_to_a_detached_export_domain_is_refused(engine, mconn, vm, tmp_path):
    v, disk = vm
    (tmp_path / "exp2").mkdir()
    _add_domain(engine, f"exp-{uuid.uuid4().hex[:6]}", "export", tmp_path / "exp2", False)
    detached = [sd for sd in mconn.storage_domains.list()
                if sd.type == "export" and sd.status == "unattached"][0]
    with pytest.raises(ImagetoolError, match="is not attached to a data center"):
        vms.export_vm(mconn, v.id, detached.name)


def test_export_domain_checks_without_an_engine():
    """The refusal of an unattached export domain, on what an engine reports."""
    from imagetool.engine.entities import StorageDomain

    class Sds:
        def __init__(self, sd):
            self.sd = sd

        def find(self, name):
            return self.sd

    class Conn:
        pass

    conn = Conn()
    conn.storage_domains = Sds(StorageDomain(id="x", name="exp", type="export",
                                             status="unattached"))
    with pytest.raises(ImagetoolError) as e:
        vms._export_domain(conn, "exp")
    assert str(e.value) == ("export domain exp is not attached to a data center "
                            "(status unattached); attach and activate it")
    conn.storage_domains = Sds(StorageDomain(id="x", name="exp", type="export",
                                             status="active", data_center_ids=("dc",)))
    assert vms._export_domain(conn, "exp").name == "exp"


# --- host choice -------------------------------------------------------------------------

def _local_host(conn) -> str:
    return [h.id for h in conn.hosts.list() if h.name == "local"][0]


def test_host_choice_on_the_local_engine(mconn, tmp_path, monkeypatch):
    host_id = _local_host(mconn)
    sd = mconn.storage_domains.find("data")
    hosts = up_hosts(mconn, sd.id)
    assert [h.id for h in hosts] == [host_id]
    monkeypatch.setenv("IMAGETOOL_VDSM_ID_FILE", str(tmp_path / "missing"))
    assert local_vdsm_id() is None
    assert choose_host(mconn, sd.id) == host_id
    assert choose_host(mconn, sd.id, "local") == host_id
    assert choose_host(mconn, sd.id, host_id) == host_id
    with pytest.raises(NotFound) as e:
        transfer_host(mconn, [sd.id], "elsewhere")
    assert str(e.value) == "no host with id or name 'elsewhere'"


def test_download_names_the_host(mconn, vm, tmp_path):
    host_id = _local_host(mconn)
    v, disk = vm
    seen = []
    real_add = mconn.transfers.add

    def add(**kw):
        seen.append(kw.get("host_id"))
        return real_add(**kw)

    mconn.transfers.add = add
    try:
        download_disk(mconn, disk.id, str(tmp_path / "a.raw"), host="local")
        download_disk(mconn, disk.id, str(tmp_path / "b.raw"))
    finally:
        del mconn.transfers.add
    assert seen == [host_id, host_id]
    with pytest.raises(NotFound):
        download_disk(mconn, disk.id, str(tmp_path / "c.raw"), host="elsewhere")
    assert not (tmp_path / "c.raw").exists()
    assert mconn.disks.get(disk.id).status == "ok"


def test_upload_with_an_unknown_host_creates_no_disk(mconn, tmp_path):
    before = {d.id for d in mconn.disks.list()}
    with pytest.raises(NotFound, match="no host with id or name 'elsewhere'"):
        upload_disk(mconn, _file(tmp_path, 0x12), "data", name="hostless", host="elsewhere")
    assert {d.id for d in mconn.disks.list()} == before


class _FakeHosts:
    """Hosts of two data centers, for the choice rules without an engine."""

    def __init__(self, hosts, by_hw=None):
        self._hosts = hosts
        self._by_hw = by_hw or {}

    def list(self, search=None):
        if search and search.startswith("hw_id="):
            return self._by_hw.get(search[len("hw_id="):], [])
        return self._hosts


def _fake_conn(vdsm_match=None):
    from imagetool.engine.entities import Cluster, Host, StorageDomain

    class Sds:
        def get(self, sd_id):
            return StorageDomain(id=sd_id, name="d", data_center_ids=("dc1",))

    class Clusters:
        def list(self):
            return [Cluster(id="c1", data_center_id="dc1"),
                    Cluster(id="c2", data_center_id="dc2")]

    hosts = [Host(id="h1", name="a", status="up", cluster_id="c1"),
             Host(id="h2", name="b", status="up", cluster_id="c1"),
             Host(id="h3", name="c", status="maintenance", cluster_id="c1"),
             Host(id="h4", name="d", status="up", cluster_id="c2")]

    class Conn:
        pass

    conn = Conn()
    conn.storage_domains = Sds()
    conn.clusters = Clusters()
    conn.hosts = _FakeHosts(hosts, {"vdsm-2": [hosts[1]], "vdsm-4": [hosts[3]]})
    return conn


def test_host_choice_rules(tmp_path):
    conn = _fake_conn()
    none = str(tmp_path / "none")
    # Up hosts of the domain's data center only, spread by index.
    assert [choose_host(conn, "sd", index=i, vdsm_id_path=none) for i in range(3)] == \
        ["h1", "h2", "h1"]
    # This machine, when it is an Up host of that data center.
    mine = tmp_path / "vdsm.id"
    mine.write_text("vdsm-2\n")
    assert choose_host(conn, "sd", index=0, vdsm_id_path=str(mine)) == "h2"
    # ... not when it is in another data center.
    mine.write_text("vdsm-4\n")
    assert choose_host(conn, "sd", index=0, vdsm_id_path=str(mine)) == "h1"
    with pytest.raises(EngineError) as e:
        choose_host(conn, "sd", "c")
    assert str(e.value) == "host c is maintenance, not up"
