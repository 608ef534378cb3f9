"""Entities by id."""

from __future__ import annotations

from typing import Any, Callable

from imagetool.server.faults import bad_request, not_found


def get(engine: Any, kind: str, id: str, label: str) -> dict:
    """A stored entity, or a 404 fault naming it."""
    doc = engine.store.get(kind, id)
    if doc is None:
        raise not_found(f"{label} '{id}'")
    return doc


def get_owned(engine: Any, kind: str, id: str, label: str, key: str, owner: str) -> dict:
    """``get`` for an entity under another in the path: a 404 as well when
    its ``key`` names a different owner."""
    doc = get(engine, kind, id, label)
    if doc[key] != owner:
        raise not_found(f"{label} '{id}'")
    return doc


def member(owner: dict, field: str, key: str, id: str, label: str) -> dict:
    """The member of a collection stored inside its owner (a VM's NICs)
    whose ``key`` is ``id``, or a 404 fault naming it."""
    for m in owner.get(field, []):
        if m[key] == id:
            return m
    raise not_found(f"{label} '{id}'")


def find(engine: Any, kind: str, id: str) -> dict | None:
    """A stored entity, or None (a reference whose entity is gone)."""
    return engine.store.get(kind, id)


def entities(engine: Any, kind: str, where: Callable[[dict], bool] | None = None) -> list[dict]:
    """Every stored entity of ``kind`` (that ``where`` accepts)."""
    return engine.store.list(kind, where)


def check_disks_exist(engine: Any, disk_ids: list[str], what: str) -> None:
    """400 naming the disks an OVF names that the engine does not have."""
    missing_ids = [d for d in disk_ids if engine.store.get("disk", d) is None]
    if missing_ids:
        raise bad_request(f"Cannot add {what} from OVF: disks {', '.join(missing_ids)} do "
                          "not exist; upload them first with the ids the OVF names")


def named(docs: list[dict], id: str | None, name: str | None, label: str) -> dict:
    """The one of ``docs`` with that id (or, without one, that name); a 404
    fault naming it when none has."""
    for doc in docs:
        if doc["id"] == id or (id is None and doc["name"] == name):
            return doc
    raise not_found(f"{label} '{id or name}'")


def remove_member(engine: Any, kind: str, owner_id: str, owner_label: str, field: str,
                  id: str, label: str) -> None:
    """Drop one member of a collection stored inside its owner (a VM's NICs):
    404 naming it when the owner has none with that id."""
    with engine.store.transaction():
        owner = get(engine, kind, owner_id, owner_label)
        left = [m for m in owner.get(field, []) if m["id"] != id]
        if len(left) == len(owner.get(field, [])):
            raise not_found(f"{label} '{id}'")
        owner[field] = left
        engine.store.put(kind, owner)
