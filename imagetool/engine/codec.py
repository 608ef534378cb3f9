"""XML/JSON <-> typed entities, in the shapes the oVirt engine uses.

Both wire formats are first turned into the same plain tree (dicts, lists
and strings, like the engine's JSON): an XML element with children or
attributes becomes a dict keyed by child tag (a repeated tag becomes a
list), a leaf element becomes its text. Entities are then read from that
tree by the field specs in ``entities.py``, so XML and JSON share one
reader and anything the client does not know is simply not looked at.

Request bodies are written as XML: only ``id`` and ``href`` are
attributes, everything else is a child element, booleans are lower case.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import fields
from typing import Any, TypeVar

from imagetool.engine.entities import ApiInfo, Entity
from imagetool.errors import EngineError

E = TypeVar("E", bound=Entity)

Tree = Any  # dict | list | str | None


# --- reading -----------------------------------------------------------------

def _local(tag: str) -> str:
    # Tolerate namespaced documents even though the engine sends none.
    return tag.rsplit("}", 1)[-1]


def element_to_tree(elem: ET.Element) -> Tree:
    """Convert one XML element into the JSON-like tree described above."""
    children = list(elem)
    if not children and not elem.attrib:
        return elem.text or ""
    node: dict[str, Any] = {}
    for key, value in elem.attrib.items():
        node[_local(key)] = value
    grouped: dict[str, list[Any]] = {}
    for child in children:
        grouped.setdefault(_local(child.tag), []).append(element_to_tree(child))
    for tag, values in grouped.items():
        # One child stays a value, repeated children become a list, as in
        # the engine's JSON for nested collections of one or more items.
        node[tag] = values[0] if len(values) == 1 else values
    return node


def decode(body: bytes, content_type: str | None) -> Tree:
    """Parse a response body by its content type (XML unless it says JSON)."""
    if not body.strip():
        return {}
    ctype = (content_type or "").lower()
    if "json" in ctype or (not ctype and body.lstrip()[:1] in (b"{", b"[")):
        try:
            return json.loads(body)
        except ValueError as e:
            raise EngineError(f"engine sent invalid JSON: {e}") from None
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise EngineError(f"engine sent invalid XML: {e}") from None
    return element_to_tree(root)


def as_list(value: Tree) -> list[Any]:
    """A tree value that may be absent, one item, or a list, as a list."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    return [value]


def _scalar(value: Tree) -> Any:
    if isinstance(value, dict):
        # A JSON or XML element carrying attributes and text is rare; there
        # is no scalar to read in it.
        return None
    if isinstance(value, list):
        return _scalar(value[0]) if value else None
    return value


def _given(value: Tree) -> Any:
    """The scalar value, or None when it is absent or empty."""
    value = _scalar(value)
    return None if value == "" else value


def to_int(value: Any) -> int | None:
    """Engine integers arrive as strings in XML and usually in JSON too."""
    value = _given(value)
    if value is None:
        return None
    try:
        return int(value)      # JSON booleans too: int(True) == 1
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


def to_bool(value: Any) -> bool | None:
    """``true``/``false`` strings (or JSON booleans) to bool."""
    value = _given(value)
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def to_str(value: Any) -> str | None:
    value = _scalar(value)
    if value is None:
        return None
    return str(value)


def _get_path(tree: Tree, path: str) -> Any:
    node = tree
    for part in path.split("/"):
        if isinstance(node, list):
            node = node[0] if node else None
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


_CONVERT = {"str": to_str, "int": to_int, "bool": to_bool}
# A field without a spec: the child element of its name, by its annotation.
_KINDS = {"str | None": "str", "int | None": "int", "bool | None": "bool"}


def _read_field(tree: dict, spec: tuple) -> Any:
    kind = spec[0]
    if kind == "refs":
        outer = tree.get(spec[1])
        if not isinstance(outer, dict):
            return ()
        return tuple(str(item["id"]) for item in as_list(outer.get(spec[2]))
                     if isinstance(item, dict) and item.get("id"))
    if kind == "path":
        return _CONVERT[spec[2]](_get_path(tree, spec[1]))
    raise AssertionError(f"unknown field spec {spec!r}")


def entity_from_tree(cls: type[E], tree: Tree) -> E:
    """Build one entity of type ``cls`` from its tree (XML or JSON)."""
    if not isinstance(tree, dict):
        raise EngineError(f"engine sent no {cls.TAG} where one was expected")  # type: ignore[attr-defined]
    return cls(**{f.name: _read_field(tree, f.metadata.get("spec")
                                      or ("path", f.name, _KINDS[f.type]))
                  for f in fields(cls)})


def entities_from_tree(cls: type[E], tree: Tree) -> list[E]:
    """Read a collection (``<disks><disk/>...`` or ``{"disk": [...]}``)."""
    if not isinstance(tree, dict):
        return []
    return [entity_from_tree(cls, item) for item in as_list(tree.get(cls.TAG))]  # type: ignore[attr-defined]


def parse_fault(tree: Tree) -> tuple[str | None, str | None]:
    """(reason, detail) of a ``<fault>`` or of an ``<action>`` holding one."""
    if not isinstance(tree, dict):
        return None, None
    if "fault" in tree and isinstance(tree["fault"], dict):
        tree = tree["fault"]
    return to_str(tree.get("reason")), to_str(tree.get("detail"))


def parse_api_info(tree: Tree) -> ApiInfo:
    """Read product_info from the API root document."""
    info = ApiInfo()
    pi = tree.get("product_info") if isinstance(tree, dict) else None
    if not isinstance(pi, dict):
        return info
    info.product_name = to_str(pi.get("name"))
    info.vendor = to_str(pi.get("vendor"))
    info.instance_id = to_str(pi.get("instance_id"))
    version = pi.get("version")
    if isinstance(version, dict):
        info.full_version = to_str(version.get("full_version"))
        major = to_int(version.get("major"))
        minor = to_int(version.get("minor"))
        if major is None and info.full_version:
            parts = info.full_version.split(".")
            major = to_int(parts[0])
            minor = to_int(parts[1]) if len(parts) > 1 else 0
        info.major = major if major is not None else 4
        info.minor = minor if minor is not None else 0
    return info


# --- writing -----------------------------------------------------------------

_ATTRS = ("id", "href")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fill(elem: ET.Element, body: dict[str, Any]) -> None:
    for key, value in body.items():
        if value is None:
            continue
        if key in _ATTRS and not isinstance(value, (dict, list)):
            elem.set(key, _text(value))
            continue
        for item in (value if isinstance(value, list) else [value]):
            child = ET.SubElement(elem, key)
            if isinstance(item, dict):
                _fill(child, item)
            else:
                child.text = _text(item)


def to_xml(tag: str, body: dict[str, Any] | None = None) -> bytes:
    """Serialize a request body: ``to_xml("disk", {"name": "a", ...})``.

    Nested dicts become child elements, lists repeat the element, ``None``
    values are left out, ``id``/``href`` become attributes.
    """
    root = ET.Element(tag)
    _fill(root, body or {})
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)
