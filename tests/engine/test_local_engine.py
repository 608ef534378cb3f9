"""The engine client against the local engine over TLS (H4's LocalEngine)."""

from __future__ import annotations

import time

import pytest

from imagetool.engine import (Connection, wait_for_disk, wait_for_disk_unlocked,
                              wait_for_transfer_phase)
from imagetool.errors import (AuthError, Conflict, ConnectionFailed, NotFound,
                              TimeoutExpired)

local = pytest.importorskip("imagetool.server.local")


@pytest.fixture
def local_engine(tmp_path):
    with local.LocalEngine(str(tmp_path / "engine")) as eng:
        yield eng


def connect(eng, **kw) -> Connection:
    kw.setdefault("username", eng.username)
    kw.setdefault("password", eng.password)
    kw.setdefault("cafile", eng.cafile)
    return Connection(eng.url, **kw)


def test_tls_with_cafile_and_version(local_engine):
    assert local_engine.url.startswith("https://")
    with connect(local_engine) as conn:
        assert conn.engine_version >= (4, 2) and not conn.legacy
        sds = conn.storage_domains.list()
        assert any(sd.type == "data" and sd.name for sd in sds)


@pytest.mark.slow
def test_wrong_ca_is_connection_failed_with_hint(local_engine, tmp_path):
    with local.LocalEngine(str(tmp_path / "other")) as other:
        other_ca = other.cafile
    assert other_ca != local_engine.cafile
    for cafile in (other_ca, None):  # another CA, and the system store
        with connect(local_engine, cafile=cafile) as conn:
            with pytest.raises(ConnectionFailed) as e:
                conn.test()
        msg = str(e.value)
        assert e.value.exit_code == 3
        assert "certificate verify failed" in msg and "--cafile" in msg and "--insecure" in msg
        assert "/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA" in msg


def test_insecure_skips_verification(local_engine):
    with connect(local_engine, cafile=None, insecure=True) as conn:
        assert conn.storage_domains.list()


def test_wrong_password_is_auth_error(local_engine):
    with connect(local_engine, password="not-the-password") as conn:
        with pytest.raises(AuthError) as e:
            conn.storage_domains.list()
    assert e.value.exit_code == 3
    assert "not-the-password" not in str(e.value)


@pytest.mark.slow
def test_token_expiry_one_retry(tmp_path):
    with local.LocalEngine(str(tmp_path / "e"), token_lifetime=0.5) as eng:
        with connect(eng) as conn:
            conn.storage_domains.list()
            first = conn._token
            time.sleep(0.8)
            assert conn.storage_domains.list()
            assert conn._token != first


def test_disk_lifecycle_faults_and_transfer(local_engine):
    with connect(local_engine) as conn:
        sd = conn.storage_domains.find("data")
        disk = conn.disks.add(name="lt-disk", provisioned_size=1 << 20,
                              storage_domain=sd.name, format="qcow2")
        disk = wait_for_disk(conn, disk.id, timeout=20)
        assert (disk.format, disk.provisioned_size) == ("cow", 1 << 20)
        assert disk.storage_domain_ids == (sd.id,)
        assert conn.disks.find("lt-disk").id == disk.id
        with pytest.raises(NotFound) as e:
            conn.disks.get("00000000-0000-0000-0000-000000000001")
        assert e.value.status == 404
        t = conn.transfers.add(disk_id=disk.id, direction="upload", format="raw")
        t = wait_for_transfer_phase(conn, t.id, "transferring", timeout=20)
        assert t.transfer_url and t.transfer_url.startswith("https://")
        assert t.id in [x.id for x in conn.transfers.list()]
        # The disk is locked while transferring: removing it conflicts.
        with pytest.raises(Conflict) as e:
            conn.disks.remove(disk.id)
        assert e.value.status == 409 and e.value.detail
        conn.transfers.extend(t.id)
        conn.transfers.cancel(t.id)
        # An upload that was cancelled removes the disk.
        assert wait_for_disk_unlocked(conn, disk.id, timeout=30) is None


