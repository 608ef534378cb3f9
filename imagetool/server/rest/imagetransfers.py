"""Image transfers (oVirt REST API guide: ImageTransfers, ImageTransfer): add,
list, get and the actions extend, pause, resume, finalize, cancel. The state machine lives in
``server/domain/transfers.py``; this module validates input and renders."""

from __future__ import annotations

from imagetool.phases import ENDED, SERVING
from imagetool.server.rest.codec import get_bool, get_id, get_int, get_obj, get_str
from imagetool.server.rest.common import (action_links, get_or_404, get_stored, list_stored,
                                          ref)
from imagetool.server.domain.disks import check_usable
from imagetool.server.rest.hosts import find_host
from imagetool.server.rest.router import (ApiError, Reply, Request, bad_request, conflict,
                                          missing)
from imagetool.server.domain.transfers import POLICIES, TransferConflict

ACTIONS = ("cancel", "extend", "finalize", "pause", "resume")
DEFAULT_INACTIVITY = 60


def transfer_repr(req: Request, t: dict) -> dict:
    """An ImageTransfer in the API model's shape (URLs only while usable)."""
    base = req.href("imagetransfers", t["id"])
    urls = t["phase"] in SERVING
    url = f"{req.engine.dataplane_url()}/images/{t['ticket_id']}" if urls else None
    return {
        "href": base, "id": t["id"],
        "actions": action_links(req, base, ACTIONS),
        "active": t.get("active", False), "direction": t["direction"], "format": t["format"],
        "inactivity_timeout": t["inactivity_timeout"], "phase": t["phase"],
        "proxy_url": url, "transfer_url": url, "shallow": t.get("shallow", False),
        "timeout_policy": t["timeout_policy"], "transferred": t.get("transferred", 0),
        "host": _host_ref(req, t["host_id"]),
        "image": {"id": t["volume_id"]},
        "disk": ref(req, "disks", t["disk_id"]),
        "snapshot": (ref(req, f"disks/{t['disk_id']}/disksnapshots", t["volume_id"])
                     if t.get("snapshot") else None),
        "backup": {"id": t["backup_id"]} if t.get("backup_id") else None,
    }


def _host_ref(req: Request, host_id: str) -> dict:
    """``<host href id><name/></host>``: clients print the transfer's host name."""
    body = ref(req, "hosts", host_id)
    for h in req.engine.hosts:
        if h["id"] == host_id:
            body["name"] = h["name"]
    return body


def _target(req: Request, data: dict) -> tuple[dict, dict, bool]:
    """(disk, volume, is_snapshot) named by <disk>, <snapshot> or <image>."""
    store = req.engine.store
    disk_id = get_id(data, "disk", "id", what="disk")
    snap_id = get_id(data, "snapshot", "id", what="disk snapshot")
    image_id = get_id(data, "image", "id", what="image")
    if disk_id:
        disk = get_or_404(req, "disk", disk_id, "disk")
        return disk, store.get("volume", disk["image_id"]), False
    for vol_id, is_snap in ((snap_id, True), (image_id, False)):
        if vol_id:
            vol = get_or_404(req, "volume", vol_id, "disk snapshot" if is_snap else "image")
            disk = store.get("disk", vol["disk_id"])
            return disk, vol, is_snap or vol["id"] != disk["image_id"]
    raise missing("ImageTransfer", "add", "disk.id|snapshot.id|image.id")


