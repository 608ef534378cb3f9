"""The inventory's limits on ids, text and sizes, checked at the door for
what clients send the REST API and by the domain for what files bring
(an OVF's names).

Every entity id is a UUID in oVirt (the oVirt REST API guide gives every
``id`` as one; the engine generates them with ``uuid4``), and the local
engine builds storage paths out of disk, volume and domain ids, so an id
that is not a UUID is refused with a 400 before anything looks it up: a
client-chosen ``../x``, ``/tmp/x`` or ``.`` would otherwise become a path.

Names and descriptions end up in XML listings and in OVFs; a control
character (XML 1.0 cannot carry most of them) would make every later
listing unparsable, so text is printable and bounded in length.
"""

from __future__ import annotations

import os

from imagetool.ids import is_uuid
from imagetool.server.faults import ApiError, bad_request, conflict


# Lengths in characters. oVirt limits disk aliases and VM names to 255;
# descriptions get more room.
MAX_NAME = 255
MAX_DESCRIPTION = 4000
# A host path (a directory of an export to path): Linux's PATH_MAX.
MAX_PATH = 4096

# The largest provisioned size of a disk: 8 TiB. Both kinds of volume can
# serve it: a raw volume is a sparse file (ext4 with 4 KiB blocks caps a
# file at 16 TiB), and a qcow2 volume of 8 TiB with 64 KiB clusters needs a
# 128 KiB L1 table, well inside what the image reader accepts (32 MiB of
# L1, see imagetool.formats.qcow2) and cheap for the writer to hold.
MAX_PROVISIONED_SIZE = 8 << 40


def shown(value: str, limit: int = 64) -> str:
    """``value`` quoted for a fault detail: ASCII only, control characters escaped."""
    text = ascii(value[:limit])
    return text + ("..." if len(value) > limit else "")


def check_id(value: str, what: str) -> str:
    """``value`` lower-cased if it is a UUID, else ApiError 400 naming ``what``."""
    if not is_uuid(value):
        raise ApiError(400, "Invalid id",
                       f"Invalid {what} id {shown(str(value))}: ids are UUIDs")
    return value.lower()


def check_text(value: str | None, field: str, limit: int = MAX_NAME) -> str | None:
    """``value`` if printable text of at most ``limit`` characters (None passes)."""
    if value is None:
        return None
    if len(value) > limit:
        raise ApiError(400, "Invalid value",
                       f"Value of '{field}' is {len(value)} characters long: "
                       f"at most {limit} are allowed")
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise ApiError(400, "Invalid value",
                       f"Value of '{field}' contains the character {ascii(bad)}: "
                       "only printable text is allowed")
    return value


def check_size(size: int, field: str = "provisioned_size") -> int:
    """A positive disk size up to MAX_PROVISIONED_SIZE, else ApiError 400."""
    if size <= 0:
        raise ApiError(400, "Operation Failed", f"Disk {field} must be positive")
    if size > MAX_PROVISIONED_SIZE:
        raise ApiError(400, "Operation Failed",
                       f"Disk {field} {size} is larger than the maximum "
                       f"{MAX_PROVISIONED_SIZE} (8 TiB) of the local engine")
    return size


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def allowed_directory(roots: list[str], directory: str, *, action: str, option: str,
                      without: str) -> str:
    """The real path of ``directory``, a path on the engine's host a client
    named, when it is one of the operator's ``roots`` or below one (symlinks
    resolved); else ApiError (400 for a path that is not absolute, 409 for
    one outside them or missing).

    The one check for every host directory the engine writes into because a
    client asked: the OVA export's (``serve --export-dir``) and new storage
    domains' (``serve --storage-dir``). ``option`` names the serve option,
    ``without`` what the engine refuses when the operator gave none.
    """
    if not roots:
        raise conflict(action, f"{without}: it was started without {option}.")
    if "\0" in directory or not os.path.isabs(directory):
        raise bad_request(f"Directory '{directory}' is not an absolute path.")
    real = os.path.realpath(directory)
    if not any(_inside(real, os.path.realpath(r)) for r in roots):
        raise conflict(action, f"Directory {directory} is not one this engine may write to "
                               f"(allowed: the {option} directories and their "
                               "subdirectories).")
    if not os.path.isdir(real):
        raise conflict(action, f"{directory} is not an existing directory on the host.")
    return real
