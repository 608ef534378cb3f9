"""Persistent data-plane faults, then ``--resume`` to an identical result (issue 5).

An ``upload --resume`` or ``download --resume`` meets a fault that keeps
happening from some request on (every PUT/GET body cut after N bytes, 503 on
every request, 403 "ticket gone"), so the retries give up and the command
fails. Each test checks the whole one-line error message (only ids, paths
and numbers normalised), the exit code and the state left behind (an upload's
disk kept under its paused transfer and the journal; a download's disk
unlocked, its transfer ended, no file under the final name), then removes
the fault, runs the same command again and checks that it completes with
data identical to the source (qemu-img compare, and the server's checksum)
while sending little more than what was missing (the proxy's byte counters
against the journal's completed ranges).
"""

from __future__ import annotations

import glob
import json
import os
import re
import time

import pytest

from fault_proxy import CutRequestBody, CutResponseBody, Expire403, Respond, Rule
from helpers import (MiB, disks_named, make_random_raw, new_phases, no_partial_files,
                     same_image, transfers_of)

pytestmark = pytest.mark.slow

DATA_PATH = r"^/images/[^/?]+(\?|$)"     # data requests, not /extents or /checksum
SIZE = 16 * MiB
REQUEST = MiB                            # --buffer-size: one request
SKIP = 6                                 # data requests that pass before the fault
# What the resumed run may send beyond the missing ranges: small bodies
# (flush PATCHes) and at most one request that was done but not yet journaled.
SLACK = REQUEST + 64 * 1024

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
PLACEHOLDERS = {"{N}": r"\d+", "{UUID}": UUID}

FAULTS = {
    # name: (action, exit code, what the message says after "PUT"/"GET")
    "cut": (None, 3, None),
    "503": (Respond(503, "busy\n"), 1, "range {N}-{N} failed: 503 Service Unavailable: busy"),
    "403": (Expire403(), 1, "range {N}-{N} failed: 403 Forbidden: You are not allowed to "
            "access this resource: No such ticket <ticket>"),
}
CUT_AFTER = 300_000                      # bytes of a body that get through


@pytest.fixture
def image(tmp_path):
    """16 MiB of random data (no holes: every range must be sent)."""
    return make_random_raw(str(tmp_path / "src.raw"), SIZE, seed=11)


def matches(template: str, line: str) -> bool:
    """Whether ``line`` is ``template`` with {N}/{UUID} standing for any number/id."""
    pattern = re.escape(template)
    for key, rx in PLACEHOLDERS.items():
        pattern = pattern.replace(re.escape(key), rx)
    return re.fullmatch(pattern, line) is not None


