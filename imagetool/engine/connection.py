"""The connection to an engine's REST API: TLS, authentication, faults.

One ``httpx.Client`` per Connection. Authentication is the engine's SSO
password grant (a Bearer token, fetched lazily on the first request, fetched
again once when a request answers 401), or Basic auth when the engine has no
SSO endpoint, or a token given by the caller. Responses with a fault become
the typed exceptions of ``imagetool.errors``.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from imagetool.engine import codec, services, vm_services
from imagetool.engine.entities import ApiInfo
from imagetool.errors import (AuthError, Conflict, ConnectionFailed,
                              EngineError, NotFound, UsageError)
from imagetool.iocore.backend import Closing

log = logging.getLogger(__name__)

XML = "application/xml"
JSON = "application/json"
CA_PATH = "/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA"
TOKEN_PATH = "/ovirt-engine/sso/oauth/token"
LOGOUT_PATH = "/ovirt-engine/services/sso-logout"


def normalize_url(url: str) -> tuple[str, str]:
    """Return (api url, engine base url) for what a user may type.

    Accepts ``https://engine``, ``https://engine/ovirt-engine`` and
    ``https://engine/ovirt-engine/api`` (ovirt-img's ``engine_url`` is the
    first form, the SDK's ``url`` the last).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"invalid engine URL {url!r}: expected https://HOST[/ovirt-engine/api]")
    path = parts.path.rstrip("/")
    if "/ovirt-engine" in path:
        prefix = path[:path.index("/ovirt-engine")]
        api_path = path if path.endswith("/api") or "/api/" in path else path + "/api"
    else:
        prefix = path
        api_path = path + "/ovirt-engine/api"
    base = urlunsplit((parts.scheme, parts.netloc, prefix, "", ""))
    api = urlunsplit((parts.scheme, parts.netloc, api_path.rstrip("/"), "", ""))
    return api, base


def _ssl_context(cafile: str | None, insecure: bool) -> ssl.SSLContext | bool:
    if insecure:
        return False
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as e:
        raise ConnectionFailed(f"cannot use CA file {cafile}: {e}") from None


_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")


def _check_path(path: str) -> None:
    """Refuse an API path with a segment that is not a plain name or id.

    Paths are built from ids, some of them read from files nobody vouches
    for (a backup repository's manifests, a killed run's state): an id
    like ``../../disks/X`` would otherwise send the request to another
    resource. One check here covers every service."""
    for seg in path.strip("/").split("/") if path.strip("/") else ():
        if seg in (".", "..") or not _SEGMENT.fullmatch(seg):
            raise EngineError(f"refusing an API path with the segment {seg[:80]!r}: "
                              "an id read from a file is not a plain id")


