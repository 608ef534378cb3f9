"""Ctrl-C (SIGINT) at random moments of upload, download, backup create,
backup restore, OVA export and OVA import against a running ``imagetool
serve`` (issue 20, item 3). After each command exits:

- exit 0 or 130 (or death by SIGINT while Python starts, which a shell
  also reports as 130, or the interpreter's own fatal error when the
  signal lands in its site import), and no traceback but the site
  module's report of an editable install's ``.pth`` line it interrupted;
- no transfer left open, no disk locked;
- none of the files the help says Ctrl-C removes (``.imagetool-part``,
  ``.imagetool-journal``), no half ``.ova`` under its final name, no
  ``.partial-`` point directory (``backup create --help`` promises none);
- an interrupted restore or import leaves no VM, template or disk, an
  interrupted upload no disk, and backup create and OVA export no
  snapshot and no unfinished backup on the engine.

Each moment is drawn over the whole length of the command, measured by
one full run of each kind first (which also makes the point, the OVA and
the disk the later runs read).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import HARNESS, cli_env, run_cli, serve_process
from imagetool.phases import BACKUP_ENDED, ENDED

RUNS = 50

pytestmark = pytest.mark.slow


def _state(conn, vm_id):
    """What an interrupted command may leave on the engine."""
    return {
        "open": [(t.id, t.phase) for t in conn.transfers.list() if t.phase not in ENDED],
        "locked": [d.name for d in conn.disks.list() if d.status == "locked"],
        "disks": {d.id: d.name for d in conn.disks.list()},
        "vms": {v.id: v.name for v in conn.vms.list()},
        "templates": {t.id for t in conn.templates.list()},
        "snapshots": {s.id for s in conn.snapshots.list(vm_id)
                      if s.snapshot_type != "active"},
        "backups": [b.id for b in conn.backups.list(vm_id) if b.phase not in BACKUP_ENDED],
    }


def _drop_new(conn, before, after):
    """Remove what a finished command made, so later runs start alike (an
    OVA import keeps the OVA's disk ids: a second copy would be refused)."""
    for vm_id in set(after["vms"]) - set(before["vms"]):
        conn.vms.remove(vm_id)
    for disk_id in set(after["disks"]) - set(before["disks"]):
        if disk_id in {d.id for d in conn.disks.list()}:
            conn.disks.remove(disk_id)


_IGNORED_IN_IMPORT = re.compile(
    r"Exception ignored in: <function _get_module_lock\.<locals>\.cb at 0x[0-9a-f]+>\n"
    r"Traceback \(most recent call last\):\n"
    r"  File \"<frozen importlib\._bootstrap>\", line \d+, in cb\n"
    r"KeyboardInterrupt: ?\n")
# The site module's report of a ``.pth`` line it could not finish (an
# editable install's import hook, interrupted while Python starts): site
# prints it, skips the file and starts the program anyway.
_IGNORED_IN_SITE = re.compile(
    r"Error processing line \d+ of [^\n]+\.pth:\n\n.*?KeyboardInterrupt.*?"
    r"\nRemainder of file ignored\n", re.S)


def _problems(kind, code, err, before, after, cwd, i, repo, vm_id):
    """What run ``i`` of ``kind`` did wrong, as the module docstring says."""
    out = []
    # The interpreter itself, not imagetool, while it imports the site
    # module (before any of our code runs): it reports a fatal error and
    # exits 1, as any Python program would. Everything else still holds.
    in_python_startup = code == 1 and err.startswith(
        "Fatal Python error: init_import_site") and err.rstrip().endswith("KeyboardInterrupt")
    if code not in (0, 130, -signal.SIGINT) and not in_python_startup:
        out.append(f"exit {code}")
    # Likewise Python's own report of a KeyboardInterrupt it swallowed in an
    # import lock's callback ("Exception ignored in ... importlib._bootstrap").
    if "Traceback" in _IGNORED_IN_IMPORT.sub("", _IGNORED_IN_SITE.sub("", err)) \
            and not in_python_startup:
        out.append("a traceback")
    if after["open"]:
        out.append(f"transfers left open: {after['open']}")
    if after["locked"]:
        out.append(f"disks locked: {after['locked']}")
    left = [n for n in os.listdir(cwd) if ".imagetool-" in n]
    if left:
        out.append(f"files left: {left}")
    if code != 0 and os.path.exists(os.path.join(cwd, f"e{i}.ova")):
        out.append("the .ova under its final name")
    if code != 0 and kind in ("upload", "backup restore", "ova import"):
        for key in ("disks", "vms", "templates"):
            if after[key] != before[key]:
                out.append(f"{key} before {before[key]}, after {after[key]}")
    if after["snapshots"] != before["snapshots"]:
        out.append(f"snapshots before {before['snapshots']}, after {after['snapshots']}")
    if after["backups"]:
        out.append(f"backups not ended: {after['backups']}")
    partial = [n for n in os.listdir(os.path.join(repo, vm_id)) if n.startswith(".partial-")]
    if partial:
        out.append(f"point directories left: {partial}")
    return out


def _argv(kind, i, repo):
    return {
        "upload": ["upload", "src.raw", "--sd", "data", "--name", f"u{i}",
                   "--buffer-size", "1M"],
        "download": ["download", "vm-disk1", f"d{i}.raw", "--buffer-size", "1M"],
        "backup create": ["backup", "create", repo, "vm"],
        "backup restore": ["backup", "restore", repo, "vm", "--sd", "data",
                           "--name", f"r{i}"],
        "ova export": ["ova", "export", "vm", f"e{i}.ova"],
        "ova import": ["ova", "import", "base.ova", "--sd", "data", "--name", f"i{i}"],
    }[kind]


def _run(env, cwd, argv, after=None):
    """The harness running ``argv``; SIGINT ``after`` seconds (None: none)."""
    proc = subprocess.Popen([sys.executable, HARNESS, *argv], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if after is not None:
        try:
            proc.wait(after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)       # faulthandler prints every thread's stack
        _, err = proc.communicate(timeout=30)
        err = "hung after the SIGINT:\n" + err
    return proc.returncode, err


def test_random_ctrl_c_of_transfers_backups_and_ovas(tmp_path, monkeypatch):
    from imagetool.cli.config import EngineOptions, open_connection
    env = cli_env(tmp_path, RESUME_TEST_DELAY="0.01", PYTHONFAULTHANDLER="1")
    for k in ("IMAGETOOL_HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(k, env[k])
    repo = str(tmp_path / "backups")
    with serve_process(env), open_connection(EngineOptions()) as conn:
        (tmp_path / "src.raw").write_bytes(random.Random(0).randbytes(8 << 20))
        for argv in (["vms", "create", "vm", "--disk", "src.raw", "--sd", "data"],
                     ["vms", "create", "ovavm", "--disk", "src.raw", "--sd", "data"],
                     ["ova", "export", "ovavm", "base.ova"],
                     ["vms", "remove", "ovavm"]):
            r = run_cli(env, *argv, cwd=tmp_path)
            assert r.returncode == 0, (argv, r.stderr)
        vm_id = conn.vms.find("vm").id
        length = {}
        kinds = ["backup create", "upload", "download", "backup restore", "ova export",
                 "ova import"]
        for kind in kinds:          # one full run each: how long a run takes
            before = _state(conn, vm_id)
            t0 = time.monotonic()
            code, err = _run(env, tmp_path, _argv(kind, "full", repo))
            length[kind] = time.monotonic() - t0
            assert code == 0, (kind, err)
            after = _state(conn, vm_id)
            if kind != "backup create":
                _drop_new(conn, before, after)
        rng = random.Random(int(os.environ.get("CTRL_C_SEED", "20")))
        problems: list[str] = []
        seen: dict[str, list[int]] = {}
        for i in range(RUNS):
            kind = rng.choice(kinds)
            moment = rng.uniform(0.3, length[kind])
            before = _state(conn, vm_id)
            code, err = _run(env, tmp_path, _argv(kind, i, repo), after=moment)
            after = _state(conn, vm_id)
            seen.setdefault(kind, []).append(code)
            what = f"run {i}: {kind} SIGINT at {moment:.2f}s -> {code} {err!r}"
            problems += [f"{what}: {p}" for p in _problems(kind, code, err, before, after,
                                                           tmp_path, i, repo, vm_id)]
            if kind != "backup create" and not problems:
                _drop_new(conn, before, after)
            if problems:
                break           # what follows would only see this run's leftovers
            for name in (f"d{i}.raw", f"e{i}.ova"):
                if os.path.exists(tmp_path / name):
                    os.unlink(tmp_path / name)
    print("exit codes:", seen)          # shown with -s: how many runs were cut short
    assert not problems, "\n".join(problems)
