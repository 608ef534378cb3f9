"""Engine-side faults: wrong credentials, a wrong CA, an expired token."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from urllib.parse import urlsplit

import pytest

from fault_proxy import Delay, Rule
from helpers import (FAULT_PASSWORD, MiB, cli_process, disks_named, make_random_raw,
                     new_phases, same_image, start_faulty_engine, stop_faulty_engine,
                     wait_settled)


def test_wrong_credentials(faulty_engine, cli, monkeypatch):
    bad = "not-the-password-8815"
    monkeypatch.setenv("IMAGETOOL_PASSWORD", bad)
    code, out, err = cli("disks", "list")
    assert code == 3, err
    assert "engine login failed for admin@internal" in err
    assert "invalid user name or password" in err
    assert bad not in err + out and FAULT_PASSWORD not in err + out


def test_wrong_ca(faulty_engine, cli, tmp_path, monkeypatch):
    # Another engine's CA: valid PEM, but it did not sign this engine's certificate.
    from imagetool.server.tls import ensure_pki
    other = ensure_pki(str(tmp_path / "other"), ["127.0.0.1"])
    monkeypatch.setenv("IMAGETOOL_CAFILE", other.ca_file)
    code, out, err = cli("disks", "list")
    assert code == 3, err
    assert "certificate verify failed" in err
    assert "pass --cafile with the engine CA" in err
    assert faulty_engine.engine.url.split("/ovirt-engine")[0] in err


def test_wrong_ca_before_upload_leaves_nothing(faulty_engine, cli, tmp_path, monkeypatch):
    from imagetool.server.tls import ensure_pki
    other = ensure_pki(str(tmp_path / "other"), ["127.0.0.1"])
    monkeypatch.setenv("IMAGETOOL_CAFILE", other.ca_file)
    image = make_random_raw(str(tmp_path / "a.raw"), 2 * MiB)
    code, out, err = cli("upload", image, "--sd", "data", "--name", "wrong-ca")
    assert code == 3, err
    assert "--cafile" in err
    monkeypatch.undo()
    assert disks_named(faulty_engine, "wrong-ca") == []


@pytest.fixture
def short_token_engine(tmp_path, monkeypatch):
    """An engine whose SSO tokens live one second."""
    fe = start_faulty_engine(str(tmp_path / "engine"), token_lifetime=1.0)
    for k, v in fe.env.items():
        monkeypatch.setenv(k, v)
    try:
        yield fe
    finally:
        stop_faulty_engine(fe)


@pytest.mark.slow
def test_expired_token_is_renewed(short_token_engine, cli, tmp_path, caplog):
    """The token expires during a slow upload; the following API calls
    (finalize, waits) log in again transparently."""
    fe = short_token_engine
    caplog.set_level(logging.DEBUG, logger="imagetool.engine.connection")
    image = make_random_raw(str(tmp_path / "slow.raw"), 4 * MiB, seed=3)
    # Four 1 MiB PUTs held 0.6 s each on one connection: > 2 s of data plane.
    fe.proxy.add_rule(Rule(method="PUT", path_re=r"^/images/", every=True,
                           action=Delay(0.6)))
    code, out, err = cli("upload", image, "--sd", "data", "--name", "slow",
                         "--buffer-size", "1M", "--workers", "1")
    assert code == 0, err
    assert len(fe.proxy.stats.faults) >= 4
    # The token did expire, and the 401 was answered by logging in again.
    assert "fetched a new token" in caplog.text
    fe.proxy.clear_rules()
    disk = disks_named(fe, "slow")
    assert [d.status for d in disk] == ["ok"]
    out_path = str(tmp_path / "back.raw")
    code, _, err = cli("download", "slow", out_path)
    assert code == 0, err
    assert same_image(image, out_path)
    wait_settled(fe)


# --- engine restart mid-upload, without --resume --------------------------------

@pytest.fixture
def own_engine(tmp_path):
    """A FaultyEngine of this test only (it is restarted)."""
    fe = start_faulty_engine(str(tmp_path / "engine"))
    try:
        yield fe
    finally:
        stop_faulty_engine(fe)


@pytest.mark.slow
def test_engine_restart_mid_upload_without_resume(own_engine, tmp_path):
    """The engine (API and data plane) goes away at 50% of an upload and comes
    back 1 s later on the same ports. The client's retries reach the new
    engine, which no longer has the ticket: without --resume the upload stops
    with the 403, exit 1, and its new disk is removed (nothing locked)."""
    from imagetool.server.local import LocalEngine
    fe = own_engine
    image = make_random_raw(str(tmp_path / "big.raw"), 32 * MiB, seed=21)
    fe.proxy.add_rule(Rule(method="PUT", path_re=r"^/images/", every=True,
                           action=Delay(0.035)))
    api_port, dp_port = fe.engine.server.port, fe.engine.server.dataplane_port
    proc = cli_process(fe.env, "upload", image, "--sd", "data", "--name", "restarted",
                       "--buffer-size", "1M", "--workers", "1")
    deadline = time.monotonic() + 60
    while fe.proxy.stats.body_bytes_up < 16 * MiB:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    fe.proxy.set_down(True)
    fe.engine.stop()
    time.sleep(1.0)
    fe.engine = LocalEngine(fe.engine.data_dir, password=FAULT_PASSWORD, port=api_port,
                            imageio_port=dp_port, finished_ttl=120.0).start()
    fe.engine.server.advertised_dataplane_url = fe.proxy.url_for()
    fe.proxy.set_down(False)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err
    assert "writing destination failed at offset" in err
    assert "403 Forbidden" in err and "No such ticket" in err
    ts = wait_settled(fe)
    assert [t.phase for t in ts] == ["finished_failure"]
    assert disks_named(fe, "restarted") == []


# --- a cancel racing a running PUT (server side) --------------------------------

def _open_fds_to(fragment: str) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if fragment in target:
            out.append(target)
    return out


def _request_running(fe, transfer_id: str) -> bool:
    """A data-plane request is using the transfer's backend now."""
    return any(tk.transfer_id == transfer_id and tk._busy and tk._backend is not None
               for tk in fe.engine.server.registry.all())


