"""The local engine's faults: an ``ApiError`` is answered as a ``<fault>`` with
its status.

The domain operations raise them and the REST plane answers them; the
helpers word the common cases as the oVirt engine does.
"""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, reason: str, detail: str = "",
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}
        super().__init__(f"{status} {reason}: {detail}")


def not_found(what: str = "entity") -> ApiError:
    """404 in the engine's words."""
    return ApiError(404, "Not Found", f"Entity not found: {what}")


def conflict(action: str, why: str) -> ApiError:
    """409: the engine's 'Cannot <action>. <why>' shape."""
    return ApiError(409, "Operation Failed", f"[Cannot {action}. {why}]")


def bad_request(detail: str) -> ApiError:
    return ApiError(400, "Operation Failed", detail)


def missing(entity: str, method: str, fields: str) -> ApiError:
    """400 for required fields, in the engine's wording."""
    return ApiError(400, "Incomplete parameters",
                    f"{entity} [{fields}] required for {method}")


def escaped(text: str) -> str:
    """``text`` with every character that is not printable written as its
    Python escape (``\\x01``): for texts the engine builds out of values it
    did not check itself (a fault's detail, a job's description)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
