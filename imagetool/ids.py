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
