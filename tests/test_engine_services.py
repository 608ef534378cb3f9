"""Services and waits against the in-memory fake engine."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import pytest

from engine_fixtures import PASSWORD, SD_ID, USERNAME, FakeEngine, Response
from imagetool.engine import (Connection, wait_for_disk, wait_for_disk_unlocked,
                              wait_for_transfer_phase)
from imagetool.engine.wait import Poller
from imagetool.errors import EngineError, NotFound, TimeoutExpired, TransferError


def connect(engine: FakeEngine) -> Connection:
    return Connection("https://engine.example/ovirt-engine/api", username=USERNAME,
                      password=PASSWORD, transport=engine.transport())


def posted(engine: FakeEngine, suffix: str) -> ET.Element:
    reqs = [r for r in engine.requests if r["method"] == "POST" and r["path"].endswith(suffix)]
    return ET.fromstring(reqs[-1]["body"])


def test_disk_add_body_and_wait_ok():
    engine = FakeEngine()
    with connect(engine) as conn:
        disk = conn.disks.add(name="new", provisioned_size=5 << 20, storage_domain="data",
                              format="qcow2", sparse=True, initial_size=1 << 20,
                              content_type="data", disk_id="33333333-3333-3333-3333-333333333333")
        assert disk.status == "locked" and disk.id == "33333333-3333-3333-3333-333333333333"
        body = posted(engine, "/api/disks")
        assert body.get("id") == "33333333-3333-3333-3333-333333333333"
        assert body.findtext("format") == "cow"
        assert body.findtext("provisioned_size") == str(5 << 20)
        assert body.findtext("initial_size") == str(1 << 20)
        assert body.findtext("sparse") == "true"
        assert body.find("storage_domains/storage_domain").get("id") == SD_ID
        assert body.find("backup") is None and body.find("description") is None
        ready = wait_for_disk(conn, disk.id, timeout=5)
        assert ready.status == "ok"


def test_disk_add_rejects_unknown_format_and_sd():
    engine = FakeEngine()
    with connect(engine) as conn:
        with pytest.raises(ValueError, match="unknown disk format"):
            conn.disks.add(name="x", provisioned_size=1, storage_domain="data", format="vmdk")
        with pytest.raises(NotFound, match="no storage domain"):
            conn.disks.add(name="x", provisioned_size=1, storage_domain="nosuch")


def test_find_by_id_by_name_and_ambiguous():
    engine = FakeEngine()
    a = engine.add_disk("alpha")
    engine.add_disk("alphabet")  # the engine's search would match it too
    engine.add_disk("twin")
    engine.add_disk("twin")
    with connect(engine) as conn:
        assert conn.disks.find(a).name == "alpha"
        assert conn.disks.find("alpha").id == a
        with pytest.raises(EngineError, match="2 disks are named 'twin'.*use the id"):
            conn.disks.find("twin")
        with pytest.raises(NotFound, match="no disk with id or name 'zeta'"):
            conn.disks.find("zeta")
        # A well-formed id that does not exist is also searched as a name.
        with pytest.raises(NotFound):
            conn.disks.find("44444444-4444-4444-4444-444444444444")
        assert conn.storage_domains.find("data").id == SD_ID
        assert conn.storage_domains.find(SD_ID).name == "data"


def test_list_search_and_max_sent():
    engine = FakeEngine()
    for i in range(3):
        engine.add_disk(f"d{i}")
    with connect(engine) as conn:
        assert len(conn.disks.list(max=2)) == 2
        assert [d.name for d in conn.disks.list(search="name=d1")] == ["d1"]
    q = [r["query"] for r in engine.requests if r["path"].endswith("/disks")]
    assert {"max": "2"} in q and {"search": "name=d1"} in q


def test_transfer_add_new_engine_body():
    engine = FakeEngine()
    disk_id = engine.add_disk("d")
    with connect(engine) as conn:
        t = conn.transfers.add(disk_id=disk_id, direction="upload", format="raw",
                               inactivity_timeout=120, timeout_policy="cancel")
        body = posted(engine, "/imagetransfers")
        assert body.find("disk").get("id") == disk_id
        assert body.findtext("direction") == "upload"
        assert body.findtext("format") == "raw"
        assert body.findtext("inactivity_timeout") == "120"
        assert body.findtext("timeout_policy") == "cancel"
        assert body.find("image") is None and body.find("shallow") is None
        assert t.phase == "initializing" and t.disk_id == disk_id
        t = wait_for_transfer_phase(conn, t.id, "transferring", timeout=5)
        assert t.transfer_url.startswith("https://host:54322/images/")
        conn.transfers.extend(t.id)
        conn.transfers.finalize(t.id)
        done = wait_for_transfer_phase(conn, t.id, "finished_success", timeout=5)
        assert done.phase == "finished_success"
    actions = [r["path"].rsplit("/", 1)[1] for r in engine.requests
               if r["method"] == "POST" and "/imagetransfers/" in r["path"]]
    assert actions == ["extend", "finalize"]
    bodies = [r["body"] for r in engine.requests
              if r["method"] == "POST" and "/imagetransfers/" in r["path"]]
    assert all(ET.fromstring(b).tag == "action" for b in bodies)


def test_transfer_add_snapshot_shallow_download():
    engine = FakeEngine()
    with connect(engine) as conn:
        conn.transfers.add(snapshot_id="s1", direction="download", format="raw", shallow=True)
        body = posted(engine, "/imagetransfers")
        assert body.find("snapshot").get("id") == "s1" and body.find("disk") is None
        assert body.findtext("shallow") == "true"
        with pytest.raises(ValueError):
            conn.transfers.add(direction="download")
        with pytest.raises(ValueError):
            conn.transfers.add(disk_id="x", direction="sideways")


def test_transfer_add_41_engine_uses_image_and_no_format():
    engine = FakeEngine(version=(4, 1))
    disk_id = engine.add_disk("old")
    with connect(engine) as conn:
        assert conn.legacy
        conn.transfers.add(disk_id=disk_id, direction="upload", format="raw",
                           timeout_policy="cancel", inactivity_timeout=60)
        body = posted(engine, "/imagetransfers")
    assert body.find("image").get("id") == engine.disks[disk_id]["image_id"]
    assert body.find("disk") is None
    assert body.find("format") is None and body.find("timeout_policy") is None
    assert body.findtext("inactivity_timeout") == "60"


def test_failed_action_raises():
    engine = FakeEngine()
    disk_id = engine.add_disk("d")
    with connect(engine) as conn:
        t = conn.transfers.add(disk_id=disk_id)
        engine.faults[("POST", "/finalize")] = [Response(200, (
            b"<action><status>failed</status><fault><reason>Operation Failed</reason>"
            b"<detail>bad phase</detail></fault></action>"))]
        with pytest.raises(EngineError, match="finalize failed: bad phase"):
            conn.transfers.finalize(t.id)


def test_wait_transfer_404_after_finalize_looks_at_disk():
    engine = FakeEngine(delete_after_finalize=True)
    disk_id = engine.add_disk("d")
    with connect(engine) as conn:
        t = conn.transfers.add(disk_id=disk_id)
        wait_for_transfer_phase(conn, t.id, "transferring", timeout=5)
        conn.transfers.finalize(t.id)
        done = wait_for_transfer_phase(conn, t.id, "finished_success", timeout=5)
        assert done.phase == "finished_success" and done.disk_id == disk_id
        # Same, but the engine dropped the disk: the upload failed.
        t2 = conn.transfers.add(disk_id=disk_id)
        wait_for_transfer_phase(conn, t2.id, "transferring", timeout=5)
        conn.transfers.finalize(t2.id)
        del engine.disks[disk_id]
        with pytest.raises(TransferError, match="was removed"):
            wait_for_transfer_phase(conn, t2.id, "finished_success", timeout=5)


def test_wait_transfer_404_disk_illegal():
    engine = FakeEngine(delete_after_finalize=True)
    disk_id = engine.add_disk("d")
    with connect(engine) as conn:
        t = conn.transfers.add(disk_id=disk_id)
        conn.transfers.finalize(t.id)
        engine.disks[disk_id]["status"] = "illegal"
        with pytest.raises(TransferError, match="illegal"):
            wait_for_transfer_phase(conn, t.id, "finished_success", timeout=5)


def test_wait_transfer_failure_phases():
    engine = FakeEngine(add_phases=["initializing", "paused_system"])
    disk_id = engine.add_disk("d")
    with connect(engine) as conn:
        t = conn.transfers.add(disk_id=disk_id)
        with pytest.raises(TransferError, match="paused by the system"):
            wait_for_transfer_phase(conn, t.id, "transferring", timeout=5)
        engine.finalize_phases = ["finalizing_success", "finalizing_failure", "finished_failure"]
        t = conn.transfers.add(disk_id=disk_id)
        conn.transfers.finalize(t.id)
        with pytest.raises(TransferError, match="finalizing_failure"):
            wait_for_transfer_phase(conn, t.id, "finished_success", timeout=5)
        # Asking for the failure phase returns it instead.
        t = conn.transfers.add(disk_id=disk_id)
        conn.transfers.cancel(t.id)
        end = wait_for_transfer_phase(conn, t.id, {"finished_success", "finished_failure"},
                                      timeout=5)
        assert end.phase == "finished_failure"


def test_wait_transfer_deadline():
    engine = FakeEngine(add_phases=["initializing"])
    disk_id = engine.add_disk("d")
    with connect(engine) as conn:
        t = conn.transfers.add(disk_id=disk_id)
        start = time.monotonic()
        with pytest.raises(TimeoutExpired) as e:
            wait_for_transfer_phase(conn, t.id, "transferring", timeout=0.5)
        elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 3
    assert f"transfer {t.id}" in str(e.value) and "transferring" in str(e.value)
    assert "last phase: initializing" in str(e.value)


def test_wait_transfer_unknown_id_is_not_found():
    engine = FakeEngine()
    with connect(engine) as conn:
        with pytest.raises(NotFound):
            wait_for_transfer_phase(conn, "nope", "transferring", timeout=1)


def test_wait_disk_illegal_deadline_and_unlocked():
    engine = FakeEngine()
    bad = engine.add_disk("bad", status="locked")
    engine.disks[bad]["next_status"] = "illegal"
    stuck = engine.add_disk("stuck", status="locked")
    engine.disks[stuck]["next_status"] = "locked"
    with connect(engine) as conn:
        with pytest.raises(TransferError, match="became illegal"):
            wait_for_disk(conn, bad, timeout=5)
        with pytest.raises(TimeoutExpired, match="disk stuck to be ok .last status: locked"):
            wait_for_disk(conn, stuck, timeout=0.3)
        with pytest.raises(TimeoutExpired, match="unlocked"):
            wait_for_disk_unlocked(conn, stuck, timeout=0.3)
        engine.disks[stuck]["status"] = "ok"
        assert wait_for_disk_unlocked(conn, stuck, timeout=1).status == "ok"
        del engine.disks[stuck]
        assert wait_for_disk_unlocked(conn, stuck, timeout=1) is None


def test_poller_backoff_and_deadline():
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    p = Poller(10.0, clock=lambda: now[0], sleep=sleep)
    while p.sleep():
        pass
    assert slept[0] == pytest.approx(0.1)
    assert slept[1] == pytest.approx(0.15)
    assert max(slept) == pytest.approx(2.0)
    assert sum(slept) == pytest.approx(10.0)  # the last sleep is cut at the deadline
    assert p.expired()


def test_disk_remove_and_snapshots_fallback():
    engine = FakeEngine()
    disk_id = engine.add_disk("gone")
    with connect(engine) as conn:
        # The fake has no disksnapshots sub-collection: falls back to the
        # storage domain's list, which it does not have either -> NotFound.
        with pytest.raises(NotFound):
            conn.disks.snapshots(disk_id)
        conn.disks.remove(disk_id)
        with pytest.raises(NotFound):
            conn.disks.get(disk_id)
