"""A one-node Ceph cluster with its S3 gateway (RGW), for the S3 tests.

One monitor, one OSD on the in-memory object store, authentication off,
pools of size 1, RGW's beast front end on loopback: the layout of Ceph's
own ``vstart.sh`` cut to the minimum (Ceph documentation, "Manual
Deployment"). The monitor speaks only the v1 protocol on a free port (a
v2-only monitor refuses RGW's unauthenticated hello), and the OSD is
registered with its uuid before ``--mkfs``, and does not set its device
class on start (that request failed now and then with "wrong fsid" and
left RGW crashing). Daemons run in the foreground as children and are
stopped by their pids.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field

BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "ceph", "radosgw", "radosgw-admin")
ACCESS_KEY = "imagetool-test"
SECRET_KEY = "imagetool-test-secret"


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Rgw:
    endpoint: str
    workdir: str
    procs: list = field(default_factory=list)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _run(*cmd: str, timeout: float = 60) -> None:
    subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def start(workdir: str, timeout: float = 90.0) -> Rgw:
    """Start the cluster under ``workdir`` (once more in a fresh directory if
    the first try fails: a port picked free may be taken meanwhile)."""
    try:
        return _start(workdir, timeout)
    except (RuntimeError, subprocess.SubprocessError):
        return _start(os.path.join(workdir, "again"), timeout)


def _start(workdir: str, timeout: float) -> Rgw:
    """Start the cluster under ``workdir``; return its endpoint once RGW answers."""
    d = workdir
    for sub in ("mon", "osd0", "run", "rgw"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    fsid, osd_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    mon_port, rgw_port = free_port(), free_port()
    conf = os.path.join(d, "ceph.conf")
    with open(conf, "w") as f:
        f.write(f"""[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{mon_port}
auth cluster required = none
auth service required = none
auth client required = none
run dir = {d}/run
log file = {d}/$name.log
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd objectstore = memstore
osd class update on start = false
osd crush update on start = false
memstore device bytes = 1073741824
osd data = {d}/osd0
mon data = {d}/mon
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {d}/rgw
""")
    c = ("--conf", conf)
    rgw = Rgw(f"http://127.0.0.1:{rgw_port}", d)
    logs = open(os.path.join(d, "daemons.out"), "ab")

    def daemon(*cmd: str) -> None:
        rgw.procs.append(subprocess.Popen(cmd, stdout=logs, stderr=logs,
                                          stdin=subprocess.DEVNULL))

    try:
        _run("monmaptool", "--create", "--addv", "a", f"[v1:127.0.0.1:{mon_port}]",
             "--fsid", fsid, f"{d}/monmap")
        _run("ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", f"{d}/monmap")
        daemon("ceph-mon", *c, "-i", "a", "-f")
        _run("ceph", *c, "--connect-timeout", "30", "osd", "create", osd_uuid)
        _run("ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        # Placed in the CRUSH map here, not by the OSD as it starts: that
        # request of the OSD's can leave before its monitor client has the
        # cluster's fsid, and the monitor then refuses it ("wrong fsid") and
        # the OSD exits, now and then.
        _run("ceph", *c, "osd", "crush", "add", "osd.0", "1.0", "host=localhost",
             "root=default")
        daemon("ceph-osd", *c, "-i", "0", "-f")
        daemon("radosgw", *c, "-n", "client.rgw", "-f")
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(rgw.endpoint, timeout=2).read()
                break
            except OSError:
                dead = [f"{p.args[0]} exited {p.returncode}" for p in rgw.procs
                        if p.poll() is not None]
                if time.monotonic() > deadline or dead:
                    raise RuntimeError(f"RGW did not start ({', '.join(dead) or 'timeout'}); "
                                       f"see the logs in {d}")
                time.sleep(0.3)
        _run("radosgw-admin", *c, "user", "create", "--uid=test", "--display-name=test",
             f"--access-key={ACCESS_KEY}", f"--secret={SECRET_KEY}")
    except BaseException:
        rgw.stop()
        raise
    return rgw


if __name__ == "__main__":      # python tests/support/rgw.py DIR: try it by hand
    import sys
    t = time.monotonic()
    r = start(sys.argv[1])
    print(r.endpoint, f"{time.monotonic() - t:.1f} s")
    r.stop()