@pytest.mark.slow
def test_cancel_during_a_put_does_not_pull_the_backend_away(faulty_engine, caplog):
    """The transfer is cancelled while a PUT body is half sent. The data
    plane must not close the volume under the running request (its late
    writes would go to whatever file reuses the descriptor number): the
    request ends normally, then the volume is closed."""
    from imagetool.engine.wait import wait_for_disk, wait_for_transfer_phase
    fe = faulty_engine
    length = 1_000_001                     # unaligned: the tail goes through the backend
    with fe.connect() as conn:
        disk = conn.disks.add(name="racing", provisioned_size=4 * MiB,
                              storage_domain="data", format="raw")
        wait_for_disk(conn, disk.id, "ok")
        t = conn.transfers.add(disk_id=disk.id, direction="upload")
        t = wait_for_transfer_phase(conn, t.id, "transferring", disk_id=disk.id)
        path = urlsplit(t.transfer_url).path
        ctx = ssl.create_default_context(cafile=fe.engine.cafile)
        sock = ctx.wrap_socket(socket.create_connection(
            ("127.0.0.1", fe.engine.server.dataplane_port)), server_hostname="127.0.0.1")
        try:
            sock.sendall((f"PUT {path}?flush=y HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          f"Content-Length: {length}\r\n"
                          f"Content-Range: bytes 0-{length - 1}/*\r\n\r\n").encode())
            sock.sendall(b"x" * (length // 2))
            # The handler holds the volume: any fd to it is not enough (a
            # REST thread may read the file for a moment).
            deadline = time.monotonic() + 10
            while not (_request_running(fe, t.id) and _open_fds_to(disk.id)):
                assert time.monotonic() < deadline
                time.sleep(0.01)
            conn.transfers.cancel(t.id)
            wait_settled(fe)
            assert _open_fds_to(disk.id), "volume closed under a running request"
            sock.sendall(b"x" * (length - length // 2))
            sock.settimeout(10)
            reply = sock.recv(4096).decode("latin-1")
        finally:
            sock.close()
    assert reply.startswith("HTTP/1.1 200"), reply
    deadline = time.monotonic() + 10
    while _open_fds_to(disk.id):                      # closed once the request ended
        assert time.monotonic() < deadline, _open_fds_to(disk.id)
        time.sleep(0.01)
    assert "Bad file descriptor" not in caplog.text
    assert disks_named(fe, "racing") == []


@pytest.mark.slow
def test_data_plane_certificate_from_another_ca(faulty_engine, cli, tmp_path):
    """The engine is trusted but the data plane's certificate was signed by
    another CA: exit 3 with the --cafile hint, at once (not retried), and the
    new disk is removed."""
    from fault_proxy import FaultProxy, ProxyTls
    from imagetool.server.tls import ensure_pki
    fe = faulty_engine
    other = ensure_pki(str(tmp_path / "other"), ["127.0.0.1"])
    image = make_random_raw(str(tmp_path / "a.raw"), 2 * MiB)
    with FaultProxy(("127.0.0.1", fe.engine.server.dataplane_port),
                    ProxyTls(cert_file=other.cert_file, key_file=other.key_file,
                             upstream_cafile=fe.engine.cafile)) as foreign:
        fe.engine.server.advertised_dataplane_url = foreign.url_for()
        try:
            code, out, err = cli("upload", image, "--sd", "data", "--name", "foreign-ca")
        finally:
            fe.engine.server.advertised_dataplane_url = fe.proxy.url_for()
        attempts = foreign.stats.connections
    assert code == 3, err
    assert "cannot connect to imageio at 127.0.0.1" in err
    assert "certificate verify failed" in err
    assert "pass --cafile with the CA that signed the imageio server's certificate" in err
    # transfer_url, then proxy_url (the same here): a TLS refusal is not retried.
    assert attempts == 2
    assert new_phases(fe) == ["finished_failure"]
    assert disks_named(fe, "foreign-ca") == []
