"""Entity ids: every oVirt id is a UUID (the oVirt REST API guide gives each
``id`` as one). One pattern for the engine client, the CLI and the local
engine, which builds storage paths out of ids and so must refuse anything
else."""

from __future__ import annotations

import re

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}", re.ASCII)


def is_uuid(text: object) -> bool:
    """True when ``text`` is a string holding exactly one UUID."""
    return isinstance(text, str) and UUID_RE.fullmatch(text) is not None


def ref(name_or_id: str) -> dict[str, str]:
    """An entity reference for a request body: ``{"id": ...}`` for a UUID,
    else ``{"name": ...}`` (the engine resolves names in action bodies)."""
    return {"id": name_or_id} if is_uuid(name_or_id) else {"name": name_or_id}
