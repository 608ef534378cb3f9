"""The API root document and the SSO side: tokens, logout, Basic auth."""

from __future__ import annotations

import base64
import hmac
import math
import secrets
import threading
import time

from imagetool.server.domain import inventory
from imagetool.server.rest.common import iso_date, ref
from imagetool.server.rest.router import Reply, Request

_COLLECTIONS = ("clusters", "datacenters", "disks", "events", "hosts", "imagetransfers",
                "jobs", "networks", "storagedomains", "templates", "users", "vms",
                "vnicprofiles")
PRODUCT_VERSION = (4, 5, 4, 0)


def api_root(req: Request) -> Reply:
    """GET /ovirt-engine/api: links and product info (4.5-like)."""
    engine = req.engine
    sds = inventory.entities(engine, "storage_domain")
    major, minor, build, revision = PRODUCT_VERSION
    links = [{"href": req.href(c), "rel": c} for c in _COLLECTIONS]
    links += [{"href": req.href(c) + "?search={query}", "rel": f"{c}/search"}
              for c in ("disks", "hosts", "storagedomains", "vms", "jobs")]
    body = {
        "link": links,
        "authenticated_user": {"href": req.href("users", engine.user_id), "id": engine.user_id},
        "effective_user": {"href": req.href("users", engine.user_id), "id": engine.user_id},
        "product_info": {
            "instance_id": engine.instance_id, "name": "oVirt Engine (imagetool local)",
            "vendor": "imagetool",
            "version": {"build": build, "full_version": f"{major}.{minor}.{build}.{revision}-imagetool",
                        "major": major, "minor": minor, "revision": revision},
        },
        "special_objects": {
            "blank_template": ref(req, "templates", "00000000-0000-0000-0000-000000000000"),
            "root_tag": ref(req, "tags", "00000000-0000-0000-0000-000000000000"),
        },
        "summary": {
            "hosts": {"active": 1, "total": 1},
            "storage_domains": {"active": len(sds), "total": len(sds)},
            "vms": {"active": 0, "total": len(inventory.entities(engine, "vm"))},
            "users": {"active": 1, "total": 1},
        },
        "time": iso_date(time.time()),
    }
    return Reply(tag="api", body=body)


class Throttled(Exception):
    """Too many failed logins from this (user, peer): retry after ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"retry after {retry_after:.1f} s")


class Auth:
    """admin@internal credentials and the bearer tokens issued for them.

    Failed logins are throttled per (user name, peer address), through the
    SSO token endpoint and Basic credentials alike: the first
    ``FREE_FAILURES`` failures cost nothing; each further failure blocks that
    pair for ``login_delay`` seconds, doubling with every failure up to
    ``MAX_DELAY_FACTOR`` times ``login_delay`` (1 s up to 64 s by default).
    While blocked, every attempt from the pair, even with the right
    password, is refused (HTTP 429 with Retry-After) without checking the
    password; once the block ends the right password succeeds and clears
    the count. Failures older than ``FAILURE_WINDOW`` s are forgotten.
    """

    USERNAME = "admin@internal"
    FREE_FAILURES = 5
    MAX_DELAY_FACTOR = 64
    FAILURE_WINDOW = 600.0

    def __init__(self, password: str, token_lifetime: float = 3600.0,
                 login_delay: float = 1.0) -> None:
        self._password = password
        self.token_lifetime = token_lifetime
        self.login_delay = login_delay
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()
        # (user, peer) -> [failures, last failure time, blocked until]
        self._failures: dict[tuple[str, str], list[float]] = {}

    def check_password(self, username: str, password: str) -> bool:
        """Constant-time check of admin's credentials (``admin`` means admin@internal)."""
        user_ok = username in (self.USERNAME, "admin", "admin@ovirt@internalsso")
        return user_ok and hmac.compare_digest(password.encode(), self._password.encode())

    def login(self, username: str, password: str, peer: str = "") -> bool:
        """``check_password`` with throttling; raises Throttled while blocked."""
        key = (username[:256], peer)
        now = time.monotonic()
        with self._lock:
            entry = self._failures.get(key)
            if entry is not None and now - entry[1] > self.FAILURE_WINDOW:
                del self._failures[key]
                entry = None
            if entry is not None and entry[2] > now:
                raise Throttled(entry[2] - now)
        ok = self.check_password(username, password)
        with self._lock:
            if ok:
                self._failures.pop(key, None)
                return True
            if len(self._failures) > 10000:   # many peers: forget the oldest
                oldest = min(self._failures, key=lambda k: self._failures[k][1])
                del self._failures[oldest]
            entry = self._failures.setdefault(key, [0, now, 0.0])
            entry[0] += 1
            entry[1] = now
            extra = entry[0] - self.FREE_FAILURES
            if extra > 0:
                factor = min(2 ** (extra - 1), self.MAX_DELAY_FACTOR)
                entry[2] = now + self.login_delay * factor
        return False

    def issue(self) -> tuple[str, float]:
        """A new token and its expiry (epoch seconds)."""
        token = secrets.token_urlsafe(32)
        exp = time.time() + self.token_lifetime
        with self._lock:
            self._tokens[token] = exp
        return token, exp

    def revoke(self, token: str) -> None:
        """Forget a token (logout); unknown tokens are ignored."""
        with self._lock:
            self._tokens.pop(token, None)

    def check_header(self, header: str | None, peer: str = "") -> str | None:
        """The user name for a valid Authorization header, else None.

        Raises Throttled for Basic credentials of a blocked (user, peer).
        """
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            with self._lock:
                exp = self._tokens.get(value.strip())
                if exp is None:
                    return None
                if exp < time.time():
                    del self._tokens[value.strip()]
                    return None
            return self.USERNAME
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return self.USERNAME if self.login(user, password, peer) else None
        return None

    def token_request(self, form: dict[str, str], peer: str = "") -> tuple[int, dict]:
        """The SSO token endpoint: (status, JSON reply); 429 while throttled."""
        if form.get("grant_type") != "password":
            return 400, {"error_code": "unsupported_grant_type",
                         "error": f"Unsupported grant type '{form.get('grant_type')}'"}
        scopes = set((form.get("scope") or "").split())
        if scopes and not scopes & {"ovirt-app-api", "ovirt-app-admin", "ovirt-app-portal",
                                     "ovirt-ext=token:password-access"}:
            return 400, {"error_code": "invalid_scope", "error": "The requested scope is not allowed"}
        try:
            ok = self.login(form.get("username", ""), form.get("password", ""), peer)
        except Throttled as e:
            return 429, {"error_code": "access_denied",
                         "error": "Too many failed logins: try again in "
                                  f"{math.ceil(e.retry_after)} s",
                         "retry_after": str(math.ceil(e.retry_after))}
        if not ok:
            return 401, {"error_code": "access_denied",
                         "error": "Cannot authenticate user: invalid user name or password"}
        token, exp = self.issue()
        return 200, {"access_token": token, "token_type": "bearer",
                     "scope": form.get("scope") or "ovirt-app-api",
                     "exp": str(int(exp * 1000)), "expires_in": str(int(self.token_lifetime))}

    def info(self, token: str) -> tuple[int, dict]:
        with self._lock:
            exp = self._tokens.get(token)
        if exp is None or exp < time.time():
            return 401, {"error_code": "invalid_grant", "error": "Token is not valid"}
        return 200, {"active": True, "user_id": self.USERNAME, "scope": "ovirt-app-api",
                     "exp": str(int(exp * 1000)), "token_type": "bearer"}
