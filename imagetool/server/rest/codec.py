"""XML and JSON in the shapes of the oVirt API model.

Entities are plain dicts. Rendering rules (both formats):
- ``id`` and ``href`` (and ``rel`` of links) are XML attributes;
- a list value is a collection: XML ``<disks><disk/>...</disks>``, JSON
  ``"disks": {"disk": [...]}``; the special key ``link`` is a list of
  ``<link href rel/>`` elements without a wrapper;
- ``None`` values are left out; booleans are ``true``/``false``; JSON
  scalars are strings, as the engine writes them.
Parsing gives the same dict shape back, with every scalar a string.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from imagetool import xmlsafe
from imagetool.server.faults import ApiError
from imagetool.server.validate import check_id

# Deepest element nesting a request body may have. oVirt request bodies are
# a few levels deep (an OVF travels as text, not as elements); a bound
# keeps the recursive readers below from exhausting the stack.
MAX_DEPTH = 32

_IRREGULAR = {"properties": "property", "statuses": "status", "addresses": "address",
              "custom_properties": "custom_property"}
_ATTRS = ("id", "href", "rel")


def singular(plural: str) -> str:
    """``disks`` -> ``disk``; the element name of a collection's members."""
    if plural in _IRREGULAR:
        return _IRREGULAR[plural]
    return plural[:-1] if plural.endswith("s") else plural


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- XML ------------------------------------------------------------------

# Characters XML 1.0 cannot carry (its Char production): values are checked
# at the door, but an inventory written before a check existed, or a name
# read from a file, must not make a whole listing unreadable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(value: Any) -> str:
    text = _scalar(value)
    return _NOT_XML.sub(lambda m: ascii(m.group())[1:-1], text)


def _xml_fill(el: ET.Element, obj: dict) -> None:
    for key, value in obj.items():
        if value is None:
            continue
        if key in _ATTRS and not isinstance(value, (dict, list)):
            el.set(key, _xml_text(value))
        elif key == "link":
            for link in value:
                ET.SubElement(el, "link", {k: _xml_text(v) for k, v in link.items()})
        elif isinstance(value, list):
            wrapper = ET.SubElement(el, key)
            child_tag = singular(key)
            for item in value:
                _xml_element(wrapper, child_tag, item)
        else:
            _xml_element(el, key, value)


def _xml_element(parent: ET.Element, tag: str, value: Any) -> None:
    child = ET.SubElement(parent, tag)
    if isinstance(value, dict):
        _xml_fill(child, value)
    else:
        child.text = _xml_text(value)


def to_xml(tag: str, obj: dict | list) -> bytes:
    """Render an entity (dict) or a collection (list) under ``tag``."""
    root = ET.Element(tag)
    if isinstance(obj, list):
        child_tag = singular(tag)
        for item in obj:
            _xml_element(root, child_tag, item)
    else:
        _xml_fill(root, obj)
    return b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + ET.tostring(root)


def _xml_parse(el: ET.Element) -> Any:
    children = list(el)
    if not children:
        if el.attrib:
            return dict(el.attrib)
        return (el.text or "").strip()
    member = singular(el.tag)
    if el.tag != member and all(c.tag == member for c in children) and not el.attrib:
        return [_xml_parse(c) for c in children]
    out: dict[str, Any] = dict(el.attrib)
    for c in children:
        value = _xml_parse(c)
        if c.tag in out:
            prev = out[c.tag]
            out[c.tag] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[c.tag] = value
    return out


# --- JSON -----------------------------------------------------------------

def _json_obj(obj: dict) -> dict:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if value is None:
            continue
        if key == "link":
            out[key] = [{k: _scalar(v) for k, v in link.items()} for link in value]
        elif isinstance(value, list):
            out[key] = {singular(key): [_json_any(v) for v in value]}
        else:
            out[key] = _json_any(value)
    return out


def _json_any(value: Any) -> Any:
    return _json_obj(value) if isinstance(value, dict) else _scalar(value)


def to_json(tag: str, obj: dict | list) -> bytes:
    """Render an entity or a collection (``{"disk": [...]}``) as JSON."""
    if isinstance(obj, list):
        doc: Any = {singular(tag): [_json_any(v) for v in obj]}
    else:
        doc = _json_obj(obj)
    return json.dumps(doc, indent=2).encode()


