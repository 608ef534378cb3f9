"""kill -9 of the client, engine restart, changed source: then --resume.

A real ``imagetool serve`` process (fixed ports so it can be restarted) and
the CLI run as subprocesses through tests/support/resume_harness.py, which slows
each data-plane request a little and counts the bytes sent, so a kill lands
mid-way and the bytes re-sent by the resume can be measured.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import HARNESS, ROOT, MiB

pytestmark = pytest.mark.slow

SIZE = 48 * MiB
PASSWORD = "resume-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``imagetool serve`` on fixed ports over one data dir; restartable."""

    def __init__(self, root: str):
        self.data = os.path.join(root, "engine")
        os.makedirs(self.data, exist_ok=True)
        self.pw = os.path.join(root, "pw")
        with open(self.pw, "w") as f:
            f.write(PASSWORD + "\n")
        self.ports = (_free_port(), _free_port())
        self.log = open(os.path.join(root, "serve.log"), "ab")
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> None:
        lock = os.path.join(self.data, "serve.json")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imagetool", "serve", "--data-dir", self.data,
             "--password-file", self.pw, "--port", str(self.ports[0]),
             "--imageio-port", str(self.ports[1])],
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        while not os.path.exists(lock):
            assert self.proc.poll() is None, "serve exited"
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        time.sleep(0.2)
        with open(lock) as f:
            self.info = json.load(f)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        try:
            os.unlink(os.path.join(self.data, "serve.json"))
        except FileNotFoundError:
            pass

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def opts(self) -> list[str]:
        return ["--engine-url", self.info["url"], "--username", "admin@internal",
                "--password-file", self.pw, "--cafile", self.info["cafile"]]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(str(tmp_path_factory.mktemp("resume")))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def client_home(tmp_path):
    return str(tmp_path)


def _env(home: str, stats: str, delay: float) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IMAGETOOL_")}
    env.update(IMAGETOOL_HOME=os.path.join(home, "client-home"),
               XDG_CONFIG_HOME=os.path.join(home, "config"),
               RESUME_TEST_STATS=stats, RESUME_TEST_DELAY=str(delay),
               PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    return env


def _start(served, home, args, delay=0.0, tag="run"):
    stats = os.path.join(home, f"{tag}.stats")
    out = open(os.path.join(home, f"{tag}.out"), "w+")
    err = open(os.path.join(home, f"{tag}.err"), "w+")
    proc = subprocess.Popen([sys.executable, HARNESS, *args, *served.opts()],
                            env=_env(home, stats, delay), stdout=out, stderr=err)
    return proc, stats, out, err


def _count(stats: str, key: str) -> int:
    try:
        with open(stats) as f:
            return json.load(f)[key]
    except (FileNotFoundError, ValueError):
        return 0


def _run(served, home, args, delay=0.0, tag="run", timeout=120):
    proc, stats, out, err = _start(served, home, args, delay, tag)
    code = proc.wait(timeout)
    out.seek(0)
    err.seek(0)
    return code, out.read(), err.read(), stats


def _kill_at(proc, stats, key, nbytes, timeout=60):
    deadline = time.monotonic() + timeout
    while _count(stats, key) < nbytes:
        assert proc.poll() is None, "the transfer ended before the kill"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return _count(stats, key)


def _image(path: str, size: int = SIZE) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))