class Connection(Closing):
    """A connection to one engine; services hang off it as attributes.

    ``conn.disks``, ``conn.storage_domains``, ``conn.transfers``,
    ``conn.vms``, ``conn.snapshots``, ``conn.hosts``, ``conn.jobs`` (see
    ``services.py``). Thread safe: requests may be made from several
    threads (httpx.Client is thread safe; the token refresh is locked).
    """

    def __init__(self, url: str, *, username: str | None = None,
                 password: str | None = None, token: str | None = None,
                 cafile: str | None = None, insecure: bool = False,
                 timeout: float = 60.0, connect_timeout: float = 10.0,
                 headers: dict[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        """Open (lazily) a connection to the engine at ``url``.

        ``url`` may be the API URL or the engine's base URL. Give either
        ``username`` and ``password`` or a ``token``. TLS is verified with
        ``cafile`` (or the system store) unless ``insecure`` is true.
        ``transport`` replaces the network (tests).
        """
        self.url, self.base_url = normalize_url(url)
        self.username = username
        self._password = password
        self._token = token
        self._own_token = False
        self._basic = False
        self.cafile = cafile
        self.insecure = insecure
        self._lock = threading.Lock()
        self._api_info: ApiInfo | None = None
        self._closed = False
        if token is None and (username is None or password is None):
            raise AuthError("engine credentials missing: give a username and "
                            "password (or a token)")
        base_headers = {"Version": "4", "Accept": XML, **(headers or {})}

        def new_client() -> httpx.Client:
            return httpx.Client(
                verify=_ssl_context(cafile, insecure),
                timeout=httpx.Timeout(timeout, connect=connect_timeout),
                headers=base_headers, follow_redirects=False, transport=transport)
        self._new_client = new_client
        self._client = new_client()
        self.disks = services.DisksService(self)
        self.storage_domains = services.StorageDomainsService(self)
        self.transfers = services.ImageTransfersService(self)
        self.vms = vm_services.VmsService(self)
        self.templates = vm_services.TemplatesService(self)
        self.snapshots = vm_services.SnapshotsService(self)
        self.backups = vm_services.BackupsService(self)
        self.checkpoints = vm_services.CheckpointsService(self)
        self.hosts = services.HostsService(self)
        self.clusters = services.ClustersService(self)
        self.jobs = services.JobsService(self)

    def __repr__(self) -> str:
        return f"<Connection {self.url}>"

    def close(self) -> None:
        """Log out (when this connection made the token) and close sockets."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._own_token and self._token:
                try:
                    self._client.post(
                        self.base_url + LOGOUT_PATH,
                        data={"scope": "ovirt-app-api", "token": self._token},
                        headers={"Accept": JSON})
                except httpx.HTTPError as e:
                    # Logging out is a courtesy; the token expires anyway.
                    log.debug("sso logout failed: %s", type(e).__name__)
        finally:
            self._token = None
            self._client.close()

    # --- authentication ----------------------------------------------------

    def _fetch_token(self) -> None:
        """Password grant at the SSO endpoint; Basic auth when it is missing."""
        url = self.base_url + TOKEN_PATH
        data = {"grant_type": "password", "scope": "ovirt-app-api",
                "username": self.username or "", "password": self._password or ""}
        resp = self._send_raw("POST", url, data=data, headers={"Accept": JSON})
        if resp.status_code == 404:
            log.debug("no SSO endpoint at %s; using basic auth", url)
            self._basic = True
            return
        try:
            doc = resp.json()
        except ValueError:
            doc = {}
        if isinstance(doc, list):
            doc = doc[0] if doc else {}
        if resp.status_code != 200 or "error" in doc or "access_token" not in doc:
            # OAuth errors carry error + error_code, OpenID ones error_description.
            why = doc.get("error_description") or doc.get("error") or f"HTTP {resp.status_code}"
            raise AuthError(f"engine login failed for {self.username}: {why}",
                            status=resp.status_code, reason=str(doc.get("error_code") or doc.get("error") or ""),
                            detail=str(why))
        self._token = doc["access_token"]
        self._own_token = True

    def _auth_headers(self) -> dict[str, str]:
        if self._basic:
            return {}
        if self._token is None:
            with self._lock:
                if self._token is None and not self._basic:
                    self._fetch_token()
        if self._basic:
            return {}
        return {"Authorization": f"Bearer {self._token}"}

    def _refresh_token(self, used: str | None) -> bool:
        """Fetch a new token after a 401; False when that is not possible."""
        if self._password is None or self.username is None:
            return False
        with self._lock:
            if self._token == used:  # another thread may have refreshed already
                self._token = None
                self._fetch_token()
        return True

    # --- requests ----------------------------------------------------------

    def _send_raw(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        client = self._client
        try:
            return client.request(method, url, **kwargs)
        except KeyboardInterrupt:
            # A Ctrl-C can land inside the connection pool, between taking
            # one of its locks and the block that gives it back; the cleanup
            # that follows (cancel the transfer, remove the snapshot) would
            # then wait on that lock for ever. It gets a new pool; the old one
            # is dropped unclosed, since closing it may wait on the same lock.
            if self._client is client:
                self._client = self._new_client()
            raise
        except httpx.ConnectError as e:
            raise self._connect_failure(e) from None
        except httpx.TimeoutException as e:
            raise ConnectionFailed(
                f"engine at {self.base_url} did not answer in time ({type(e).__name__})") from None
        except httpx.TransportError as e:
            hint = " (does the engine need https://?)" if self.base_url.startswith("http:") else ""
            raise ConnectionFailed(
                f"connection to engine at {self.base_url} failed: {e}{hint}") from None

    def _connect_failure(self, e: Exception) -> ConnectionFailed:
        text = str(e)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text.lower():
            return ConnectionFailed(
                f"cannot connect to engine at {self.base_url}: certificate verify failed: "
                f"pass --cafile with the engine CA (download it from "
                f"{self.base_url}{CA_PATH}) or --insecure")
        if "SSL" in text or "TLS" in text:
            return ConnectionFailed(
                f"TLS handshake with engine at {self.base_url} failed: {text} "
                f"(is the URL's scheme right?)")
        return ConnectionFailed(
            f"cannot connect to engine at {self.base_url}: {text or type(e).__name__} "
            f"(check --engine-url and that the engine is running)")

    def request(self, method: str, path: str, *, body: bytes | None = None,
                params: dict[str, Any] | None = None) -> httpx.Response:
        """Send one API request; ``path`` is relative to the API URL.

        Returns the response on 2xx; raises NotFound, Conflict, AuthError or
        EngineError (with the fault's reason and detail) otherwise. The
        answer is XML unless the connection's ``headers`` ask for JSON;
        both decode to the same entities.
        """
        if self._closed:
            raise EngineError("connection is closed")
        if path.startswith("http"):
            url = path
        else:
            _check_path(path)
            url = self.url + ("/" + path.lstrip("/") if path.strip("/") else "")
        hdrs = {"Content-Type": XML} if body is not None else {}
        params = {k: (str(v).lower() if isinstance(v, bool) else v)
                  for k, v in (params or {}).items() if v is not None}
        for attempt in (0, 1):
            auth_hdrs = self._auth_headers()
            used = self._token
            basic = httpx.BasicAuth(self.username or "", self._password or "") \
                if self._basic else None
            resp = self._send_raw(method, url, headers={**hdrs, **auth_hdrs}, params=params,
                                  content=body, auth=basic)
            if resp.status_code == 401 and attempt == 0 and not self._basic \
                    and self._refresh_token(used):
                log.debug("engine answered 401; fetched a new token")
                continue
            break
        if resp.status_code >= 400:
            raise self._fault(method, path, resp)
        return resp

    def _fault(self, method: str, path: str, resp: httpx.Response) -> EngineError:
        status = resp.status_code
        reason = detail = None
        try:
            reason, detail = codec.parse_fault(
                codec.decode(resp.content, resp.headers.get("content-type")))
        except EngineError:
            pass  # an HTML error page from a proxy: keep the status only
        what = f"{method} {path.split('?')[0]}"
        text = (detail or reason or resp.reason_phrase or "error").strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        cls, msg = {
            401: (AuthError, f"engine refused the credentials ({status}): {text}"),
            403: (AuthError, f"not permitted: {what}: {text}"),
            404: (NotFound, f"not found: {what}: {text}"),
            409: (Conflict, f"conflict: {what}: {text}"),
        }.get(status, (EngineError, f"{what} failed ({status}): {text}"))
        return cls(msg, status=status, reason=reason, detail=detail)

    # --- conveniences used by the services ---------------------------------

    def tree(self, method: str, path: str, body: bytes | None = None,
             params: dict[str, Any] | None = None) -> codec.Tree:
        """:meth:`request`, its answer (XML or JSON) decoded into a tree."""
        resp = self.request(method, path, body=body, params=params)
        return codec.decode(resp.content, resp.headers.get("content-type"))

    def api_info(self) -> ApiInfo:
        """The API root's product info (fetched once, cached)."""
        if self._api_info is None:
            self._api_info = codec.parse_api_info(self.tree("GET", ""))
        return self._api_info

    @property
    def engine_version(self) -> tuple[int, int]:
        """(major, minor) of the engine, from the API root."""
        return self.api_info().version

    @property
    def legacy(self) -> bool:
        """True for 4.1 engines: ``<image id>``, no transfer format, signed_ticket."""
        return self.engine_version < (4, 2)

    def test(self) -> None:
        """Check that the engine answers and accepts the credentials."""
        self.api_info()
