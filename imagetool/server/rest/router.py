"""Request routing for the REST API: patterns -> handlers, faults.

A handler takes ``(req, **path_params)`` and returns a ``Reply``, or raises
``ApiError`` (``errors.py``) which becomes a ``<fault>`` with the status code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from imagetool.server.rest.codec import parse
from imagetool.server.faults import ApiError, bad_request, conflict, missing, not_found
from imagetool.server.validate import check_id

# The errors are raised by handlers that import them from here too.
__all__ = ["API_PREFIX_RE", "ApiError", "Handler", "Reply", "Request", "Router",
           "bad_request", "conflict", "missing", "not_found"]

API_PREFIX_RE = re.compile(r"^/ovirt-engine/api(?:/v4)?(?=/|$)")


@dataclass
class Request:
    """One API request as the handlers see it."""

    method: str
    path: str                       # without the /ovirt-engine/api prefix
    prefix: str                     # /ovirt-engine/api or /ovirt-engine/api/v4
    query: dict[str, str]
    headers: dict[str, str]         # lower-case names
    body: bytes
    fmt: str                        # reply format: xml or json
    engine: Any = None
    user: str | None = None
    _parsed: tuple[str | None, dict] | None = field(default=None, repr=False)

    def href(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    def data(self) -> dict:
        """The parsed body (XML or JSON per Content-Type)."""
        if self._parsed is None:
            self._parsed = parse(self.body, self.headers.get("content-type", ""))
        return self._parsed[1]

    def flag(self, name: str) -> bool:
        """A boolean query parameter (or header, for all_content/async)."""
        value = self.query.get(name, self.headers.get(name.replace("_", "-")))
        return str(value).lower() == "true"


@dataclass
class Reply:
    """What a handler answers: an entity/collection or raw bytes."""

    status: int = 200
    tag: str | None = None
    body: Any = None
    raw: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[..., Reply]


# Every path parameter is an entity id (a UUID); these name them in faults.
_PARAM_LABELS = {"disk_id": "disk", "vm_id": "VM", "snap_id": "snapshot",
                 "vol_id": "disk snapshot", "sd_id": "storage domain",
                 "tid": "image transfer", "host_id": "host", "dc_id": "data center",
                 "cluster_id": "cluster", "job_id": "job", "step_id": "step",
                 "nic_id": "NIC", "network_id": "network", "profile_id": "vNIC profile"}


class Router:
    """Maps (method, path pattern) to handlers; ``{name}`` matches one segment."""

    def __init__(self, rows: Iterable[tuple[str, str, Handler]] = ()) -> None:
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        for method, pattern, handler in rows:
            self.add(method, pattern, handler)

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Register a handler; the pattern is relative to the API root."""
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern.rstrip("/")) + "/?$"
        self._routes.append((method, re.compile(regex), handler))

    def route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path params; ApiError 404/405 when none, 400 for a non-UUID id."""
        allowed = False
        for m, regex, handler in self._routes:
            match = regex.match(path)
            if match:
                if m == method:
                    return handler, {k: check_id(v, _PARAM_LABELS.get(k, k))
                                     for k, v in match.groupdict().items()}
                allowed = True
        if allowed:
            raise ApiError(405, "Method Not Allowed",
                           f"Method {method} is not allowed on {path or '/'}")
        raise _unknown(path)


# Services of the oVirt REST API the local engine does not implement (501 names them).
_UNIMPLEMENTED = {
    "affinitylabels", "bookmarks", "clusterlevels", "cpuprofiles", "diskprofiles", "domains", "events", "externalhostproviders",
    "groups", "icons", "instancetypes", "katelloerrata", "macpools",
    "networkfilters", "openstackimageproviders",
    "openstacknetworkproviders", "openstackvolumeproviders", "operatingsystems",
    "permissions", "roles", "schedulingpolicies", "schedulingpolicyunits",
    "storageconnections", "tags", "templates", "users", "vmpools",
    "images",
}
_PARENTS = {"vms", "hosts", "storagedomains", "disks", "datacenters", "clusters",
            "imagetransfers"}
_SUBS = {"cdroms", "files", "templates", "storageconnections", "networks", "hooks",
         "fenceagents", "nics", "graphicsconsoles", "hostdevices", "numanodes",
         "permissions", "reporteddevices", "sessions", "statistics", "tags",
         "watchdogs", "applications", "affinitylabels", "katelloerrata"}


# Actions of the oVirt REST API on implemented entities that the local engine does not do.
_ACTIONS = {"export", "reduce", "refreshlun", "sparsify", "activate", "deactivate",
            "refresh", "refreshluns", "updateovfstore", "reduceluns", "start", "stop",
            "shutdown", "commit", "preview", "undo", "import", "clone", "migrate"}


def _unknown(path: str) -> ApiError:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] in _PARENTS and parts[-1] in _ACTIONS:
        return ApiError(501, "Not Implemented",
                        f"The local engine does not implement the '{parts[-1]}' action "
                        f"of {parts[0]}")
    if parts and parts[0] in _UNIMPLEMENTED:
        return ApiError(501, "Not Implemented",
                        f"The local engine does not implement the '{parts[0]}' service")
    if len(parts) >= 3 and parts[0] in _PARENTS and parts[2] in _SUBS:
        return ApiError(501, "Not Implemented",
                        f"The local engine does not implement the '{parts[0]}/{{id}}/{parts[2]}' service")
    return ApiError(404, "Not Found", f"No service at '{path or '/'}'")
