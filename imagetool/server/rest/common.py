"""Helpers shared by the service modules: dates, search, lookups, jobs."""

from __future__ import annotations

import fnmatch
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from imagetool.server.domain import inventory
from imagetool.server.rest.codec import get_id, get_list, get_str
from imagetool.server.rest.router import ApiError, Handler, Reply, Request, bad_request


def iso_date(ts: float | None) -> str | None:
    """Engine-style date: ``2026-11-27T01:02:03.000+00:00``."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+00:00"


def search_filter(req: Request, docs: list[dict], fields: dict[str, str] | None = None) -> list[dict]:
    """Apply ``search`` (``name=foo* and status=ok``) and ``max``.

    ``fields`` maps search keys to document keys (default: same name).
    Values may use ``*`` wildcards; matching is case-insensitive unless
    ``case_sensitive=true``.
    """
    search = req.query.get("search")
    if search:
        case = req.query.get("case_sensitive", "").lower() == "true"
        terms = []
        for term in search.replace(" AND ", " and ").split(" and "):
            term = term.strip()
            if not term:
                continue
            if "=" not in term:
                if any(c in term for c in "<>!()"):
                    raise ApiError(400, "Operation Failed",
                                   f"Cannot parse search term '{term}': expected name=value")
                # A bare word matches the name, as the engine's search does
                # (``clusters_service.list(search='mycluster')``).
                terms.append(((fields or {}).get("name", "name"), term.strip('"')))
                continue
            key, value = (p.strip() for p in term.split("=", 1))
            terms.append(((fields or {}).get(key.lower(), key.lower()), value.strip('"')))

        def match(doc: dict) -> bool:
            for key, pattern in terms:
                value = str(doc.get(key, ""))
                if not case:
                    value, pattern = value.lower(), pattern.lower()
                if not fnmatch.fnmatchcase(value, pattern):
                    return False
            return True
        docs = [d for d in docs if match(d)]
    max_text = req.query.get("max")
    if max_text not in (None, "", "-1"):
        try:
            docs = docs[:max(0, int(max_text))]
        except ValueError:
            raise ApiError(400, "Operation Failed", f"Invalid value for 'max': {max_text}") from None
    return docs


def find_storage_domain(req: Request, ref: dict | None, action: str) -> dict:
    """The storage domain named by ``<storage_domain id|name>``; 404 when unknown."""
    sd_id, name = get_id(ref or {}, "id", what="storage domain"), get_str(ref or {}, "name")
    if sd_id is None and name is None:
        raise ApiError(400, "Incomplete parameters",
                       f"storage domain id or name required for {action}")
    return inventory.named(inventory.entities(req.engine, "storage_domain"), sd_id, name,
                           "storage domain")


def configuration(data: dict) -> tuple[str | None, str]:
    """The OVF of ``initialization.configuration`` and its type: ``ovf``, or
    ``ova`` (an OVA's, whose disks are named by ``Disk/@ovf:diskId``)."""
    ovf = get_str(data, "initialization", "configuration", "data")
    kind = (get_str(data, "initialization", "configuration", "type") or "ovf").lower()
    if ovf and kind not in ("ovf", "ova"):
        raise bad_request(f"Unknown configuration type {kind!r} (ovf or ova)")
    return ovf, kind


def first_sd_ref(data: dict) -> dict | None:
    """The first ``storage_domains/storage_domain`` (or ``storage_domain``) of a body."""
    refs = get_list(data, "storage_domains")
    if refs:
        return refs[0]
    sd = data.get("storage_domain")
    return sd if isinstance(sd, dict) else None


def stored(kind: str, label: str, tag: str, to_repr: Callable[[Request, dict], dict],
           fields: dict[str, str] | None = None,
           prepare: Callable[[Any], None] | None = None) -> tuple[Handler, Handler]:
    """The GET handlers of a stored collection (``search`` and ``max``
    applied, tag ``<tag>s``) and of one of its entities (a 404 fault naming
    an unknown id), each entity as ``to_repr`` gives it; ``prepare(engine)``
    runs first (entities made at the first need)."""
    def list_all(req: Request) -> Reply:
        if prepare is not None:
            prepare(req.engine)
        docs = search_filter(req, inventory.entities(req.engine, kind), fields)
        return Reply(tag=tag + "s", body=[to_repr(req, d) for d in docs])

    def get_one(req: Request, **ids: str) -> Reply:
        if prepare is not None:
            prepare(req.engine)
        (id,) = ids.values()
        return Reply(tag=tag, body=to_repr(req, inventory.get(req.engine, kind, id, label)))
    return list_all, get_one


def members(owner: Callable[[Request, str], dict], field: str, key: str, label: str, tag: str,
            to_repr: Callable[[Request, dict, dict], dict]) -> tuple[Handler, Handler]:
    """The GET handlers of a collection stored inside its owner entity (a
    VM's or a template's disk attachments, a job's steps), in stored order,
    and of one member: the one whose ``key`` is the id, or a 404 fault
    naming it."""
    def list_all(req: Request, **ids: str) -> Reply:
        (owner_id,) = ids.values()
        doc = owner(req, owner_id)
        return Reply(tag=tag + "s", body=[to_repr(req, doc, m) for m in doc.get(field, [])])

    def get_one(req: Request, **ids: str) -> Reply:
        owner_id, id = ids.values()
        doc = owner(req, owner_id)
        return Reply(tag=tag, body=to_repr(req, doc, inventory.member(doc, field, key, id, label)))
    return list_all, get_one


def showing(tag: str, fetch: Callable[..., Any],
            to_repr: Callable[[Request, Any], Any]) -> Handler:
    """A GET handler: what ``fetch(engine, *the path's ids)`` gives, as
    ``to_repr`` shows it (each member when it gives a list)."""
    def handler(req: Request, **ids: str) -> Reply:
        got = fetch(req.engine, *ids.values())
        if isinstance(got, list):
            return Reply(tag=tag, body=[to_repr(req, x) for x in got])
        return Reply(tag=tag, body=to_repr(req, got))
    return handler


def deleting(remove: Callable[..., None]) -> Handler:
    """A DELETE handler: ``remove(engine, *the path's ids)``, answered 200."""
    def handler(req: Request, **ids: str) -> Reply:
        remove(req.engine, *ids.values())
        return Reply(status=200)
    return handler


def done(**fields: Any) -> Reply:
    """An action's answer: ``<action><status>complete</status>`` and ``fields``."""
    return Reply(tag="action", body={"status": "complete", **fields})


def acting(act: Callable[..., None], *args: Any, **kwargs: Any) -> Handler:
    """An action handler: ``act(engine, *the path's ids, *args, **kwargs)``,
    answered ``done``; a malformed body is a 400 even when nothing in it is
    used."""
    def handler(req: Request, **ids: str) -> Reply:
        req.data()
        act(req.engine, *ids.values(), *args, **kwargs)
        return done()
    return handler


def ref(req: Request, collection: str, id: str | None) -> dict | None:
    """``<x href id/>`` reference to another entity."""
    if id is None:
        return None
    return {"href": req.href(collection, id), "id": id}


def action_links(base: str, names: Iterable[str]) -> dict:
    """The ``<actions>`` element of an entity."""
    return {"link": sub_links(base, names)}


def sub_links(base: str, names: Iterable[str]) -> list[dict]:
    """``<link rel=...>`` elements to sub-collections."""
    return [{"href": f"{base}/{n}", "rel": n} for n in names]
