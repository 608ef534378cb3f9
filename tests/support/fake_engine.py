"""A scriptable fake engine for the engine client's tests.

Small on purpose: it answers the requests the client makes, in the engine's
wire shapes (XML written by hand here, not by the client's codec; JSON
with numbers and booleans as strings, like the engine), records every
request, and lets a test break things (expire tokens, drop the SSO
endpoint, script transfer phases, answer faults). It serves either as an
``httpx.MockTransport`` or over real HTTP on 127.0.0.1 (for CLI tests).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import httpx

USERNAME = "admin@internal"
PASSWORD = "s3cret-pass"
SD_ID = "11111111-1111-1111-1111-111111111111"


def _x(tag: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{tag}>{escape(str(value))}</{tag}>"


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/xml"


@dataclass
class FakeEngine:
    """State and behaviour; ``handle()`` is the whole server."""

    version: tuple[int, int] = (4, 5)
    sso: bool = True
    disks: dict[str, dict] = field(default_factory=dict)
    sds: dict[str, dict] = field(default_factory=lambda: {
        SD_ID: {"id": SD_ID, "name": "data", "type": "data", "available": 10 << 30,
                "used": 1 << 30, "committed": 2 << 30, "status": None,
                "external_status": "ok"}})
    transfers: dict[str, dict] = field(default_factory=dict)
    tokens: set = field(default_factory=set)
    issued: int = 0
    logouts: list = field(default_factory=list)
    requests: list = field(default_factory=list)
    # Scripted answers: (method, path suffix) -> list of Response, used once each.
    faults: dict = field(default_factory=dict)
    # Phases a transfer walks through on each GET after add / finalize.
    add_phases: list = field(default_factory=lambda: ["initializing", "transferring"])
    finalize_phases: list = field(default_factory=lambda: ["finalizing_success",
                                                           "finished_success"])
    delete_after_finalize: bool = False

    lock: threading.Lock = field(default_factory=threading.Lock)

    # --- helpers for tests --------------------------------------------------

    def add_disk(self, name: str, status: str = "ok", fmt: str = "cow",
                 size: int = 1 << 30, disk_id: str | None = None) -> str:
        disk_id = disk_id or str(uuid.uuid4())
        self.disks[disk_id] = {"id": disk_id, "name": name, "status": status,
                               "format": fmt, "provisioned_size": size,
                               "actual_size": 4096, "sparse": True,
                               "content_type": "data", "image_id": str(uuid.uuid4()),
                               "sd": SD_ID}
        return disk_id

    def expire_tokens(self) -> None:
        self.tokens.clear()

    # --- documents -------------------------------------------------------------

    def disk_xml(self, d: dict) -> str:
        return (f'<disk href="/ovirt-engine/api/disks/{d["id"]}" id="{d["id"]}">'
                f'<actions><link href="/ovirt-engine/api/disks/{d["id"]}/copy" rel="copy"/></actions>'
                + _x("name", d["name"]) + _x("alias", d.get("alias", d["name"]))
                + _x("actual_size", d["actual_size"]) + _x("content_type", d["content_type"])
                + _x("format", d["format"]) + _x("image_id", d["image_id"])
                + _x("provisioned_size", d["provisioned_size"]) + _x("sparse", d["sparse"])
                + _x("status", d["status"]) + _x("storage_type", "image")
                + f'<storage_domains><storage_domain href="/ovirt-engine/api/storagedomains/{d["sd"]}" id="{d["sd"]}"/></storage_domains>'
                + '</disk>')

    def disk_json(self, d: dict) -> dict:
        return {"href": f"/ovirt-engine/api/disks/{d['id']}", "id": d["id"],
                "name": d["name"], "alias": d["name"],
                "actual_size": str(d["actual_size"]), "format": d["format"],
                "provisioned_size": str(d["provisioned_size"]),
                "sparse": "true" if d["sparse"] else "false", "status": d["status"],
                "content_type": d["content_type"], "image_id": d["image_id"],
                "storage_type": "image",
                "storage_domains": {"storage_domain": [{"id": d["sd"]}]}}

    def sd_xml(self, s: dict) -> str:
        return (f'<storage_domain href="/ovirt-engine/api/storagedomains/{s["id"]}" id="{s["id"]}">'
                + _x("name", s["name"]) + _x("available", s["available"])
                + _x("committed", s["committed"]) + _x("external_status", s["external_status"])
                + _x("master", True) + _x("type", s["type"]) + _x("used", s["used"])
                + "<storage><type>nfs</type><address>10.0.0.1</address></storage>"
                + "</storage_domain>")

    def transfer_xml(self, t: dict) -> str:
        return (f'<image_transfer href="/ovirt-engine/api/imagetransfers/{t["id"]}" id="{t["id"]}">'
                + _x("active", False) + _x("direction", t["direction"])
                + _x("format", t.get("format"))
                + _x("inactivity_timeout", t.get("inactivity_timeout") or 60)
                + _x("phase", t["phase"]) + _x("proxy_url", "https://proxy:54323/images/" + t["ticket"])
                + _x("shallow", False) + _x("timeout_policy", "legacy")
                + _x("transfer_url", "https://host:54322/images/" + t["ticket"])
                + _x("transferred", 0)
                + (f'<disk href="/ovirt-engine/api/disks/{t["disk"]}" id="{t["disk"]}"/>' if t.get("disk") else "")
                + (f'<image id="{t["image"]}"/>' if t.get("image") else "")
                + '<host id="22222222-2222-2222-2222-222222222222"/>'
                + "</image_transfer>")

    # --- request handling ------------------------------------------------------

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> Response:
        parts = urlsplit(url)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            self.requests.append({"method": method, "path": path, "query": query,
                                  "headers": dict(headers), "body": body})
            for (m, suffix), queue in self.faults.items():
                if m == method and path.endswith(suffix) and queue:
                    return queue.pop(0)
            return self._route(method, path, query, headers, body)

    def _fault(self, status: int, reason: str, detail: str) -> Response:
        return Response(status, (f"<fault><reason>{escape(reason)}</reason>"
                                 f"<detail>{escape(detail)}</detail></fault>").encode())

    def _route(self, method: str, path: str, query: dict, headers: dict, body: bytes) -> Response:
        if path == "/ovirt-engine/sso/oauth/token":
            if not self.sso:
                return Response(404, b"<html>Not Found</html>", "text/html")
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            if form.get("username") != USERNAME or form.get("password") != PASSWORD:
                return Response(400, json.dumps({
                    "error_code": "access_denied",
                    "error": "Cannot authenticate user 'admin@internal': wrong credentials."}).encode(),
                    "application/json")
            self.issued += 1
            token = f"token-{self.issued}"
            self.tokens.add(token)
            return Response(200, json.dumps({"access_token": token, "token_type": "bearer",
                                             "scope": "ovirt-app-api", "exp": "9999999999"}).encode(),
                            "application/json")
        if path == "/ovirt-engine/services/sso-logout":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            self.logouts.append(form.get("token"))
            self.tokens.discard(form.get("token"))
            return Response(200, b"{}", "application/json")
        if not path.startswith("/ovirt-engine/api"):
            return Response(404, b"", "text/plain")

        auth = headers.get("authorization", "")
        if auth.startswith("Bearer "):
            ok = auth[7:] in self.tokens
        elif auth.startswith("Basic "):
            import base64
            ok = base64.b64decode(auth[6:]).decode() == f"{USERNAME}:{PASSWORD}"
        else:
            ok = False
        if not ok:
            return self._fault(401, "Unauthorized", "Authentication required")

        rel = path[len("/ovirt-engine/api"):].strip("/")
        parts = rel.split("/") if rel else []
        want_json = "json" in headers.get("accept", "")
        if not parts:
            major, minor = self.version
            return Response(200, (
                "<api><link href=\"/ovirt-engine/api/disks\" rel=\"disks\"/>"
                "<product_info><name>oVirt Engine</name><vendor>ovirt.org</vendor>"
                f"<version><build>0</build><full_version>{major}.{minor}.0-1.el8</full_version>"
                f"<major>{major}</major><minor>{minor}</minor><revision>0</revision></version>"
                "</product_info></api>").encode())
        kind = parts[0]
        if kind == "disks":
            return self._disks(method, parts[1:], query, body, want_json)
        if kind == "storagedomains" and method == "GET" and len(parts) == 1:
            sds = list(self.sds.values())
            if "search" in query:
                name = query["search"].removeprefix("name=").strip('"')
                sds = [s for s in sds if s["name"] == name]
            return Response(200, ("<storage_domains>" + "".join(self.sd_xml(s) for s in sds)
                                  + "</storage_domains>").encode())
        if kind == "storagedomains" and method == "GET" and len(parts) == 2:
            s = self.sds.get(parts[1])
            if s is None:
                return self._fault(404, "Not Found", "Entity not found: " + parts[1])
            return Response(200, self.sd_xml(s).encode())
        if kind == "imagetransfers":
            return self._transfers(method, parts[1:], body)
        return self._fault(404, "Not Found", "no such collection")

    def _disks(self, method: str, rest: list, query: dict, body: bytes, want_json: bool) -> Response:
        if not rest and method == "GET":
            disks = list(self.disks.values())
            if "search" in query:
                # Like the engine, "name=x*" is a pattern: match by prefix.
                pat = query["search"].removeprefix("name=").strip('"').rstrip("*")
                disks = [d for d in disks if d["name"].startswith(pat)]
            if "max" in query:
                disks = disks[:int(query["max"])]
            if want_json:
                doc = {"disk": [self.disk_json(d) for d in disks]} if disks else {}
                return Response(200, json.dumps(doc).encode(), "application/json")
            return Response(200, ("<disks>" + "".join(self.disk_xml(d) for d in disks)
                                  + "</disks>").encode())
        if not rest and method == "POST":
            import xml.etree.ElementTree as ET
            root = ET.fromstring(body)
            disk_id = self.add_disk(root.findtext("name"), status="locked",
                                    fmt=root.findtext("format"),
                                    size=int(root.findtext("provisioned_size")),
                                    disk_id=root.get("id"))
            self.disks[disk_id]["sd"] = root.find("storage_domains/storage_domain").get("id")
            return Response(201, self.disk_xml(self.disks[disk_id]).encode())
        d = self.disks.get(rest[0])
        if d is None:
            return self._fault(404, "Not Found", "Entity not found: " + rest[0])
        if len(rest) == 1 and method == "GET":
            if want_json:
                return Response(200, json.dumps(self.disk_json(d)).encode(), "application/json")
            out = self.disk_xml(d).encode()
            if d["status"] == "locked":
                d["status"] = d.get("next_status", "ok")  # ready on the next look
            return Response(200, out)
        if len(rest) == 1 and method == "DELETE":
            if d["status"] == "locked":
                return self._fault(409, "Operation Failed",
                                   "[Cannot remove Virtual Disk. Related operation is currently in progress. Please try again later.]")
            del self.disks[rest[0]]
            return Response(200, b"")
        return self._fault(404, "Not Found", "no such sub-resource")

    def _transfers(self, method: str, rest: list, body: bytes) -> Response:
        if not rest and method == "GET":
            return Response(200, ("<image_transfers>" + "".join(
                self.transfer_xml(t) for t in self.transfers.values()) + "</image_transfers>").encode())
        if not rest and method == "POST":
            import xml.etree.ElementTree as ET
            root = ET.fromstring(body)
            disk = root.find("disk")
            image = root.find("image")
            tid = str(uuid.uuid4())
            t = {"id": tid, "direction": root.findtext("direction"),
                 "format": root.findtext("format"),
                 "inactivity_timeout": root.findtext("inactivity_timeout"),
                 "disk": disk.get("id") if disk is not None else None,
                 "image": image.get("id") if image is not None else None,
                 "ticket": str(uuid.uuid4()), "phases": list(self.add_phases),
                 "phase": "initializing"}
            self.transfers[tid] = t
            return Response(201, self.transfer_xml(t).encode())
        t = self.transfers.get(rest[0])
        if t is None:
            return self._fault(404, "Not Found", "Entity not found: " + rest[0])
        if len(rest) == 1 and method == "GET":
            if t["phases"]:
                t["phase"] = t["phases"].pop(0)
            if t["phase"] == "finished_success" and self.delete_after_finalize:
                del self.transfers[rest[0]]
                return self._fault(404, "Not Found", "Entity not found: " + rest[0])
            return Response(200, self.transfer_xml(t).encode())
        if len(rest) == 2 and method == "POST":
            action = rest[1]
            if action == "finalize":
                t["phases"] = list(self.finalize_phases)
            elif action == "cancel":
                t["phases"] = ["cancelled_user", "finalizing_cleanup", "finished_cleanup",
                               "finished_failure"]
            elif action not in ("extend", "pause", "resume"):
                return self._fault(404, "Not Found", "no such action")
            return Response(200, b"<action><status>complete</status></action>")
        return self._fault(404, "Not Found", "no such sub-resource")

    # --- transports ------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            r = self.handle(request.method, str(request.url),
                            {k.lower(): v for k, v in request.headers.items()},
                            request.read())
            return httpx.Response(r.status, content=r.body,
                                  headers={"content-type": r.content_type})
        return httpx.MockTransport(handler)


class FakeEngineServer:
    """Serve a FakeEngine over plain HTTP on 127.0.0.1 (ephemeral port)."""

    def __init__(self, engine: FakeEngine) -> None:
        fake = engine

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                r = fake.handle(self.command, self.path,
                                {k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(r.status)
                self.send_header("content-type", r.content_type)
                self.send_header("content-length", str(len(r.body)))
                self.end_headers()
                self.wfile.write(r.body)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.engine = engine
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ovirt-engine/api"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeEngineServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
