"""Transfers left behind by an engine restart, and ``upload --resume``
without a journal.

The engine REST API guide's timeout policies apply to a transfer restored
after a restart as to a live one, with the inactivity clock started at the
engine's start: a returning client can resume within it, and a ``cancel``
transfer nobody comes back to is cancelled. ``upload --resume`` never
quietly makes a second disk with the name of one already there.
"""

from __future__ import annotations

import os

import pytest

from imagetool.phases import TERMINAL

from helpers import ENGINE_PASSWORD as PASSWORD
from helpers import MiB, api_json, api_request, disks_named, make_random_raw, put_file, wait_for
from test_hostile_storage import (disk_status, download_raw, end, new_disk,
                                  upload_raw)
from imagetool.server.local import LocalEngine

# Every test here starts engines or CLI processes: out of the quick loop.
pytestmark = pytest.mark.slow


@pytest.fixture
def restartable(tmp_path):
    """A LocalEngine of this test only; ``box[0]`` is the running one."""
    box = [LocalEngine(str(tmp_path / "engine"), password=PASSWORD,
                       finished_ttl=120.0).start()]
    yield box
    box[0].stop()


def restart(box) -> LocalEngine:
    box[0].stop()
    box[0] = LocalEngine(box[0].data_dir, password=PASSWORD, finished_ttl=120.0).start()
    return box[0]


def transfer(engine, tid) -> dict:
    status, body = api_json(engine, "GET", f"imagetransfers/{tid}")
    assert status == 200, body
    return body


def upload_policy(engine, disk_id, policy, timeout) -> dict:
    import xml.etree.ElementTree as ET
    body = (f'<image_transfer><disk id="{disk_id}"/><direction>upload</direction>'
            f"<format>raw</format><timeout_policy>{policy}</timeout_policy>"
            f"<inactivity_timeout>{timeout}</inactivity_timeout></image_transfer>")
    status, _, reply = api_request(engine, "POST", "imagetransfers", body,
                                   {"Content-Type": "application/xml"})
    assert status == 201, reply
    tid = ET.fromstring(reply).get("id")
    return wait_for(lambda: transfer(engine, tid), lambda t: t["phase"] == "transferring")


def action(engine, tid, name) -> int:
    return api_request(engine, "POST", f"imagetransfers/{tid}/{name}", "<action/>",
                       {"Content-Type": "application/xml"})[0]


def test_restored_cancel_transfer_can_be_resumed_within_its_timeout(restartable, tmp_path):
    """The inactivity clock restarts at engine start: a client coming back
    within it resumes and finishes (it used to be cancelled at once)."""
    engine = restartable[0]
    disk_id = new_disk(engine, "restored", fmt="raw")
    data = os.urandom(4 * MiB)
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as f:
        f.write(data)
    t = upload_policy(engine, disk_id, "cancel", 60)
    put_file(t["transfer_url"], engine.cafile, src)
    engine = restart(restartable)
    assert transfer(engine, t["id"])["phase"] == "paused_system"
    assert action(engine, t["id"], "resume") == 200
    t = wait_for(lambda: transfer(engine, t["id"]), lambda x: x["phase"] == "transferring")
    put_file(t["transfer_url"], engine.cafile, src)
    assert end(engine, t) == "finished_success"
    assert download_raw(engine, disk_id) == data


@pytest.mark.slow
def test_restored_cancel_transfer_times_out(restartable, tmp_path):
    """Nobody comes back: after its inactivity timeout the restored transfer
    is cancelled; the new disk is removed, the existing one keeps its data."""
    engine = restartable[0]
    fresh = new_disk(engine, "restored-new", fmt="raw")
    kept = new_disk(engine, "restored-kept", fmt="raw")
    first = os.urandom(4 * MiB)
    assert upload_raw(engine, kept, first, tmp_path) == "finished_success"
    src = str(tmp_path / "other.raw")
    with open(src, "wb") as f:
        f.write(os.urandom(4 * MiB))
    ids = []
    for disk_id in (fresh, kept):
        t = upload_policy(engine, disk_id, "cancel", 8)
        put_file(t["transfer_url"], engine.cafile, src)
        ids.append(t["id"])
    engine = restart(restartable)
    for tid in ids:
        t = wait_for(lambda: transfer(engine, tid),
                     lambda x: x["phase"] in TERMINAL, timeout=90)
        assert t["phase"] == "finished_failure"
    assert disk_status(engine, fresh) == 404
    assert disk_status(engine, kept) == "ok"
    assert download_raw(engine, kept) == first


def test_restored_pause_transfer_stays_paused_after_its_timeout(restartable, tmp_path):
    """pause (and legacy for uploads): paused, disk locked, until a resume or
    a cancel; the cancel unlocks (here: removes the new disk)."""
    engine = restartable[0]
    disk_id = new_disk(engine, "restored-paused", fmt="raw")
    t = upload_policy(engine, disk_id, "pause", 1)
    engine = restart(restartable)
    import time
    time.sleep(2.5)            # past the inactivity timeout: nothing changes
    assert transfer(engine, t["id"])["phase"] == "paused_system"
    assert disk_status(engine, disk_id) == "locked"
    assert action(engine, t["id"], "cancel") == 200
    wait_for(lambda: transfer(engine, t["id"]), lambda x: x["phase"] == "finished_failure")
    assert disk_status(engine, disk_id) == 404


def test_resume_without_journal_refuses_a_same_named_disk(faulty_engine, cli, tmp_path):
    """A plain upload whose journal is gone left a disk named like the file:
    --resume says which disk and what to do, and creates no second one."""
    fe = faulty_engine
    image = make_random_raw(str(tmp_path / "dup.raw"), 2 * MiB, seed=5)
    with fe.connect() as conn:
        disk = conn.disks.add(name="dup-name", provisioned_size=2 * MiB,
                              storage_domain="data", format="raw")
        wait_for(lambda: conn.disks.get(disk.id).status, lambda s: s == "ok")
        t = conn.transfers.add(disk_id=disk.id, direction="upload", format="raw",
                               timeout_policy="pause")
        wait_for(lambda: conn.transfers.get(t.id).phase, lambda p: p == "transferring")
    code, out, err = cli("upload", image, "--sd", "data", "--name", "dup-name", "--resume")
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert disk.id in err and f"imagetool transfers cancel {t.id}" in err
    assert f"imagetool disks remove --yes {disk.id}" in err and "--name" in err
    assert [d.id for d in disks_named(fe, "dup-name")] == [disk.id]
    with fe.connect() as conn:
        conn.transfers.cancel(t.id)
    wait_for(lambda: disks_named(fe, "dup-name"), lambda ds: ds == [])
    # With the leftover gone, --resume starts a new upload.
    code, out, err = cli("upload", image, "--sd", "data", "--name", "dup-name", "--resume")
    assert code == 0, err
    assert len(disks_named(fe, "dup-name")) == 1
