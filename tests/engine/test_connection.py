"""Connection: authentication, retries, fault mapping (fake engine in memory)."""

from __future__ import annotations

import logging
import socket

import pytest

from fake_engine import PASSWORD, USERNAME, FakeEngine, Response
from imagetool.engine import Connection, normalize_url
from imagetool.errors import (AuthError, Conflict, ConnectionFailed,
                              EngineError, NotFound, UsageError)


def connect(engine: FakeEngine, **kw) -> Connection:
    kw.setdefault("username", USERNAME)
    kw.setdefault("password", PASSWORD)
    return Connection("https://engine.example/ovirt-engine/api",
                      transport=engine.transport(), **kw)


def api_requests(engine: FakeEngine) -> list[dict]:
    return [r for r in engine.requests if r["path"].startswith("/ovirt-engine/api")]


@pytest.mark.parametrize("given,api,base", [
    ("https://e", "https://e/ovirt-engine/api", "https://e"),
    ("https://e/", "https://e/ovirt-engine/api", "https://e"),
    ("https://e:8443/ovirt-engine", "https://e:8443/ovirt-engine/api", "https://e:8443"),
    ("https://e/ovirt-engine/api/", "https://e/ovirt-engine/api", "https://e"),
    ("https://e/ovirt-engine/api/v4", "https://e/ovirt-engine/api/v4", "https://e"),
])
def test_normalize_url(given, api, base):
    assert normalize_url(given) == (api, base)


def test_normalize_url_rejects_garbage_as_usage():
    # A malformed URL is a usage error (exit 2), not a connection failure (3).
    with pytest.raises(UsageError, match="invalid engine URL") as e:
        normalize_url("engine.example")
    assert e.value.exit_code == 2


def test_token_login_headers_and_logout():
    engine = FakeEngine()
    with connect(engine) as conn:
        assert conn.engine_version == (4, 5) and not conn.legacy
        conn.disks.list()
    token_reqs = [r for r in engine.requests if r["path"].endswith("/sso/oauth/token")]
    assert len(token_reqs) == 1
    form = token_reqs[0]["body"].decode()
    assert "grant_type=password" in form and "scope=ovirt-app-api" in form
    for r in api_requests(engine):
        assert r["headers"]["authorization"] == "Bearer token-1"
        assert r["headers"]["version"] == "4"
        assert r["headers"]["accept"] == "application/xml"
    assert engine.logouts == ["token-1"]


def test_given_token_is_used_and_not_logged_out():
    engine = FakeEngine()
    engine.tokens.add("mine")
    with Connection("https://engine.example", token="mine",
                    transport=engine.transport()) as conn:
        conn.disks.list()
    assert engine.issued == 0 and engine.logouts == []
    assert api_requests(engine)[0]["headers"]["authorization"] == "Bearer mine"


def test_expired_token_refetched_once_and_request_retried():
    engine = FakeEngine()
    engine.add_disk("d1")
    with connect(engine) as conn:
        conn.disks.list()
        engine.expire_tokens()
        assert [d.name for d in conn.disks.list()] == ["d1"]
        assert engine.issued == 2
        last = api_requests(engine)[-1]
        assert last["headers"]["authorization"] == "Bearer token-2"


def test_401_twice_gives_auth_error_after_one_retry():
    engine = FakeEngine()
    with connect(engine) as conn:
        conn.test()
        deny = Response(401, b"<fault><reason>Unauthorized</reason><detail>no</detail></fault>")
        engine.faults[("GET", "/disks")] = [deny, deny, deny]
        with pytest.raises(AuthError) as e:
            conn.disks.list()
        assert e.value.exit_code == 3 and e.value.status == 401
        assert engine.issued == 2  # one refresh, not a loop
        assert len(engine.faults[("GET", "/disks")]) == 1


def test_expired_given_token_is_auth_error():
    engine = FakeEngine()
    with Connection("https://e", token="stale", transport=engine.transport()) as conn:
        with pytest.raises(AuthError, match="refused the credentials"):
            conn.disks.list()


def test_wrong_password_auth_error_exit_3_and_secret_not_shown(caplog):
    engine = FakeEngine()
    caplog.set_level(logging.DEBUG)
    with connect(engine, password="wrong-secret-xyz") as conn:
        with pytest.raises(AuthError) as e:
            conn.disks.list()
    assert e.value.exit_code == 3
    assert "Cannot authenticate user" in str(e.value)
    assert "wrong-secret-xyz" not in str(e.value)
    assert "wrong-secret-xyz" not in caplog.text
    assert not api_requests(engine)  # never sent an unauthenticated API call


def test_basic_auth_when_sso_missing():
    engine = FakeEngine(sso=False)
    engine.add_disk("d1")
    with connect(engine) as conn:
        assert [d.name for d in conn.disks.list()] == ["d1"]
    assert api_requests(engine)[0]["headers"]["authorization"].startswith("Basic ")
    assert engine.logouts == []


def test_basic_auth_wrong_password():
    engine = FakeEngine(sso=False)
    with connect(engine, password="nope") as conn:
        with pytest.raises(AuthError):
            conn.disks.list()