def one_line(err: str) -> str:
    """stderr must be exactly one line; return it."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def checksum_of(cli, *argv: str) -> str:
    code, out, err = cli("checksum", "--json", *argv)
    assert code == 0, err
    return json.loads(out)["checksum"]


def upload_journal(fe, name: str) -> dict:
    """The journal an interrupted upload of disk ``name`` left in $IMAGETOOL_HOME."""
    found = []
    for path in glob.glob(os.path.join(fe.env["IMAGETOOL_HOME"], "journals", "*.json")):
        with open(path) as f:
            data = json.load(f)
        if data.get("target") == f"data/{name}":
            found.append(data)
    assert len(found) == 1, found
    return found[0]


def done_bytes(journal: dict) -> int:
    return sum(end - start for start, end in journal["done"])


def listed_transfer(cli, disk_id: str) -> dict:
    """The one transfer of ``disk_id`` in ``transfers list --json``."""
    code, out, err = cli("transfers", "list", "--json")
    assert code == 0, err
    mine = [t for t in json.loads(out) if t["disk_id"] == disk_id]
    assert len(mine) == 1, mine
    return mine[0]


def stored_volume(fe, disk_id: str) -> str:
    """The local engine's file holding ``disk_id``'s data (read by qemu-img,
    not by our code)."""
    paths = glob.glob(os.path.join(fe.engine.data_dir, "*", "images", disk_id, "*"))
    vols = [p for p in paths if not p.endswith((".meta", ".lease", ".json"))]
    assert len(vols) == 1, paths
    return vols[0]


# --- uploads ---------------------------------------------------------------------

def upload_args(image: str, name: str) -> list[str]:
    # --inactivity-timeout 2: the engine applies the pause policy within seconds.
    return ["upload", image, "--sd", "data", "--name", name, "--buffer-size", "1M",
            "--workers", "2", "--inactivity-timeout", "2", "--resume"]


def wait_phase(cli, disk_id: str, prefix: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        t = listed_transfer(cli, disk_id)
        if t["phase"].startswith(prefix):
            return t
        assert time.monotonic() < deadline, f"transfer still {t['phase']}"
        time.sleep(0.2)


def assert_ticket_hidden(fe, method: str, err: str) -> None:
    """The ticket of the first ``method`` request through the proxy is not in ``err``."""
    paths = [t for m, t in fe.proxy.stats.history if m == method]
    ticket = paths[0].split("/images/")[1].split("?")[0]
    assert ticket not in err


def resume_without_fault(fe, cli, args, journal: dict) -> tuple[int, str]:
    """(bytes the journal still lacks, stdout) of the same command run again
    with the fault removed; it must succeed."""
    done = done_bytes(journal)
    assert 0 < done < SIZE
    fe.proxy.clear_rules()
    fe.proxy.reset_stats()
    code, out, err = cli(*args)
    assert code == 0, err
    return SIZE - done, out


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_upload_persistent_fault_then_resume(faulty_engine, cli, image, fault, fast_backoff):
    fe = faulty_engine
    action, exit_code, detail = FAULTS[fault]
    if fault == "cut":
        action = CutRequestBody(after=CUT_AFTER)
        detail = f"127.0.0.1:{fe.proxy.port}: connection closed by server"
    fe.proxy.add_rule(Rule(method="PUT", path_re=DATA_PATH, skip=SKIP, every=True,
                           action=action))
    name = f"resume-up-{fault}"
    args = upload_args(image, name)

    code, out, err = cli(*args)
    assert code == exit_code, err
    assert out == ""
    line = one_line(err)
    [disk] = disks_named(fe, name)
    expected = (f"imagetool: error: {image}: writing destination failed at offset {{N}} "
                f"length {REQUEST}: imageio PUT {detail}; the partial disk {disk.id} is kept: "
                f"run the same command with --resume to continue the upload")
    assert matches(expected, line), line
    assert_ticket_hidden(fe, "PUT", err)
    assert fe.proxy.stats.faults

    # State: the disk is kept for the resume; its transfer is not ended and
    # the engine pauses it (policy pause) once the client is quiet.
    t = listed_transfer(cli, disk.id)
    assert t["timeout_policy"] == "pause"
    assert not t["phase"].startswith("finished"), t
    paused = wait_phase(cli, disk.id, "paused")
    assert paused["id"] == t["id"]
    assert [d.status for d in disks_named(fe, name)] == ["locked"]   # held by the pause
    journal = upload_journal(fe, name)
    assert journal["disk_id"] == disk.id and journal["transfer_id"] == t["id"]
    # The fault is gone: the same command continues the same transfer.
    missing, out = resume_without_fault(fe, cli, args, journal)
    assert out.startswith(f"uploaded {image} -> disk {name} ({disk.id}): ")
    assert "verified: " in out
    sent = fe.proxy.stats.body_bytes_up
    assert missing <= sent <= missing + SLACK, (sent, missing)
    assert listed_transfer(cli, disk.id)["phase"] == "finished_success"
    assert [d.status for d in disks_named(fe, name)] == ["ok"]
    assert upload_journal_gone(fe, name)
    assert same_image(image, stored_volume(fe, disk.id))
    assert checksum_of(cli, "--disk", name) == checksum_of(cli, image)


def upload_journal_gone(fe, name: str) -> bool:
    try:
        upload_journal(fe, name)
    except AssertionError:
        return True
    return False


def test_upload_failure_pauses_transfer_at_once(faulty_engine, cli, image, fast_backoff):
    fe = faulty_engine
    fe.proxy.add_rule(Rule(method="PUT", path_re=DATA_PATH, skip=SKIP, every=True,
                           action=Respond(503, "busy\n")))
    name = "resume-up-paused-at-once"
    args = ["upload", image, "--sd", "data", "--name", name, "--buffer-size", "1M",
            "--workers", "2", "--resume"]
    code, _, err = cli(*args)
    assert code == 1, err
    [disk] = disks_named(fe, name)
    phase = listed_transfer(cli, disk.id)["phase"]
    # Leave the engine clean for the next tests before asserting.
    fe.proxy.clear_rules()
    code2, _, err2 = cli(*args)
    assert code2 == 0, err2
    assert phase.startswith("paused"), phase


# --- downloads -------------------------------------------------------------------

@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_download_persistent_fault_then_resume(faulty_engine, cli, tmp_path, image, fault,
                                               fast_backoff):
    fe = faulty_engine
    name = f"resume-down-src-{fault}"
    code, _, err = cli("upload", image, "--sd", "data", "--name", name, "--buffer-size", "1M")
    assert code == 0, err
    action, exit_code, detail = FAULTS[fault]
    if fault == "cut":
        action = CutResponseBody(after=CUT_AFTER)
        detail = (f"127.0.0.1:{fe.proxy.port}: range {{N}}-{{N}}: short reply "
                  f"({CUT_AFTER} of {REQUEST} bytes)")
    fe.proxy.reset_stats()
    fe.proxy.add_rule(Rule(method="GET", path_re=DATA_PATH, skip=SKIP, every=True,
                           action=action))
    dest = tmp_path / "dl"
    dest.mkdir()
    final = str(dest / "out.raw")
    args = ["download", name, final, "--buffer-size", "1M", "--workers", "2", "--resume"]

    code, out, err = cli(*args)
    assert code == exit_code, err
    assert out == ""
    line = one_line(err)
    expected = (f"imagetool: error: {final}: reading source failed at offset {{N}} "
                f"length {REQUEST}: imageio GET {detail}; the partial download is kept in "
                f"{final}.imagetool-part: run the same command with --resume to continue it")
    assert matches(expected, line), line
    assert_ticket_hidden(fe, "GET", err)

    # State: nothing under the final name, the partial data and journal kept,
    # the download transfer ended and the disk unlocked.
    assert sorted(no_partial_files(str(dest), final)) == [
        "out.raw.imagetool-journal", "out.raw.imagetool-part"]
    assert new_phases(fe) == ["finished_failure", "finished_success"]
    [disk] = disks_named(fe, name)
    assert disk.status == "ok"
    with open(final + ".imagetool-journal") as f:
        journal = json.load(f)
    assert journal["disk_id"] == disk.id
    missing, out = resume_without_fault(fe, cli, args, journal)
    assert out.startswith(f"downloaded {final} <- disk {name} ({disk.id}): ")
    assert "verified: " in out
    received = fe.proxy.stats.body_bytes_down
    assert missing <= received <= missing + SLACK, (received, missing)
    assert os.listdir(dest) == ["out.raw"]
    assert same_image(image, final)
    assert checksum_of(cli, final) == checksum_of(cli, image)
    assert [t.phase for t in transfers_of(fe, disk.id)].count("finished_failure") == 1
    assert [d.status for d in disks_named(fe, name)] == ["ok"]
