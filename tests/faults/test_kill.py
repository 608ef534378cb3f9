"""kill -9 of the client (``python -m imagetool``) at 10/50/90% of a transfer.

The state left behind is the engine's to settle: an upload with
``--timeout-policy cancel`` is cancelled after its inactivity timeout and
its new disk removed; with ``pause`` it waits, paused, for a resume (the
disk stays locked by design: that is what lets --resume continue it). A
killed download leaves no file under the final name. Resuming after the
kill is tested in tests/faults/test_resume_kill.py.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from fault_proxy import Delay, Rule
from helpers import (MiB, cli_process, disks_named, make_random_raw, same_image,
                     transfers_of, wait_settled)

pytestmark = pytest.mark.slow

SIZE = 32 * MiB


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    return make_random_raw(str(tmp_path_factory.mktemp("kill") / "src.raw"), SIZE, seed=5)


def kill_at(proc, fe, fraction: float, direction: str, total: int) -> int:
    """SIGKILL ``proc`` once the proxy relayed ``fraction`` of ``total`` body
    bytes; return the count seen at the kill."""
    deadline = time.monotonic() + 60
    while True:
        stats = fe.proxy.stats
        moved = stats.body_bytes_up if direction == "upload" else stats.body_bytes_down
        if moved >= fraction * total:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return moved
        if proc.poll() is not None:
            raise AssertionError(f"client ended before the kill: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "transfer made no progress"
        time.sleep(0.002)


def slow_down(fe, method: str) -> None:
    # ~35 ms per 1 MiB request: a 32 MiB transfer lasts > 1 s, time to aim.
    fe.proxy.add_rule(Rule(method=method, path_re=r"^/images/[^/?]+(\?|$)", every=True,
                           action=Delay(0.035)))


@pytest.mark.parametrize("fraction,policy", [(0.1, "cancel"), (0.5, "cancel"),
                                             (0.9, "cancel"), (0.5, None)])
def test_kill_upload_cancel_policy(faulty_engine, big_image, fraction, policy):
    """With 'cancel', and for a plain upload (no journal: nothing could
    resume it), a killed client's disk is removed, never left locked."""
    fe = faulty_engine
    slow_down(fe, "PUT")
    name = f"killed-{int(fraction * 100)}-{policy}"
    before = {t.id for t in transfers_of(fe)}
    proc = cli_process(fe.env, "upload", big_image, "--sd", "data", "--name", name,
                       "--buffer-size", "1M", "--workers", "1",
                       *(["--timeout-policy", policy] if policy else []),
                       "--inactivity-timeout", "1")
    moved = kill_at(proc, fe, fraction, "upload", SIZE)
    assert moved < SIZE
    # After the inactivity timeout the engine cancels and removes the new disk.
    ts = wait_settled(fe, timeout=20)
    assert [t.phase for t in ts if t.id not in before] == ["finished_failure"]
    assert disks_named(fe, name) == []


@pytest.mark.parametrize("policy", ["pause", "legacy"])
def test_kill_upload_pause_policy_keeps_disk_for_resume(faulty_engine, cli, big_image,
                                                        policy):
    """With 'pause' (and the engine's legacy policy, which pauses uploads)
    the killed upload waits paused; ``imagetool transfers cancel`` is the
    way out."""
    fe = faulty_engine
    slow_down(fe, "PUT")
    name = f"killed-paused-{policy}"
    proc = cli_process(fe.env, "upload", big_image, "--sd", "data", "--name", name,
                       "--buffer-size", "1M", "--workers", "1",
                       "--timeout-policy", policy, "--inactivity-timeout", "1")
    kill_at(proc, fe, 0.5, "upload", SIZE)
    disk = disks_named(fe, name)[0]
    deadline = time.monotonic() + 20
    while True:
        phases = [t.phase for t in transfers_of(fe, disk.id)]
        if phases == ["paused_system"]:
            break
        assert time.monotonic() < deadline, phases
        time.sleep(0.1)
    # Paused, not failed: the disk is kept (locked) until a resume or a cancel.
    assert [d.status for d in disks_named(fe, name)] == ["locked"]
    code, out, err = cli("transfers", "cancel", transfers_of(fe, disk.id)[0].id)
    assert code == 0, err
    wait_settled(fe)
    assert disks_named(fe, name) == []


@pytest.fixture(scope="module")
def download_source(faulty_engine_module, big_image):
    """The name of a disk holding ``big_image``."""
    fe = faulty_engine_module
    proc = cli_process(fe.env, "upload", big_image, "--sd", "data", "--name", "dl-src")
    assert proc.wait(60) == 0, proc.stderr.read()
    return "dl-src"


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_kill_download_leaves_no_final_file(download_source, faulty_engine, tmp_path,
                                            fraction):
    fe = faulty_engine
    name = download_source
    slow_down(fe, "GET")
    final = str(tmp_path / "out.raw")
    disk = disks_named(fe, name)[0]
    before = {t.id for t in transfers_of(fe, disk.id)}
    proc = cli_process(fe.env, "download", name, final, "--buffer-size", "1M",
                       "--workers", "1", "--inactivity-timeout", "1")
    kill_at(proc, fe, fraction, "download", SIZE)
    assert not os.path.exists(final)
    leftovers = [n for n in os.listdir(tmp_path) if n != "out.raw"]
    # What a kill -9 can leave is a temporary beside it, never the final name.
    assert all(n.startswith(".out.raw") or n.startswith("out.raw.") for n in leftovers), \
        leftovers
    # The engine settles it alone once --inactivity-timeout passes: downloads
    # are cancelled, the disk unlocked and untouched.
    wait_settled(fe, timeout=20)
    assert [t.phase for t in transfers_of(fe, disk.id) if t.id not in before] \
        == ["finished_failure"]
    assert [d.status for d in disks_named(fe, name)] == ["ok"]


@pytest.mark.parametrize("fraction", [0.1, 0.9])
def test_kill_upload_then_resume_is_identical(faulty_engine, cli, big_image, tmp_path,
                                              fraction):
    """A plain upload killed at ``fraction``, then the same command with
    --resume: the disk ends up checksum-identical, nothing locked."""
    fe = faulty_engine
    slow_down(fe, "PUT")
    name = f"resumed-{int(fraction * 100)}"
    args = ["upload", big_image, "--sd", "data", "--name", name, "--buffer-size", "1M",
            "--workers", "1"]
    proc = cli_process(fe.env, *args)
    moved = kill_at(proc, fe, fraction, "upload", SIZE)
    fe.proxy.clear_rules()
    fe.proxy.reset_stats()
    code, out, err = cli(*args, "--resume")
    assert code == 0, err
    # Only what was not flushed before the kill is sent again (flushes come
    # at least every 8 MiB of a 32 MiB image).
    assert fe.proxy.stats.body_bytes_up <= SIZE - moved + 8 * MiB
    wait_settled(fe)
    assert [d.status for d in disks_named(fe, name)] == ["ok"]
    back = str(tmp_path / "back.raw")
    code, out, err = cli("download", name, back)
    assert code == 0, err
    assert same_image(big_image, back)
