"""Which host serves an image transfer.

The engine picks a host when a transfer names none, but it may pick one
far from the client. The oVirt engine SDK's examples (``helpers/
imagetransfer.py``, ``find_host``) choose instead: the host the client
runs on when it is an oVirt host (its vdsm id in ``/etc/vdsm/vdsm.id``
is the host's hardware id), Up and in the storage domain's data center;
else any Up host of that data center. Bulk transfers spread over those
hosts.
"""

from __future__ import annotations

import os
from typing import Any

from imagetool.engine.entities import Host
from imagetool.engine.services import pick
from imagetool.errors import EngineError, NotFound

VDSM_ID_PATH = "/etc/vdsm/vdsm.id"


def local_vdsm_id(path: str | None = None) -> str | None:
    """This machine's vdsm id, or None when it is not an oVirt host.

    ``IMAGETOOL_VDSM_ID_FILE`` overrides the path (tests, containers).
    """
    path = path or os.environ.get("IMAGETOOL_VDSM_ID_FILE") or VDSM_ID_PATH
    try:
        with open(path, encoding="utf-8") as f:
            value = f.readline().strip()
    except OSError:
        return None
    return value or None


def _dc_hosts(conn: Any, sd_id: str | None) -> list[Host]:
    """Hosts in the data center(s) the storage domain belongs to (all hosts
    when the engine does not say)."""
    hosts = conn.hosts.list()
    if not sd_id:
        return hosts
    try:
        sd = conn.storage_domains.get(sd_id)
    except NotFound:
        return hosts
    dcs = set(sd.data_center_ids)
    if not dcs:
        return hosts
    clusters = {c.id for c in conn.clusters.list() if c.data_center_id in dcs}
    return [h for h in hosts if h.cluster_id is None or h.cluster_id in clusters]


def up_hosts(conn: Any, sd_id: str | None) -> list[Host]:
    """The Up hosts of the storage domain's data center, by name."""
    return sorted((h for h in _dc_hosts(conn, sd_id) if (h.status or "").lower() == "up"),
                  key=lambda h: (h.name or "", h.id or ""))


def find_host(conn: Any, name_or_id: str) -> Host:
    """A host by id or exact name (NotFound names it)."""
    return pick(conn.hosts.list(), name_or_id, lambda h: h.name,
                missing=f"no host with id or name {name_or_id!r}",
                several=lambda them: f"{len(them)} hosts are named {name_or_id!r}: use the id")


def choose_host(conn: Any, sd_id: str | None, host: str | None = None, *,
                index: int = 0, vdsm_id_path: str | None = None) -> str | None:
    """The id of the host to name in a transfer, or None to let the engine pick.

    ``host`` (name or id) wins and must be Up. Else this machine when it
    is an Up oVirt host of the domain's data center; else the Up hosts of
    that data center in turn (``index``: the transfer's number in a bulk
    run, so transfers spread over them); None when there is none.
    """
    if host:
        found = find_host(conn, host)
        if (found.status or "").lower() != "up":
            raise EngineError(f"host {found.name or found.id} is {found.status or 'not up'}, "
                              f"not up")
        return found.id
    candidates = up_hosts(conn, sd_id)
    if not candidates:
        return None
    vdsm_id = local_vdsm_id(vdsm_id_path)
    if vdsm_id:
        # The engine searches hosts by hardware id (the SDK examples do so).
        try:
            mine = {h.id for h in conn.hosts.list(search=f"hw_id={vdsm_id}")}
        except EngineError:
            mine = set()
        for h in candidates:
            if h.id in mine:
                return h.id
    return candidates[index % len(candidates)].id


def transfer_host(conn: Any, sd_ids: Any = (), host: str | None = None,
                  index: int = 0, storage_domain: str | None = None) -> str | None:
    """The host id for a transfer of a disk on ``sd_ids`` (its domains) or
    on ``storage_domain`` (a name or id, for a disk still to be made).

    An asked ``host`` that cannot be used raises; the automatic choice
    never fails a transfer: an engine (or a stand-in connection) that does
    not list hosts or clusters, or lists none Up, lets the engine pick (None).
    """
    if not host and not all(hasattr(conn, a) for a in ("hosts", "clusters",
                                                        "storage_domains")):
        return None
    try:
        sd_id = next(iter(sd_ids or ()), None)
        if sd_id is None and storage_domain:
            sd_id = conn.storage_domains.find(storage_domain).id
        return choose_host(conn, sd_id, host, index=index)
    except EngineError:
        if host:
            raise
        return None