def test_cancelled_fresh_upload_goes_from_locked_to_gone(local_engine, monkeypatch):
    """A client polling the disk after a cancel sees it locked, then gone:
    never unlocked in between, which would read as a kept disk."""
    store = local_engine.server.store
    statuses = []
    update = store.update

    def recording(kind, id_, **fields):
        if kind == "disk" and "status" in fields:
            statuses.append(fields["status"])
        return update(kind, id_, **fields)

    monkeypatch.setattr(store, "update", recording)
    with connect(local_engine) as conn:
        disk = wait_for_disk(conn, conn.disks.add(
            name="fresh", provisioned_size=1 << 20, storage_domain="data").id, timeout=20)
        t = conn.transfers.add(disk_id=disk.id, direction="upload", format="raw")
        wait_for_transfer_phase(conn, t.id, "transferring", timeout=20)
        del statuses[:]
        conn.transfers.cancel(t.id)
        assert wait_for_disk_unlocked(conn, disk.id, timeout=30) is None
    assert set(statuses) <= {"locked"}


@pytest.mark.slow
def test_wait_deadline_against_engine(local_engine):
    with connect(local_engine) as conn:
        disk = wait_for_disk(conn, conn.disks.add(
            name="w", provisioned_size=1 << 20, storage_domain="data").id, timeout=20)
        with pytest.raises(TimeoutExpired, match="to be illegal"):
            wait_for_disk(conn, disk.id, status="illegal", timeout=0.3)


def test_json_and_xml_give_the_same_entities(local_engine):
    kw = {"username": local_engine.username, "password": local_engine.password,
          "cafile": local_engine.cafile}
    with Connection(local_engine.url, **kw) as conn:
        disk = wait_for_disk(conn, conn.disks.add(
            name="both", provisioned_size=2 << 20, storage_domain="data", format="qcow2").id,
            timeout=20)
        t = conn.transfers.add(disk_id=disk.id, direction="download", format="raw")
        wait_for_transfer_phase(conn, t.id, "transferring", timeout=20)
        as_xml = (conn.disks.list(), conn.transfers.list(), conn.hosts.list(), conn.api_info(),
                  [sd.name for sd in conn.storage_domains.list()])
    with Connection(local_engine.url, headers={"Accept": "application/json"}, **kw) as conn:
        as_json = (conn.disks.list(), conn.transfers.list(), conn.hosts.list(), conn.api_info(),
                   [sd.name for sd in conn.storage_domains.list()])
        assert conn.request("GET", "disks").headers["content-type"].startswith("application/json")
    assert as_json == as_xml
    assert as_xml[0][0].provisioned_size == 2 << 20 and as_xml[1][0].phase == "transferring"


@pytest.mark.slow
def test_wrong_scheme_messages(tmp_path):
    with local.LocalEngine(str(tmp_path / "plain"), tls=False) as eng:
        with Connection(eng.url.replace("http://", "https://"), username=eng.username,
                        password=eng.password) as conn:
            with pytest.raises(ConnectionFailed, match="TLS handshake.*scheme"):
                conn.test()
    with local.LocalEngine(str(tmp_path / "tls")) as eng:
        with Connection(eng.url.replace("https://", "http://"), username=eng.username,
                        password=eng.password) as conn:
            with pytest.raises(ConnectionFailed, match="need https"):
                conn.test()


def test_vm_snapshot_layers(local_engine):
    from imagetool.engine import wait_for_snapshot
    with connect(local_engine) as conn:
        disk = wait_for_disk(conn, conn.disks.add(
            name="vd", provisioned_size=1 << 20, storage_domain="data", format="qcow2").id,
            timeout=20)
        vm = conn.vms.add(name="lvm")
        assert conn.vms.find("lvm").id == vm.id
        att = conn.vms.attach_disk(vm.id, disk.id)
        assert att.disk_id == disk.id and att.vm_id == vm.id
        snap = conn.snapshots.add(vm.id, description="s1")
        snap = wait_for_snapshot(conn, vm.id, snap.id, timeout=20)
        assert snap.description == "s1" and snap.snapshot_type == "regular"
        assert {s.snapshot_type for s in conn.snapshots.list(vm.id)} == {"active", "regular"}
        assert [d.id for d in conn.snapshots.disks(vm.id, snap.id)] == [disk.id]
        layers = conn.disks.snapshots(disk.id)
        # Two layers after one snapshot: the base and its child.
        assert len(layers) == 2
        base = [s for s in layers if s.parent_id is None]
        top = [s for s in layers if s.parent_id is not None]
        assert len(base) == 1 and top[0].parent_id == base[0].id
        assert all(s.disk_id == disk.id for s in layers)
        assert conn.vms.get(vm.id, all_content=True).ovf.lstrip().startswith("<?xml")
        conn.vms.detach_disk(vm.id, disk.id)
        assert conn.vms.disk_attachments(vm.id) == []
        conn.vms.remove(vm.id)
        with pytest.raises(NotFound):
            conn.vms.get(vm.id)