def _json_parse(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        if key is not None and len(value) == 1 and singular(key) in value and key != singular(key):
            inner = value[singular(key)]
            items = inner if isinstance(inner, list) else [inner]
            return [_json_parse(v) for v in items]
        return {k: _json_parse(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_parse(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


# --- entry points -----------------------------------------------------------

def render(tag: str, obj: dict | list, fmt: str) -> bytes:
    return to_json(tag, obj) if fmt == "json" else to_xml(tag, obj)


def parse(body: bytes, content_type: str) -> tuple[str | None, dict]:
    """Parse a request body; returns (root tag or None for JSON, dict).

    Raises ApiError 400 with the parser's message on malformed input.
    """
    if not body.strip():
        return None, {}
    if "json" in (content_type or "").lower():
        try:
            doc = json.loads(body)
        except RecursionError:
            raise _too_deep() from None
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(f"Cannot parse JSON request body: {e}") from None
        if not isinstance(doc, dict):
            raise _bad("The JSON request body must be an object")
        if _json_depth(doc) > MAX_DEPTH:
            raise _too_deep()
        return None, _json_parse(doc)
    root = _xml_read(body)
    value = _xml_parse(root)
    if isinstance(value, list):
        value = {singular(root.tag): value}
    elif not isinstance(value, dict):
        value = {}
    return root.tag, value


def _bad(detail: str) -> ApiError:
    """The engine's 400 fault for a body or value it cannot read."""
    return ApiError(400, "Request syntactically incorrect.", detail)


def _too_deep() -> ApiError:
    return _bad(f"The request body is nested more than {MAX_DEPTH} levels deep")


def _json_depth(doc: Any) -> int:
    """Deepest nesting of dicts and lists, without recursion."""
    deepest = 0
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((v, depth + 1) for v in value)
    return deepest


def _xml_read(body: bytes) -> ET.Element:
    """Parse an XML body, refusing DTDs (entity expansion) and deep nesting."""
    try:
        xmlsafe.check_no_dtd(body)      # in any encoding, UTF-16 included
    except xmlsafe.DtdRefused:
        raise _bad("Cannot parse XML request body: document type declarations "
                   "are not accepted") from None
    except xmlsafe.XmlRefused:
        pass                            # the parser below says what is wrong
    parser = ET.XMLPullParser(events=("start", "end"))
    depth = 0
    root = None
    try:
        parser.feed(body)
        parser.close()
        for event, el in parser.read_events():
            if event == "start":
                depth += 1
                if root is None:
                    root = el
                if depth > MAX_DEPTH:
                    raise _too_deep()
            else:
                depth -= 1
    except ET.ParseError as e:
        raise _bad(f"Cannot parse XML request body: {e}") from None
    if root is None:
        raise _bad("Cannot parse XML request body: no element found")
    return root


# --- reading parsed values ---------------------------------------------------

def _walk(obj: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` inside nested dicts, or None when absent."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def get_str(obj: Any, *path: str) -> str | None:
    """A nested scalar as a string, or None when absent or empty."""
    obj = _walk(obj, path)
    if isinstance(obj, (dict, list)):
        return None
    return obj if obj not in ("", None) else None


def get_id(obj: Any, *path: str, what: str = "entity") -> str | None:
    """A nested id, or None when absent; ApiError 400 when not a UUID."""
    text = get_str(obj, *path)
    return None if text is None else check_id(text, what)


def get_int(obj: Any, *path: str) -> int | None:
    """A nested integer, or None; ApiError 400 when not an integer."""
    text = get_str(obj, *path)
    if text is None:
        return None
    # ASCII digits only: int() also takes other scripts' digits and '1_0'.
    if re.fullmatch(r"[+-]?[0-9]{1,20}", text.strip(), re.ASCII):
        return int(text)
    raise _bad(f"Value '{text}' of '{'.'.join(path)}' is not an integer")


def get_bool(obj: Any, *path: str) -> bool | None:
    """A nested boolean, or None; ApiError 400 when not a boolean."""
    text = get_str(obj, *path)
    if text is None:
        return None
    low = text.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise _bad(f"Value '{text}' of '{'.'.join(path)}' is not a boolean")


def get_obj(obj: Any, *path: str) -> dict | None:
    obj = _walk(obj, path)
    return obj if isinstance(obj, dict) else None


def get_list(obj: Any, *path: str) -> list:
    """A nested collection (always a list, possibly empty)."""
    obj = _walk(obj, path)
    if isinstance(obj, dict):
        return [obj]
    return obj if isinstance(obj, list) else []