def test_missing_credentials():
    with pytest.raises(AuthError, match="credentials missing"):
        Connection("https://e", username="admin@internal")


def test_faults_mapped_with_reason_and_detail():
    engine = FakeEngine()
    disk_id = engine.add_disk("busy", status="locked")
    engine.disks[disk_id]["next_status"] = "locked"
    with connect(engine) as conn:
        with pytest.raises(NotFound) as e:
            conn.disks.get("00000000-0000-0000-0000-000000000000")
        assert e.value.status == 404 and e.value.reason == "Not Found"
        assert "Entity not found" in e.value.detail and e.value.exit_code == 1
        with pytest.raises(Conflict) as e:
            conn.disks.remove(disk_id)
        assert e.value.status == 409 and e.value.reason == "Operation Failed"
        assert "Related operation is currently in progress" in str(e.value)
        assert not str(e.value).rstrip().endswith("]")  # brackets stripped for people
        engine.faults[("GET", "/disks")] = [Response(400, (
            b"<fault><reason>Incomplete parameters</reason>"
            b"<detail>Disk [provisionedSize|size] required for add</detail></fault>"))]
        with pytest.raises(EngineError) as e:
            conn.disks.list()
        assert type(e.value) is EngineError and e.value.status == 400
        assert e.value.reason == "Incomplete parameters"
        assert "(400)" in str(e.value) and "required for add" in str(e.value)
        engine.faults[("GET", "/disks")] = [Response(403, (
            b"<fault><reason>Operation Failed</reason><detail>[User is not authorized]</detail></fault>"))]
        with pytest.raises(AuthError, match="not permitted"):
            conn.disks.list()


def test_non_xml_error_page_keeps_status():
    engine = FakeEngine()
    engine.faults[("GET", "/disks")] = [Response(502, b"<html><body>Bad Gateway", "text/html")]
    with connect(engine) as conn:
        with pytest.raises(EngineError) as e:
            conn.disks.list()
    assert e.value.status == 502 and "(502)" in str(e.value)


def test_json_responses_parse_like_xml():
    engine = FakeEngine()
    disk_id = engine.add_disk("j1", size=3 << 20)
    with connect(engine) as conn:
        as_xml = conn.disks.list()
    with connect(engine, headers={"Accept": "application/json"}) as conn:
        as_json = conn.disks.list()
        one = conn.disks.get(disk_id)
    assert api_requests(engine)[-1]["headers"]["accept"] == "application/json"
    assert as_json == as_xml
    assert one.provisioned_size == 3 << 20 and one.sparse is True
    assert one.storage_domain_ids == as_xml[0].storage_domain_ids


def test_connection_refused_is_connection_failed():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now.
    with Connection(f"http://127.0.0.1:{port}", username=USERNAME, password=PASSWORD,
                    connect_timeout=2) as conn:
        with pytest.raises(ConnectionFailed) as e:
            conn.test()
    assert e.value.exit_code == 3
    assert f"127.0.0.1:{port}" in str(e.value) and "--engine-url" in str(e.value)


def test_closed_connection_refuses_requests():
    engine = FakeEngine()
    conn = connect(engine)
    conn.close()
    conn.close()  # idempotent
    with pytest.raises(EngineError, match="closed"):
        conn.disks.list()


def test_unusable_cafile(tmp_path):
    with pytest.raises(ConnectionFailed, match="cannot use CA file"):
        Connection("https://e", username="u", password="p", cafile=str(tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConnectionFailed, match="cannot use CA file"):
        Connection("https://e", username="u", password="p", cafile=str(junk))


def test_a_ctrl_c_inside_a_request_gives_the_next_requests_a_new_pool():
    """A Ctrl-C may land inside httpx's pool while it holds a lock; the
    cleanup requests after it must not wait on that pool."""
    engine = FakeEngine()
    engine.add_disk("d1")
    real = engine.handle
    calls = []

    def interrupted_once(method, url, headers, body):
        calls.append(url)
        if len(calls) == 2:         # the first API request after the login
            raise KeyboardInterrupt
        return real(method, url, headers, body)

    engine.handle = interrupted_once
    with connect(engine) as conn:
        first = conn._client
        with pytest.raises(KeyboardInterrupt):
            conn.disks.list()
        assert conn._client is not first
        assert [d.name for d in conn.disks.list()] == ["d1"]


@pytest.mark.parametrize("snapshot_id", ["../../../disks/aaaa", ".", "a b", "x%2f..", "id?x=1"])
def test_an_id_that_is_not_plain_never_leaves(snapshot_id):
    # Ids read from a backup repository end up in request paths: one that
    # would address another resource is refused before anything is sent.
    engine = FakeEngine()
    with connect(engine) as conn:
        before = len(api_requests(engine))
        with pytest.raises(EngineError, match="refusing an API path with the segment"):
            conn.snapshots.get("3b1d2c8e-0000-4000-8000-000000000001", snapshot_id)
        assert len(api_requests(engine)) == before
