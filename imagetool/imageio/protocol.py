"""Numbers on the imageio wire, parsed the same way by the data plane and its client.

HTTP numbers (Content-Length, the positions in Range and Content-Range,
query parameters such as ``block_size``) are ASCII digits only (RFC 9110
section 8.6 and 14.1). Python's ``str.isdigit`` and ``int`` also accept
other scripts' digits ('١٢'), superscripts ('²'), signs, spaces and
underscores, so a header a strict peer would refuse could pass as a number,
or pass ``isdigit`` and then fail ``int`` deep inside a handler.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)", re.ASCII)
# Far beyond any disk; keeps int() away from thousand-digit strings.
_MAX_DIGITS = 19


def parse_uint(text: str | None) -> int | None:
    """``text`` (surrounding spaces allowed) as a non-negative int, or None
    when it is not only ASCII digits."""
    if text is None:
        return None
    text = text.strip(" \t")
    if len(text) > _MAX_DIGITS or not _DIGITS.fullmatch(text):
        return None
    return int(text)


def parse_content_range(text: str | None) -> tuple[int, int, int | None] | None:
    """``bytes first-last/total`` as ``(first, last, total)`` (total None for
    ``*``), or None when malformed or ``last < first``."""
    if text is None:
        return None
    m = _CONTENT_RANGE.fullmatch(text.strip(" \t"))
    if not m or any(len(g) > _MAX_DIGITS for g in m.groups()):
        return None
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if last < first:
        return None
    return first, last, total
