"""Services and waits against the in-memory fake engine."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import pytest

from fake_engine import PASSWORD, SD_ID, USERNAME, FakeEngine, Response
from imagetool.engine import (Connection, wait_for_disk, wait_for_disk_unlocked,
                              wait_for_transfer_phase)
from imagetool.engine.entities import Vm
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_wait_transfer_deadline():
    engine = FakeEngine(add_phases=["initializing"])
    disk_id = engine.add_disk("d")
    with connect(engine) as conn:
        t = conn.transfers.add(disk_id=disk_id)
        start = time.monotonic()
        with pytest.raises(TimeoutExpired) as e:
            wait_for_transfer_phase(conn, t.id, "transferring", timeout=0.5)
        elapsed = time.monotonic() - start
    # gave up at its deadline: not at once, and not much later (a bound
    # generous enough for a loaded machine)
    assert 0.4 < elapsed < 30
    assert f"transfer {t.id}" in str(e.value) and "transferring" in str(e.value)
    assert "last phase: initializing" in str(e.value)


def test_wait_transfer_unknown_id_is_not_found():
    engine = FakeEngine()
    with connect(engine) as conn:
        with pytest.raises(NotFound):
            wait_for_transfer_phase(conn, "nope", "transferring", timeout=1)


@pytest.mark.slow
def test_wait_disk_illegal_deadline_and_unlocked():
    engine = FakeEngine()
    bad = engine.add_disk("bad", status="locked")
    engine.disks[bad]["next_status"] = "illegal"
    stuck = engine.add_disk("stuck", status="locked")
    engine.disks[stuck]["next_status"] = "locked"
    with connect(engine) as conn:
        with pytest.raises(TransferError, match="became illegal"):
            wait_for_disk(conn, bad, timeout=5)
        with pytest.raises(TimeoutExpired, match=r"disk stuck to be ok \(last: locked\)"):
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
    assert now[0] >= p.deadline


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


class Canned:
    """A transport answering fixed documents per (method, path); records bodies."""

    def __init__(self, answers: dict[tuple[str, str], bytes]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, str, dict, bytes]] = []

    def transport(self):
        import httpx

        def handler(request: httpx.Request) -> httpx.Response:
            path = request.url.path
            if path.endswith("/sso/oauth/token"):
                return httpx.Response(200, json={"access_token": "t", "token_type": "bearer"})
            self.seen.append((request.method, path, dict(request.url.params), request.read()))
            rel = path.removeprefix("/ovirt-engine/api").strip("/")
            body = self.answers.get((request.method, rel))
            if body is None:
                return httpx.Response(404, content=b"<fault><reason>Not Found</reason>"
                                                   b"<detail>no</detail></fault>")
            return httpx.Response(200, content=body,
                                  headers={"content-type": "application/xml"})
        return httpx.MockTransport(handler)


def test_vm_and_snapshot_requests():
    canned = Canned({
        ("POST", "vms"): b'<vm id="v1"><name>vm1</name><status>down</status></vm>',
        ("GET", "vms/v1"): (b'<vm id="v1"><name>vm1</name><initialization><configuration>'
                            b'<type>ovf</type><data>&lt;ovf/&gt;</data></configuration>'
                            b'</initialization></vm>'),
        ("POST", "vms/v1/diskattachments"): (b'<disk_attachment id="d1"><active>true</active>'
                                             b'<interface>virtio_scsi</interface>'
                                             b'<disk id="d1"/><vm id="v1"/></disk_attachment>'),
        ("DELETE", "vms/v1/diskattachments/d1"): b"",
        ("POST", "vms/v1/snapshots"): (b'<snapshot id="s1"><description>before</description>'
                                       b'<snapshot_status>locked</snapshot_status></snapshot>'),
        ("GET", "vms/v1/snapshots/s1"): (b'<snapshot id="s1"><snapshot_status>ok'
                                         b'</snapshot_status></snapshot>'),
        ("POST", "vms/v1/snapshots/s1/restore"): b"<action><status>complete</status></action>",
        ("GET", "vms/v1/snapshots/s1/disks"): b'<disks><disk id="d1"><name>a</name></disk></disks>',
        ("GET", "disks/d1/disksnapshots"): (b'<disk_snapshots><disk_snapshot id="l1"><disk id="d1"/>'
                                            b'</disk_snapshot><disk_snapshot id="l2"><disk id="d1"/>'
                                            b'<parent id="l1"/></disk_snapshot></disk_snapshots>'),
    })
    from imagetool.engine import wait_for_snapshot
    with Connection("https://e", username="u", password="p",
                    transport=canned.transport()) as conn:
        vm = conn.vms.add(name="vm1", cluster="Default", memory=1 << 30)
        assert vm.id == "v1" and vm.status == "down"
        assert conn.vms.get("v1", all_content=True).ovf == "<ovf/>"
        da = conn.vms.attach_disk("v1", "d1", bootable=True)
        assert da.disk_id == "d1" and da.active is True
        conn.vms.detach_disk("v1", "d1")
        snap = conn.snapshots.add("v1", description="before", disk_ids=["d1"])
        assert snap.snapshot_status == "locked"
        assert wait_for_snapshot(conn, "v1", "s1", timeout=5).snapshot_status == "ok"
        conn.snapshots.restore("v1", "s1")
        assert [d.id for d in conn.snapshots.disks("v1", "s1")] == ["d1"]
        layers = conn.disks.snapshots("d1")
        assert [(s.id, s.parent_id) for s in layers] == [("l1", None), ("l2", "l1")]
    by_call = {(m, p.removeprefix("/ovirt-engine/api/")): (q, b) for m, p, q, b in canned.seen}
    vm_body = ET.fromstring(by_call[("POST", "vms")][1])
    assert vm_body.findtext("name") == "vm1" and vm_body.findtext("memory") == str(1 << 30)
    assert vm_body.findtext("cluster/name") == "Default"
    assert vm_body.findtext("template/name") == "Blank"
    assert by_call[("GET", "vms/v1")][0] == {"all_content": "true"}
    att = ET.fromstring(by_call[("POST", "vms/v1/diskattachments")][1])
    assert att.find("disk").get("id") == "d1" and att.findtext("bootable") == "true"
    assert att.findtext("interface") == "virtio_scsi"
    assert by_call[("DELETE", "vms/v1/diskattachments/d1")][0] == {"detach_only": "true"}
    snap_body = ET.fromstring(by_call[("POST", "vms/v1/snapshots")][1])
    assert snap_body.findtext("description") == "before"
    assert snap_body.findtext("persist_memorystate") == "false"
    assert snap_body.find("disk_attachments/disk_attachment/disk").get("id") == "d1"
    assert ET.fromstring(by_call[("POST", "vms/v1/snapshots/s1/restore")][1]).tag == "action"


@pytest.mark.parametrize("kind", ["vm", "template"])
def test_add_from_ova_posts_an_ova_configuration(kind):
    canned = Canned({("POST", f"{kind}s"): f'<{kind} id="n1"><name>web</name></{kind}>'.encode()})
    with Connection("https://e", username="u", password="p",
                    transport=canned.transport()) as conn:
        service = conn.templates if kind == "template" else conn.vms
        made = service.add_from_ova(name="web", cluster="Default", ovf="<Envelope/>")
    assert made.id == "n1" and made.name == "web"
    by_call = {(m, p.removeprefix("/ovirt-engine/api/")): b for m, p, _, b in canned.seen}
    sent = ET.fromstring(by_call[("POST", f"{kind}s")])
    assert sent.tag == kind
    assert sent.findtext("name") == "web" and sent.findtext("cluster/name") == "Default"
    assert sent.findtext("initialization/configuration/type") == "ova"
    assert sent.findtext("initialization/configuration/data") == "<Envelope/>"
    assert sent.find("template") is None


def test_backup_and_checkpoint_requests():
    canned = Canned({
        ("POST", "vms/v1/backups"): (b'<backup id="b1"><phase>initializing</phase>'
                                     b'<to_checkpoint_id>c1</to_checkpoint_id></backup>'),
        ("GET", "vms/v1/backups/b1"): b'<backup id="b1"><phase>ready</phase></backup>',
        ("GET", "vms/v1/backups"): b'<backups><backup id="b1"/></backups>',
        ("GET", "vms/v1/backups/b1/disks"): (b'<disks><disk id="d1"><backup_mode>full'
                                             b'</backup_mode></disk></disks>'),
        ("POST", "vms/v1/backups/b1/finalize"): b"<action><status>complete</status></action>",
        ("GET", "vms/v1/checkpoints"): (b'<checkpoints><checkpoint id="c0"/>'
                                        b'<checkpoint id="c1"/></checkpoints>'),
        ("GET", "vms/v1/checkpoints/c1"): b'<checkpoint id="c1"><state>created</state></checkpoint>',
        ("DELETE", "vms/v1/checkpoints/c0"): b"",
    })
    from imagetool.engine.wait import wait_for_backup
    with Connection("https://e", username="u", password="p",
                    transport=canned.transport()) as conn:
        b = conn.backups.add("v1", disk_ids=["d1", "d2"], from_checkpoint_id="c0",
                             description="nightly")
        assert (b.id, b.phase, b.to_checkpoint_id) == ("b1", "initializing", "c1")
        assert wait_for_backup(conn, "v1", "b1", "ready", timeout=5).phase == "ready"
        assert [x.id for x in conn.backups.list("v1")] == ["b1"]
        assert [(d.id, d.backup_mode) for d in conn.backups.disks("v1", "b1")] == [("d1", "full")]
        conn.backups.finalize("v1", "b1")
        assert [c.id for c in conn.checkpoints.list("v1")] == ["c0", "c1"]
        assert conn.checkpoints.get("v1", "c1").state == "created"
        conn.checkpoints.remove("v1", "c0")
    by_call = {(m, p.removeprefix("/ovirt-engine/api/")): b for m, p, q, b in canned.seen}
    body = ET.fromstring(by_call[("POST", "vms/v1/backups")])
    assert body.tag == "backup" and body.findtext("from_checkpoint_id") == "c0"
    assert body.findtext("description") == "nightly"
    assert [d.get("id") for d in body.findall("disks/disk")] == ["d1", "d2"]
    assert ET.fromstring(by_call[("POST", "vms/v1/backups/b1/finalize")]).tag == "action"
    assert ("DELETE", "vms/v1/checkpoints/c0") in by_call


def test_find_takes_an_entity_already_found():
    """Workflows accept a Vm or Disk, an id or a name: find passes an entity
    through without asking the engine, and refuses anything else."""
    canned = Canned({})
    with Connection("https://e", username="u", password="p",
                    transport=canned.transport()) as conn:
        vm = Vm(id="v1", name="web")
        assert conn.vms.find(vm) is vm
        with pytest.raises(TypeError, match="a disk is a Disk, an id or a name, not int"):
            conn.disks.find(3)
    assert canned.seen == []


def test_disk_snapshots_fallback_to_storage_domain():
    canned = Canned({
        ("GET", "disks/d1"): (b'<disk id="d1"><storage_domains><storage_domain id="sd1"/>'
                              b'</storage_domains></disk>'),
        ("GET", "storagedomains/sd1/disksnapshots"): (
            b'<disk_snapshots><disk_snapshot id="l1"><disk id="d1"/></disk_snapshot>'
            b'<disk_snapshot id="x"><disk id="other"/></disk_snapshot></disk_snapshots>'),
    })
    with Connection("https://e", username="u", password="p",
                    transport=canned.transport()) as conn:
        assert [s.id for s in conn.disks.snapshots("d1")] == ["l1"]


def test_find_matches_alias_only_disks():
    canned = Canned({("GET", "disks"): b'<disks><disk id="a"><alias>legacy</alias></disk>'
                                       b'<disk id="b"><alias>legacy2</alias></disk></disks>'})
    with Connection("https://e", username="u", password="p",
                    transport=canned.transport()) as conn:
        assert conn.disks.find("legacy").id == "a"
    assert [q for m, p, q, b in canned.seen if p.endswith("/disks")] == [{"search": "name=legacy"}]


def test_an_item_method_given_only_the_vm_id_sends_nothing():
    """The built action and removal methods of a VM's snapshots, backups and
    checkpoints need both ids: with one they must not reach the collection
    (``DELETE vms/X/snapshots``) but fail before any request."""
    canned = Canned({})
    with Connection("https://e", username="u", password="p",
                    transport=canned.transport()) as conn:
        canned.seen.clear()
        for call in (conn.snapshots.remove, conn.snapshots.restore, conn.backups.finalize,
                     conn.checkpoints.remove, conn.snapshots.disks):
            with pytest.raises(TypeError):
                call("v1")
    assert canned.seen == []
