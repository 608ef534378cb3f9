"""XML from files and clients, parsed without document type declarations.

A DTD's internal entities expand when the document is parsed (the "billion
laughs"), and external ones name other files. Looking for the bytes
``<!DOCTYPE`` before parsing is not enough: expat reads UTF-16 with or
without a byte order mark, and any encoding Python has a codec for when the
XML declaration names it (UTF-7 among them), where those bytes never
appear. So the document is first run through expat with handlers that
refuse a DTD, an entity declaration or an external entity reference as the
parser meets them, in whatever encoding it decoded; only then is the tree
built, by the same parser from the same input.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat
from xml.sax.saxutils import escape


class XmlRefused(ValueError):
    """The document cannot be parsed, or declares a DTD or entities."""


class DtdRefused(XmlRefused):
    """The document declares a DTD or entities."""


class _Dtd(Exception):
    pass


def _refuse(*_args: object) -> None:
    raise _Dtd()


def check_no_dtd(data: bytes | str) -> None:
    """XmlRefused if ``data`` is not well-formed or declares a DTD or entities."""
    p = expat.ParserCreate()
    p.StartDoctypeDeclHandler = _refuse
    p.EntityDeclHandler = _refuse
    p.UnparsedEntityDeclHandler = _refuse
    p.ExternalEntityRefHandler = _refuse
    try:
        p.Parse(data, True)
    except _Dtd:
        raise DtdRefused("it declares a DTD or entities, which are refused") from None
    except expat.ExpatError as e:
        raise XmlRefused(f"cannot parse it: {expat.errors.messages[e.code]}, "
                         f"line {e.lineno}, column {e.offset}") from None
    except (LookupError, ValueError) as e:
        # An XML declaration naming an unknown encoding, one pyexpat cannot
        # use ("multi-byte encodings are not supported": UTF-7), or bytes
        # that do not decode in it.
        raise XmlRefused(f"cannot decode it: {e}") from None


def text(value: object) -> str:
    """``value`` as element text or a double-quoted attribute value, escaped.

    Every value an OVF writer puts in goes through this: names, ids and OS
    types come from clients and files, and a written OVF is read back by
    ``POST /vms`` and by other engines.
    """
    return escape(str(value), {'"': "&quot;"})


def parse(data: bytes | str) -> ET.Element:
    """The root element of ``data``; XmlRefused as ``check_no_dtd`` says."""
    check_no_dtd(data)
    try:
        return ET.fromstring(data)
    except ET.ParseError as e:      # not expected after check_no_dtd
        raise XmlRefused(f"cannot parse it: {e}") from None
