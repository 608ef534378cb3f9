"""Check a qcow2 backing chain before its guest data leaves the machine.

An image names its backing file by a string anyone could have written:
uploading its guest view reads every file the chain names. So a chain is
followed only through local regular files, and (unless allowed) only
inside the top image's directory: a name that is absolute, or climbs out
with ``..``, could make an upload read (and send) any file the user can
read, which is why qemu-img's own docs warn about untrusted images'
backing files. Errors name the file whose header holds the bad name.
"""

from __future__ import annotations

import os
import re

from imagetool.errors import FormatError, UnsupportedFeature
from imagetool.formats import inspect, open_image

_PROTOCOL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
MAX_DEPTH = 64


def _inside(path: str, directory: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), directory]) == directory
    except ValueError:
        return False


def backing_chain(path: str | os.PathLike, *, allow_outside: bool = False) -> list[str]:
    """The files of ``path``'s chain, top first; raise when one cannot be used.

    Refused, with the file named: a backing name that is not a local path
    (``nbd:...``, ``http://...``), a missing backing file, a loop, and,
    unless ``allow_outside``, a backing file outside the top image's
    directory (absolute or ``..``). Finally the whole chain is opened, so
    unsupported formats inside it fail here too.
    """
    top = os.fspath(path)
    top_dir = os.path.dirname(os.path.realpath(top))
    files = [top]
    seen = {os.path.realpath(top)}
    cur = top
    while True:
        info = inspect(cur)
        name = info.backing_file
        if not name:
            break
        if _PROTOCOL_RE.match(name) and not os.path.exists(
                os.path.join(os.path.dirname(cur), name)):
            raise UnsupportedFeature(f"backing file {name!r} is not a local file", cur)
        bpath = name if os.path.isabs(name) else os.path.join(
            os.path.dirname(os.path.abspath(cur)), name)
        if not allow_outside and not _inside(bpath, top_dir):
            raise UnsupportedFeature(
                f"backing file {name!r} is outside {top_dir} (an absolute or '..' "
                f"path); allow it explicitly if it is trusted", cur)
        if not os.path.exists(bpath):
            raise FormatError(f"backing file {name!r} not found", cur)
        real = os.path.realpath(bpath)
        if real in seen:
            raise FormatError(f"backing chain loop at {name!r}", cur)
        if len(files) >= MAX_DEPTH:
            raise FormatError(f"backing chain deeper than {MAX_DEPTH}", top)
        seen.add(real)
        files.append(bpath)
        cur = bpath
    open_image(top, "r").close()      # every layer parses, in a format we read
    return files