def _same(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                return False
            if not x:
                return True


UPLOAD = ["upload", "--sd", "data", "--workers", "2", "--buffer-size", "1M", "--json"]


def _check_disk(served, home, disk_name, src):
    back = os.path.join(home, disk_name + ".back")
    code, out, err, _ = _run(served, home, ["download", disk_name, back], tag="check")
    assert code == 0, err
    assert _same(src, back)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_upload_kill9_then_resume(served, client_home, fraction):
    src = os.path.join(client_home, f"k{int(fraction * 100)}.raw")
    _image(src)
    args = [*UPLOAD, src, "--name", os.path.basename(src), "--resume"]
    proc, stats, _, _ = _start(served, client_home, args, delay=0.01, tag="first")
    sent1 = _kill_at(proc, stats, "put", int(SIZE * fraction))

    if fraction == 0.5:
        # Without --resume the journal is reported, not reused nor deleted.
        code, out, err, _ = _run(served, client_home, args[:-1], tag="plain")
        assert code == 1
        assert "interrupted upload" in err and "--resume" in err
        assert os.listdir(os.path.join(client_home, "client-home", "journals"))

    code, out, err, stats2 = _run(served, client_home, args, tag="second")
    assert code == 0, err
    sent2 = _count(stats2, "put")
    # Only what was not flushed before the kill is sent again: at most the
    # unflushed window (2 workers x 1.5 MiB flush interval + in flight).
    assert sent2 <= SIZE - sent1 + 8 * MiB, (sent1, sent2)
    assert sent2 < SIZE
    result = json.loads(out)
    assert (result[0] if isinstance(result, list) else result)["bytes"] == SIZE
    assert not os.listdir(os.path.join(client_home, "client-home", "journals"))
    _check_disk(served, client_home, os.path.basename(src), src)


def test_changed_source_is_refused(served, client_home):
    src = os.path.join(client_home, "changed.raw")
    _image(src, 16 * MiB)
    args = [*UPLOAD, src, "--resume"]
    proc, stats, _, _ = _start(served, client_home, args, delay=0.02, tag="first")
    _kill_at(proc, stats, "put", 4 * MiB)
    with open(src, "r+b") as f:
        f.write(b"changed!")
    code, out, err, _ = _run(served, client_home, args, tag="second")
    assert code == 1
    assert "changed since the interrupted upload" in err
    assert "content of its first/last blocks" in err

    # Follow the message's steps in order; they must leave nothing locked.
    cancel = re.search(r"imagetool transfers cancel (\S+?)\)", err)
    assert cancel, err                     # the paused transfer holds the disk
    disk_id = re.search(r"imagetool disks remove --yes (\S+?)\)", err).group(1)
    journal = re.search(r"rm (\S+?)\)", err).group(1)
    assert err.index("transfers cancel") < err.index("disks remove") < err.index("rm ")
    code, out, err2, _ = _run(served, client_home, ["transfers", "cancel", cancel.group(1)],
                              tag="cancel")
    assert code == 0, err2
    deadline = time.monotonic() + 30
    while True:                            # the engine removes the cancelled upload's disk
        code, out, err2, _ = _run(served, client_home, ["disks", "list", "--json"],
                                  tag="list")
        assert code == 0, err2
        disk = [d for d in json.loads(out) if d["id"] == disk_id]
        if not disk or disk[0]["status"] != "locked" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if disk:                               # "if the disk is still listed"
        code, out, err2, _ = _run(served, client_home,
                                  ["disks", "remove", "--yes", disk_id], tag="remove")
        assert code == 0, err2
    code, out, err2, _ = _run(served, client_home, ["disks", "list", "--json"], tag="list")
    assert disk_id not in [d["id"] for d in json.loads(out)]
    os.unlink(journal)

    code, out, err, _ = _run(served, client_home, args[:-1], tag="fresh")
    assert code == 0, err
    assert not os.listdir(os.path.join(client_home, "client-home", "journals"))
    _check_disk(served, client_home, "changed.raw", src)


def test_download_kill9_then_resume(served, client_home):
    src = os.path.join(client_home, "dl.raw")
    _image(src, 32 * MiB)
    code, out, err, _ = _run(served, client_home, [*UPLOAD, src], tag="up")
    assert code == 0, err
    dest = os.path.join(client_home, "dl-back.raw")
    args = ["download", "dl.raw", dest, "--workers", "2", "--buffer-size", "1M", "--resume"]
    proc, stats, _, _ = _start(served, client_home, args, delay=0.02, tag="first")
    got1 = _kill_at(proc, stats, "get", 16 * MiB)
    assert not os.path.exists(dest)                       # no half file there
    assert os.path.exists(dest + ".imagetool-part")

    code, out, err, _ = _run(served, client_home, args[:-1], tag="plain")
    assert code == 1 and "--resume" in err and "interrupted download" in err

    code, out, err, stats2 = _run(served, client_home, [*args, "--json"], tag="second")
    assert code == 0, err
    assert json.loads(out)[0]["verified"] is True        # checksum vs the server's
    got2 = _count(stats2, "get")
    assert got2 <= 32 * MiB - got1 + 6 * MiB, (got1, got2)
    assert _same(src, dest)
    assert not os.path.exists(dest + ".imagetool-part")
    assert not os.path.exists(dest + ".imagetool-journal")


def test_engine_killed_mid_upload_then_resume(served, client_home):
    src = os.path.join(client_home, "restart.raw")
    _image(src, 32 * MiB)
    args = [*UPLOAD, src, "--resume"]
    proc, stats, _, err = _start(served, client_home, args, delay=0.01, tag="first")
    deadline = time.monotonic() + 60
    while _count(stats, "put") < 12 * MiB:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    # Counted before the kill: what the client retries against the dead
    # engine afterwards never reaches it and must not shrink the bound.
    sent1 = _count(stats, "put")
    served.kill()
    # The client retries, then gives up or is killed; either way it stops.
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    served.start()
    code, out, err2, stats2 = _run(served, client_home, args, tag="second")
    assert code == 0, err2
    assert _count(stats2, "put") <= 32 * MiB - sent1 + 8 * MiB
    _check_disk(served, client_home, "restart.raw", src)


def test_client_asleep_past_inactivity_timeout_then_resume(served, client_home):
    """SIGSTOP (a laptop asleep) past the inactivity timeout: the pause policy
    keeps the transfer and disk; the woken client stops, --resume finishes."""
    src = os.path.join(client_home, "sleep.raw")
    _image(src, 24 * MiB)
    args = [*UPLOAD, src, "--resume", "--inactivity-timeout", "2"]
    proc, stats, out, err = _start(served, client_home, args, delay=0.02, tag="first")
    deadline = time.monotonic() + 60
    while _count(stats, "put") < 8 * MiB:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(5)
    proc.send_signal(signal.SIGCONT)
    code = proc.wait(60)
    err.seek(0)
    first_err = err.read()
    if code != 0:
        # The engine paused the transfer and refused the woken client;
        # the message says how to continue.
        assert "run the same command with --resume" in first_err, first_err
        code, out2, err2, _ = _run(served, client_home, args, tag="second")
        assert code == 0, err2
    _check_disk(served, client_home, "sleep.raw", src)


def test_plain_download_kill9_then_resume(served, client_home):
    """A plain download (no --resume) keeps a journal: after kill -9 a plain
    run reports it, then --resume fetches only what was missing."""
    src = os.path.join(client_home, "pdl.raw")
    _image(src, 24 * MiB)
    code, out, err, _ = _run(served, client_home, [*UPLOAD, src], tag="up")
    assert code == 0, err
    dest = os.path.join(client_home, "pdl-back.raw")
    args = ["download", "pdl.raw", dest, "--workers", "2", "--buffer-size", "1M"]
    proc, stats, _, _ = _start(served, client_home, args, delay=0.02, tag="first")
    got1 = _kill_at(proc, stats, "get", 12 * MiB)
    journal, part = dest + ".imagetool-journal", dest + ".imagetool-part"
    assert not os.path.exists(dest)
    with open(journal) as f:
        saved = f.read()
    assert json.loads(saved)["done"]

    code, out, err, _ = _run(served, client_home, args, tag="plain")
    assert code == 1
    assert "interrupted download" in err and "--resume" in err and f"rm {journal} {part}" in err
    with open(journal) as f:
        assert f.read() == saved                      # not reused, not deleted
    assert os.path.exists(part) and not os.path.exists(dest)

    code, out, err, stats2 = _run(served, client_home, [*args, "--resume", "--json"],
                                  tag="second")
    assert code == 0, err
    assert json.loads(out)[0]["verified"] is True
    assert _count(stats2, "get") <= 24 * MiB - got1 + 6 * MiB, (got1, _count(stats2, "get"))
    assert _same(src, dest)
    assert not os.path.exists(part) and not os.path.exists(journal)


def test_upload_killed_under_cancel_policy_then_follow_the_messages(served, client_home):
    """kill -9 under --timeout-policy cancel: the engine cancels the transfer and
    removes the new disk. The plain run says what works; following it (--resume)
    starts over with a new disk, says so, and ends with a verified disk."""
    src = os.path.join(client_home, "cancelled.raw")
    _image(src, 16 * MiB)
    args = [*UPLOAD, src, "--timeout-policy", "cancel", "--inactivity-timeout", "1"]
    proc, stats, _, _ = _start(served, client_home, args, delay=0.02, tag="first")
    _kill_at(proc, stats, "put", 4 * MiB)
    jdir = os.path.join(client_home, "client-home", "journals")
    # A kill during a save may leave a temporary copy beside the journal.
    [jname] = [n for n in os.listdir(jdir) if n.endswith(".json")]
    with open(os.path.join(jdir, jname)) as f:
        old_disk = json.load(f)["disk_id"]
    assert old_disk

    deadline = time.monotonic() + 30
    while True:                      # the engine's inactivity timeout cancels it
        code, out, err, _ = _run(served, client_home, ["disks", "list", "--json"],
                                 tag="list")
        assert code == 0, err
        if old_disk not in [d["id"] for d in json.loads(out)]:
            break
        assert time.monotonic() < deadline, "the engine did not remove the disk"
        time.sleep(0.3)

    code, out, err, _ = _run(served, client_home, args, tag="plain")
    assert code == 1
    assert f"removed its disk {old_disk}" in err, err
    assert "run the same command with --resume to upload the file again" in err
    assert jname in os.listdir(jdir)                  # reported, not deleted

    code, out, err, _ = _run(served, client_home, [*args, "--resume"], tag="second")
    assert code == 0, err
    assert "starting over with a new disk" in err and old_disk in err
    result = json.loads(out)
    result = result[0] if isinstance(result, list) else result
    assert result["bytes"] == 16 * MiB and result["verified"] is True
    assert result["disk_id"] != old_disk
    assert not os.listdir(jdir)
    _check_disk(served, client_home, "cancelled.raw", src)


def test_upload_kill9_then_resume_on_embedded_engine(client_home, monkeypatch):
    """No engine configured: each run starts the embedded engine on new
    ports, so journals keyed by the engine URL were never found again
    (issue: "upload --resume after a kill fails on the embedded engine")."""
    src = os.path.join(client_home, "embedded.raw")
    _image(src, 16 * MiB)
    args = [*UPLOAD, src, "--resume"]

    def start(tag, delay):
        stats = os.path.join(client_home, f"{tag}.stats")
        err = open(os.path.join(client_home, f"{tag}.err"), "w+")
        proc = subprocess.Popen([sys.executable, HARNESS, *args],
                                env=_env(client_home, stats, delay),
                                stdout=subprocess.PIPE, stderr=err, text=True)
        return proc, stats, err

    proc, stats, _ = start("first", 0.02)
    sent1 = _kill_at(proc, stats, "put", 8 * MiB)
    proc, stats2, err = start("second", 0.0)
    out, _ = proc.communicate(timeout=120)
    err.seek(0)
    assert proc.returncode == 0, err.read()
    assert _count(stats2, "put") <= 16 * MiB - sent1 + 8 * MiB
    assert _count(stats2, "put") < 16 * MiB
    home = os.path.join(client_home, "client-home")
    assert not os.listdir(os.path.join(home, "journals"))
    from imagetool.cli.config import EngineOptions, open_connection
    monkeypatch.setenv("IMAGETOOL_HOME", home)
    with open_connection(EngineOptions()) as conn:
        names = [d.name for d in conn.disks.list()]
    assert names == ["embedded.raw"]      # one disk: the resumed one, not a second