def add_transfer(req: Request) -> Reply:
    """POST /imagetransfers: lock the disk and start the transfer."""
    engine = req.engine
    data = req.data()
    direction = get_str(data, "direction") or "upload"
    if direction not in ("upload", "download"):
        raise bad_request(f"Invalid value '{direction}' for direction: expected upload or download")
    fmt = get_str(data, "format") or "cow"
    if fmt not in ("raw", "cow"):
        raise bad_request(f"Invalid value '{fmt}' for format: expected raw or cow")
    policy = get_str(data, "timeout_policy") or "legacy"
    if policy not in POLICIES:
        raise bad_request(f"Invalid value '{policy}' for timeout_policy: expected "
                          "legacy, pause or cancel")
    inactivity = get_int(data, "inactivity_timeout")
    inactivity = DEFAULT_INACTIVITY if inactivity is None else inactivity
    if inactivity <= 0:
        raise bad_request("inactivity_timeout must be positive")
    shallow = bool(get_bool(data, "shallow"))
    host_id = get_id(data, "host", "id", what="host")
    host_name = get_str(data, "host", "name")
    host = find_host(req, host_id, host_name) if (host_id or host_name) else None
    backup_id = get_id(data, "backup", "id", what="backup")
    if get_obj(data, "backup") and backup_id is None:
        raise bad_request("A backup needs its id")
    backup = None
    with engine.store.transaction():
        if backup_id:
            backup, disk, vol = _backup_target(req, data, backup_id, direction, fmt)
            is_snap = False
        else:
            disk, vol, is_snap = _target(req, data)
        check_usable(disk, "transfer image")
        if direction == "upload" and vol["id"] != disk["image_id"]:
            raise conflict("transfer image", "Only the active layer of a disk can be uploaded.")
        if host is None:
            host = _least_busy_host(engine)
        t = engine.transfers.create(disk, vol, direction=direction, fmt=fmt,
                                    inactivity_timeout=inactivity, timeout_policy=policy,
                                    shallow=shallow,
                                    host_id=host["id"], snapshot=is_snap,
                                    backup=backup)
    return Reply(status=201, tag="image_transfer", body=transfer_repr(req, t))


def _least_busy_host(engine) -> dict:
    """The host with the fewest unfinished transfers (the first on a tie).

    A real engine picks any host that is up in the disk's data center; the
    least busy one spreads transfers over hosts when the client names none.
    """
    busy = {h["id"]: 0 for h in engine.hosts}
    for t in engine.store.list("transfer", lambda t: t["phase"] not in ENDED):
        if t.get("host_id") in busy:
            busy[t["host_id"]] += 1
    return min(engine.hosts, key=lambda h: busy[h["id"]])


def _backup_target(req: Request, data: dict, backup_id: str, direction: str,
                   fmt: str) -> tuple[dict, dict, dict]:
    """(backup, disk, frozen volume) of a VM backup's download transfer."""
    from imagetool.server.domain import backups as bk
    if direction != "download":
        raise bad_request("A backup transfer must be a download")
    if fmt != "raw":
        raise conflict("transfer image", "The format must be raw for a backup transfer.")
    disk_id = get_id(data, "disk", "id", what="disk")
    if disk_id is None:
        raise bad_request("A backup transfer needs disk.id")
    disk = get_or_404(req, "disk", disk_id, "disk")
    try:
        backup, vol = bk.backup_volume(req.engine, backup_id, disk_id)
    except bk.BackupError as e:
        raise ApiError(e.status, "Operation Failed" if e.status == 409 else "Bad Request",
                       f"[{e}]") from None
    return backup, disk, vol


def list_transfers(req: Request) -> Reply:
    return list_stored(req, "transfer", "image_transfers", transfer_repr)


def get_transfer(req: Request, tid: str) -> Reply:
    return get_stored(req, "transfer", tid, "image transfer", "image_transfer", transfer_repr)


def _action(name: str):
    def handler(req: Request, tid: str) -> Reply:
        get_or_404(req, "transfer", tid, "image transfer")
        req.data()  # a malformed body is a 400 even when nothing in it is used
        try:
            t = getattr(req.engine.transfers, name)(tid)
        except TransferConflict as e:
            raise ApiError(409, "Operation Failed", str(e)) from None
        return Reply(tag="action", body={"status": "complete",
                                         "image_transfer": transfer_repr(req, t)})
    handler.__name__ = f"{name}_transfer"
    return handler


# One handler per action in ACTIONS, named for the routes table (routes.py).
cancel_transfer = _action("cancel")
extend_transfer = _action("extend")
finalize_transfer = _action("finalize")
pause_transfer = _action("pause")
resume_transfer = _action("resume")
