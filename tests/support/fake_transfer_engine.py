"""A minimal in-process engine whose data plane is the REAL imageio daemon.

It implements the few engine calls the transfer workflows make
(``conn.disks`` / ``conn.transfers``), keeps disks as files in a directory,
and serves transfers by adding tickets to the reference ``ovirt-imageio``
daemon: ``format=raw`` through qemu-nbd (guest data), ``format=cow`` as a
file ticket (the volume's bytes). It records every call so tests can assert
what the workflow did (cancel on failure, finalize on success).
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid

from imagetool.engine.entities import Disk, ImageTransfer
from imagetool.errors import NotFound
from imageio_daemon import QemuNbd


class _Disks:
    def __init__(self, eng: "FakeEngine"):
        self.eng = eng

    def add(self, *, name, provisioned_size, storage_domain, format="raw",
            sparse=True, initial_size=None, content_type=None, disk_id=None,
            description=None, **_):
        eng = self.eng
        disk_id = disk_id or str(uuid.uuid4())
        fmt = {"qcow2": "cow"}.get(format, format)
        path = os.path.join(eng.dir, disk_id)
        if fmt == "cow":
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path,
                            str(provisioned_size)], check=True)
        else:
            with open(path, "wb") as f:
                f.truncate(provisioned_size)
        d = Disk(id=disk_id, name=name, status="ok", format=fmt,
                 provisioned_size=provisioned_size, initial_size=initial_size,
                 sparse=sparse, content_type=content_type or "data")
        with eng.lock:
            eng.disks[disk_id] = d
            eng.calls.append(("disk_add", disk_id))
        return d

    def get(self, disk_id):
        with self.eng.lock:
            d = self.eng.disks.get(disk_id)
        if d is None:
            raise NotFound(f"disk {disk_id} not found", status=404)
        return d

    def find(self, name_or_id):
        with self.eng.lock:
            for d in self.eng.disks.values():
                if d.id == name_or_id or d.name == name_or_id:
                    return d
        raise NotFound(f"disk {name_or_id} not found", status=404)

    def remove(self, disk_id):
        with self.eng.lock:
            self.eng.calls.append(("disk_remove", disk_id))
            self.eng.disks.pop(disk_id, None)
        try:
            os.unlink(os.path.join(self.eng.dir, disk_id))
        except FileNotFoundError:
            pass


class _Transfers:
    def __init__(self, eng: "FakeEngine"):
        self.eng = eng

    def add(self, *, disk_id=None, snapshot_id=None, direction="upload",
            format=None, inactivity_timeout=None, timeout_policy=None,
            shallow=None, **_):
        eng = self.eng
        disk = eng.conn.disks.get(disk_id)
        tid = str(uuid.uuid4())
        t = ImageTransfer(id=tid, phase="initializing", direction=direction,
                          format=format or "cow", disk_id=disk_id,
                          inactivity_timeout=inactivity_timeout)
        with eng.lock:
            eng.transfers[tid] = t
            eng.calls.append(("transfer_add", format, direction))
            disk.status = "locked"
        return t

    def _start(self, t: ImageTransfer) -> None:
        eng = self.eng
        disk = eng.disks[t.disk_id]
        path = os.path.join(eng.dir, disk.id)
        ops = ["read", "write"] if t.direction == "upload" else ["read"]
        if t.format == "raw":
            nbd = QemuNbd(path, "qcow2" if disk.format == "cow" else "raw",
                          socket_path=os.path.join(eng.dir, f"{t.id}.sock")).start()
            eng.nbd[t.id] = nbd
            url = eng.daemon.add_ticket(nbd_socket=nbd.socket_path,
                                        size=disk.provisioned_size, ops=ops,
                                        ticket_id=t.id)
        else:
            size = (max(disk.initial_size or 0, os.path.getsize(path))
                    if t.direction == "upload" else os.path.getsize(path))
            url = eng.daemon.add_ticket(path=path, size=size, ops=ops, ticket_id=t.id)
        t.transfer_url = url
        t.phase = "transferring"

    def get(self, tid):
        eng = self.eng
        with eng.lock:
            t = eng.transfers.get(tid)
            if t is None:
                raise NotFound("transfer not found", status=404)
            if t.phase == "initializing":
                self._start(t)
            return ImageTransfer(**{k: getattr(t, k) for k in t.__dataclass_fields__})

    def extend(self, tid):
        self.eng.calls.append(("extend", tid))

    def _stop_data_plane(self, tid):
        eng = self.eng
        eng.daemon.remove_ticket(tid)
        nbd = eng.nbd.pop(tid, None)
        if nbd is not None:
            nbd.stop()

    def finalize(self, tid):
        eng = self.eng
        with eng.lock:
            eng.calls.append(("finalize", tid))
            t = eng.transfers[tid]
            self._stop_data_plane(tid)
            disk = eng.disks[t.disk_id]
            ok = True
            if t.direction == "upload" and disk.format == "cow":
                # Like the engine: the uploaded volume must be a valid qcow2.
                p = subprocess.run(["qemu-img", "check", "-q",
                                    os.path.join(eng.dir, disk.id)])
                ok = p.returncode == 0
            if eng.fail_finalize:
                ok = False
            if ok:
                t.phase = "finished_success"
                disk.status = "ok"
                if eng.drop_finished:
                    # Engines before 4.4.7 forget finished transfers.
                    eng.transfers.pop(tid)
            else:
                t.phase = "finished_failure"
                if t.direction == "upload":
                    eng.disks.pop(disk.id, None)
                else:
                    disk.status = "ok"

    def cancel(self, tid):
        eng = self.eng
        with eng.lock:
            eng.calls.append(("cancel", tid))
            t = eng.transfers[tid]
            self._stop_data_plane(tid)
            t.phase = "finished_failure"
            if t.direction == "upload":
                eng.disks.pop(t.disk_id, None)     # an uploaded disk is removed
            elif t.disk_id in eng.disks:
                eng.disks[t.disk_id].status = "ok"

    def list(self):
        return list(self.eng.transfers.values())


class FakeConnection:
    """What the workflows see as ``conn``."""

    legacy = False
    cafile = None
    insecure = False

    def __init__(self, eng: "FakeEngine"):
        self.disks = _Disks(eng)
        self.transfers = _Transfers(eng)


class FakeEngine:
    """Disks in ``directory``, data plane on ``daemon`` (an ImageioDaemon)."""

    def __init__(self, directory: str, daemon):
        self.dir = directory
        self.daemon = daemon
        self.lock = threading.RLock()
        self.disks: dict[str, Disk] = {}
        self.transfers: dict[str, ImageTransfer] = {}
        self.nbd: dict[str, QemuNbd] = {}
        self.calls: list[tuple] = []
        self.fail_finalize = False
        self.drop_finished = False
        self.conn = FakeConnection(self)

    def disk_path(self, disk_id: str) -> str:
        return os.path.join(self.dir, disk_id)

    def close(self) -> None:
        for tid in list(self.nbd):
            self.nbd.pop(tid).stop()
