"""Image transfers (oVirt REST API guide: ImageTransfers, ImageTransfer): add,
list, get and the actions extend, pause, resume, finalize, cancel. The state machine lives in
``server/domain/transfers.py``; this module validates input and renders."""

from __future__ import annotations

from imagetool.phases import SERVING
from imagetool.server.domain import inventory, transfers
from imagetool.server.domain.transfers import POLICIES
from imagetool.server.rest.codec import get_bool, get_id, get_int, get_obj, get_str
from imagetool.server.rest.common import action_links, done, ref, stored
from imagetool.server.rest.hosts import find_host
from imagetool.server.rest.router import Reply, Request, bad_request, conflict

ACTIONS = ("cancel", "extend", "finalize", "pause", "resume")
DEFAULT_INACTIVITY = 60


def transfer_repr(req: Request, t: dict) -> dict:
    """An ImageTransfer in the API model's shape (URLs only while usable)."""
    base = req.href("imagetransfers", t["id"])
    urls = t["phase"] in SERVING
    url = f"{req.engine.dataplane_url()}/images/{t['ticket_id']}" if urls else None
    return {
        "href": base, "id": t["id"],
        "actions": action_links(base, ACTIONS),
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


def add_transfer(req: Request) -> Reply:
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
    disk_id = get_id(data, "disk", "id", what="disk")
    snap_id = image_id = None
    if backup_id:
        _check_backup_transfer(direction, fmt, disk_id)
    else:
        snap_id = get_id(data, "snapshot", "id", what="disk snapshot")
        image_id = get_id(data, "image", "id", what="image")
    t = transfers.start(req.engine, (disk_id, snap_id, image_id, backup_id),
                        direction=direction, host=host, fmt=fmt, inactivity_timeout=inactivity,
                        timeout_policy=policy, shallow=shallow)
    return Reply(status=201, tag="image_transfer", body=transfer_repr(req, t))


def _check_backup_transfer(direction: str, fmt: str, disk_id: str | None) -> None:
    """400 or 409 unless a VM backup's transfer is a raw download of a disk."""
    if direction != "download":
        raise bad_request("A backup transfer must be a download")
    if fmt != "raw":
        raise conflict("transfer image", "The format must be raw for a backup transfer.")
    if disk_id is None:
        raise bad_request("A backup transfer needs disk.id")


# transfer_repr looked up at each call, as the actions do (a test wraps it).
list_transfers, get_transfer = stored("transfer", "image transfer", "image_transfer",
                                      lambda req, t: transfer_repr(req, t))


def _action(name: str):
    def handler(req: Request, tid: str) -> Reply:
        inventory.get(req.engine, "transfer", tid, "image transfer")
        req.data()  # a malformed body is a 400 even when nothing in it is used
        t = getattr(req.engine.transfers, name)(tid)
        return done(image_transfer=transfer_repr(req, t))
    handler.__name__ = f"{name}_transfer"
    return handler


# One handler per action in ACTIONS, named for the routes table (routes.py).
cancel_transfer = _action("cancel")
extend_transfer = _action("extend")
finalize_transfer = _action("finalize")
pause_transfer = _action("pause")
resume_transfer = _action("resume")
