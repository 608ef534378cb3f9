"""The local engine: REST control plane + imageio data plane over one data dir.

``EngineServer`` ties together the inventory (``store``), the storage domains
(``storage``), the transfer state machine (``transfers``), the data plane
(``dataplane.DataPlaneServer``) and an HTTP(S) server for ``/ovirt-engine/...``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import secrets
import socket
import ssl
import threading
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from imagetool.server.domain import backups
from imagetool.server.dataplane import DataPlaneServer
from imagetool.server.dirty import DirtyTracker
from imagetool.server import jobs
from imagetool.server.rest import codec, root
from imagetool.server.rest.http import MAX_CONNECTIONS, REQUEST_TIMEOUT, Handler, HttpServer
from imagetool.server.rest.jobs import correlation_id
from imagetool.server.rest.routes import ROUTES
from imagetool.server.rest.router import API_PREFIX_RE, ApiError, Reply, Request, Router
from imagetool.server.faults import escaped
from imagetool.server.files import make_private_dirs
from imagetool.server.storage import Storage, new_id
from imagetool.server.store import Store
from imagetool.server.tickets import TicketRegistry
from imagetool.server.tls import ensure_pki, server_context
from imagetool.server.domain.transfers import TransferManager

log = logging.getLogger(__name__)

PASSWORD_FILE = "admin-password"
# The largest REST request body: 1 MiB. oVirt REST bodies are small
# entities; the largest the local engine takes is a VM create carrying an
# OVF, a few KiB per disk. A larger Content-Length is answered 413 before
# any of the body is read.
MAX_BODY = 1 << 20
# The SSO and services endpoints take no authentication; their bodies are
# a short form (user name, password, scope).
MAX_SSO_BODY = 16 << 10
# Hosts one engine may pretend to have (``serve --hosts``).
MAX_HOSTS = 64


def load_or_create_password(data_dir: str, password: str | None = None,
                            password_file: str | None = None) -> tuple[str, str | None]:
    """admin@internal's password and the file holding it (None if given directly).

    Order: ``password``, ``password_file``, $IMAGETOOL_ADMIN_PASSWORD, the
    data dir's ``admin-password`` (created mode 0600 with a random password).
    """
    if password:
        return password, password_file
    if password_file:
        with open(password_file) as f:
            return f.read().strip(), password_file
    env = os.environ.get("IMAGETOOL_ADMIN_PASSWORD")
    if env:
        return env, None
    path = os.path.join(data_dir, PASSWORD_FILE)
    if not os.path.exists(path):
        make_private_dirs(data_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(18) + "\n")
    with open(path) as f:
        return f.read().strip(), path


def _try_lock(path: str):
    """An open file holding an exclusive flock on ``path``, or None if taken."""
    f = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600),
                  "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _operator_dirs(dirs: list[str] | tuple[str, ...], what: str) -> list[str]:
    """The absolute paths of directories the operator allows writes in;
    ValueError for one that does not exist."""
    out = [os.path.abspath(d) for d in dirs]
    for d in out:
        if not os.path.isdir(d):
            raise ValueError(f"{what} directory {d} does not exist")
    return out


class EngineServer:
    """The whole local engine; ``start()`` serves in background threads."""

    def __init__(self, data_dir: str, host: str = "127.0.0.1", port: int = 0,
                 imageio_port: int = 0, tls: bool = True, password: str | None = None,
                 password_file: str | None = None, token_lifetime: float = 3600.0,
                 finished_ttl: float = 300.0, login_delay: float = 1.0,
                 max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT, hosts: int = 1,
                 export_dirs: list[str] | tuple[str, ...] = (),
                 storage_dirs: list[str] | tuple[str, ...] = (),
                 backup_timeout: float = backups.BACKUP_TIMEOUT) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be between 1 and {MAX_HOSTS}, not {hosts}")
        self.data_dir = os.path.abspath(data_dir)
        # Owner-only: the data dir holds guests' disks, the password and the
        # CA key (an older version left it 0755).
        make_private_dirs(self.data_dir)
        os.chmod(self.data_dir, 0o700)
        self.host = host
        # Directories a Vm export to a host path may write into (serve --export-dir).
        self.export_dirs = _operator_dirs(export_dirs, "export")
        # Directories new storage domains may live in (serve --storage-dir).
        self.storage_dirs = _operator_dirs(storage_dirs, "storage")
        self.stopping = threading.Event()
        self._background: list[threading.Thread] = []
        self.public_host = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        self._port = port
        self._imageio_port = imageio_port
        self.tls = tls
        self.password, self.password_file = load_or_create_password(
            self.data_dir, password, password_file)
        self.auth = root.Auth(self.password, token_lifetime, login_delay=login_delay)
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.store = Store(os.path.join(self.data_dir, "inventory.db"))
        self.storage = Storage(self.data_dir, self.store)
        self.storage.ensure_default_domains()
        self.host_id = self._stable_id("host_id")
        # Every host serves the same data (one data plane behind them all);
        # the ids stay stable across restarts, so do the names.
        self.hosts = [{"id": self.host_id, "name": "local"}]
        for i in range(2, hosts + 1):
            self.hosts.append({"id": self._stable_id(f"host_id_{i}"), "name": f"local-{i}"})
        self.cluster_id = self._stable_id("cluster_id")
        self.datacenter_id = self._stable_id("datacenter_id")
        self.user_id = self._stable_id("user_id")
        self.instance_id = self._stable_id("instance_id")
        self.registry = TicketRegistry()
        self.router = Router(ROUTES)
        self.transfers = TransferManager(self.store, self.storage, self.registry,
                                         self.dataplane_url, finished_ttl=finished_ttl)
        # Writes since each checkpoint, for incremental backups.
        self.dirty = DirtyTracker(self.data_dir)
        self.transfers.dirty = self.dirty
        # A VM backup with no activity this long is ended (server/domain/backups.py).
        self.backup_timeout = backup_timeout
        self.transfers.ticks.append(lambda: backups.expire(self))
        self.pki = None
        self.ssl_context: ssl.SSLContext | None = None
        if tls:
            self.pki = ensure_pki(self.data_dir, [self.public_host])
            self.ssl_context = server_context(self.pki)
        self.dataplane = None
        # Tests set this to put a fault-injecting proxy in front of the data
        # plane: transfers then hand out this base URL instead of ours.
        self.advertised_dataplane_url: str | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._dir_lock = None

    def _stable_id(self, key: str) -> str:
        value = self.store.setting(key)
        if value is None:
            value = new_id()
            self.store.set_setting(key, value)
        return value

    # --- addresses ------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def dataplane_port(self) -> int:
        return self.dataplane.port if self.dataplane else self._imageio_port

    def _netloc(self, port: int) -> str:
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        """The API base URL, ``https://127.0.0.1:PORT/ovirt-engine/api``."""
        return f"{self.scheme}://{self._netloc(self.port)}/ovirt-engine/api"

    def dataplane_url(self) -> str:
        """Base URL of the data plane (transfer URLs add /images/<ticket>)."""
        if self.advertised_dataplane_url:
            return self.advertised_dataplane_url
        return f"{self.scheme}://{self._netloc(self.dataplane_port)}"

    @property
    def cafile(self) -> str | None:
        return self.pki.ca_file if self.pki else None

    # --- lifecycle --------------------------------------------------------------

    def start(self) -> "EngineServer":
        """Start the data plane, the transfer monitor and the HTTP server."""
        try:
            self._start()
        except BaseException:
            # e.g. the port is taken: leave nothing running behind.
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.stopping.clear()
        self.dataplane = DataPlaneServer(self.registry, host=self.host, port=self._imageio_port,
                                         ssl_context=self.ssl_context)
        self.dataplane.start()
        # Only the first engine on a data dir settles what a crash left
        # behind; a second one (two CLI commands at once) must not cancel
        # the first one's live transfers.
        self._dir_lock = _try_lock(os.path.join(self.data_dir, "engine.lock"))
        self.transfers.start(recover=self._dir_lock is not None)
        if self._dir_lock is not None:
            backups.recover(self)
        httpd = HttpServer((self.host, self._port), Handler)
        httpd.setup_limits(self.max_connections, self.request_timeout)
        if self.ssl_context is not None:
            httpd.socket = self.ssl_context.wrap_socket(httpd.socket, server_side=True,
                                                        do_handshake_on_connect=False)
        httpd.engine = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="engine-http", daemon=True)
        self._thread.start()

    def background_start(self, thread: threading.Thread) -> None:
        """Start a job's thread; ``stop`` cancels it (``stopping``) and waits."""
        self._background = [t for t in self._background if t.is_alive()] + [thread]
        thread.start()

    def stop(self) -> None:
        """Stop serving; interrupted transfers are settled on the next start."""
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.transfers.stop()
        for t in self._background:
            t.join(timeout=30)
        if self.dataplane is not None:
            self.dataplane.stop()
            self.dataplane = None
        for ticket in self.registry.all():
            try:
                ticket.close_backend()
            except Exception:  # a half-written backend must not block shutdown
                log.exception("closing a ticket's backend failed")
        self.store.close()
        if self._dir_lock is not None:
            self._dir_lock.close()   # releases the flock
            self._dir_lock = None

    # --- dispatch -----------------------------------------------------------

    def admit(self, method: str, target: str, headers: dict[str, str], length: int,
              peer: str = "") -> tuple[tuple[int, dict[str, str], bytes] | None, str | None]:
        """Judge a request by its line and headers, before any body byte is read.

        Returns (reply, None) to answer without reading the body (the
        connection is then closed), or (None, user) to go on: an API request
        must authenticate first (401, or 429 while failed logins are
        throttled) and its body be at most MAX_BODY (413); the unauthenticated
        SSO and services endpoints take at most MAX_SSO_BODY.
        """
        path = urlsplit(target).path
        fmt = "json" if "json" in headers.get("accept", "") else "xml"
        if path.startswith("/ovirt-engine/sso/") or path.startswith("/ovirt-engine/services/"):
            if length > MAX_SSO_BODY:
                return self._fault(_too_large(MAX_SSO_BODY), fmt), None
            return None, None
        if API_PREFIX_RE.match(path) is None:
            return self._fault(ApiError(404, "Not Found", f"No resource at '{path}'"), fmt), None
        try:
            user = self._authenticate(headers, peer)
        except ApiError as e:
            return self._fault(e, fmt), None
        if length > MAX_BODY:
            return self._fault(_too_large(MAX_BODY), fmt), None
        return None, user

    def _authenticate(self, headers: dict[str, str], peer: str) -> str:
        """The user of a request's Authorization header; ApiError 401 or 429."""
        try:
            user = self.auth.check_header(headers.get("authorization"), peer)
        except root.Throttled as e:
            raise ApiError(429, "Too Many Requests",
                           f"Too many failed logins: try again in "
                           f"{math.ceil(e.retry_after)} s",
                           {"Retry-After": str(math.ceil(e.retry_after))}) from None
        if user is None:
            raise ApiError(401, "Unauthorized",
                           "Authentication required: use a bearer token from "
                           "/ovirt-engine/sso/oauth/token or Basic credentials",
                           {"WWW-Authenticate": 'Basic realm="RESTAPI"'})
        return user

    def handle(self, method: str, target: str, headers: dict[str, str],
               body: bytes, peer: str = "",
               user: str | None = None) -> tuple[int, dict[str, str], bytes]:
        """Answer one HTTP request: (status, headers, body).

        ``user``: who ``admit`` already authenticated (else checked here).
        """
        parts = urlsplit(target)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if path.startswith("/ovirt-engine/sso/") or path.startswith("/ovirt-engine/services/"):
            return self._sso(method, path, query, headers, body, peer)
        m = API_PREFIX_RE.match(path)
        if m is None:
            return self._fault(ApiError(404, "Not Found", f"No resource at '{path}'"), "xml")
        fmt = "json" if "json" in headers.get("accept", "") else "xml"
        req = Request(method=method, path=path[m.end():].rstrip("/"), prefix=m.group(0),
                      query=query, headers=headers, body=body, fmt=fmt, engine=self)
        token = None
        try:
            req.user = user or self._authenticate(headers, peer)
            token = jobs.CORRELATION_ID.set(correlation_id(req))
            handler, params = self.router.route(method, req.path)
            reply = handler(req, **params)
        except ApiError as e:
            return self._fault(e, fmt)
        except Exception:  # a bug: answer 500, keep serving (details in the log only)
            log.exception("%s %s failed", method, path)
            return self._fault(ApiError(500, "Operation Failed",
                                        "Internal error; the engine's log has the details"),
                               fmt)
        finally:
            if token is not None:
                jobs.CORRELATION_ID.reset(token)
        return self._reply(reply, fmt)

    def _reply(self, reply: Reply, fmt: str) -> tuple[int, dict[str, str], bytes]:
        headers = dict(reply.headers)
        if reply.raw is not None:
            headers["Content-Type"] = reply.content_type or "application/octet-stream"
            return reply.status, headers, reply.raw
        if reply.body is None:
            return reply.status, headers, b""
        headers["Content-Type"] = f"application/{fmt};charset=UTF-8"
        return reply.status, headers, codec.render(reply.tag, reply.body, fmt)

    def _fault(self, e: ApiError, fmt: str) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": f"application/{fmt};charset=UTF-8", **e.headers}
        # A detail may quote client input: escape what XML cannot carry.
        detail = escaped(e.detail)
        body = codec.render("fault", {"reason": e.reason, "detail": detail}, fmt)
        return e.status, headers, body

    def _sso(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
             body: bytes, peer: str = "") -> tuple[int, dict[str, str], bytes]:
        form = dict(query)
        if body:
            form.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if path == "/ovirt-engine/services/health":
            return 200, {"Content-Type": "text/plain"}, b"DB Up!Welcome to Health Status!"
        if path == "/ovirt-engine/services/pki-resource":
            if form.get("resource") in ("ca-certificate", "engine-certificate") and self.pki:
                which = self.pki.ca_file if form["resource"] == "ca-certificate" \
                    else self.pki.cert_file
                with open(which, "rb") as f:
                    return 200, {"Content-Type": "application/x-x509-ca-cert"}, f.read()
            return 404, {"Content-Type": "text/plain"}, b"Resource not found\n"
        if path == "/ovirt-engine/sso/oauth/token":
            status, doc = self.auth.token_request(form, peer)
            if status == 429:
                return status, {"Content-Type": "application/json",
                                "Retry-After": doc.pop("retry_after")}, json.dumps(doc).encode()
        elif path == "/ovirt-engine/sso/oauth/token-info":
            status, doc = self.auth.info(form.get("token", ""))
        elif path in ("/ovirt-engine/services/sso-logout", "/ovirt-engine/sso/oauth/revoke"):
            if form.get("token"):
                self.auth.revoke(form["token"])
            status, doc = 200, {}
        else:
            status, doc = 404, {"error_code": "not_found", "error": f"No SSO service at '{path}'"}
        return status, {"Content-Type": "application/json"}, json.dumps(doc).encode()


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "Request Entity Too Large",
                    f"The request body is larger than {limit} bytes")
