"""Engine-side faults: wrong credentials, a wrong CA, an expired token."""

from __future__ import annotations

import logging

import pytest

from fault_fixtures import (PASSWORD, MiB, cli, disks_named, faulty_engine,  # noqa: F401
                            faulty_engine_module, make_raw, same_image, start_faulty_engine,
                            stop_faulty_engine, wait_settled)
from fault_proxy import Delay, Rule


def test_wrong_credentials(faulty_engine, cli, monkeypatch):
    bad = "not-the-password-8815"
    monkeypatch.setenv("IMAGETOOL_PASSWORD", bad)
    code, out, err = cli("disks", "list")
    assert code == 3, err
    assert "engine login failed for admin@internal" in err
    assert "invalid user name or password" in err
    assert bad not in err + out and PASSWORD not in err + out


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
    image = make_raw(str(tmp_path / "a.raw"), 2 * MiB)
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


def test_expired_token_is_renewed(short_token_engine, cli, tmp_path, caplog):
    """The token expires during a slow upload; the following API calls
    (finalize, waits) log in again transparently."""
    fe = short_token_engine
    caplog.set_level(logging.DEBUG, logger="imagetool.engine.connection")
    image = make_raw(str(tmp_path / "slow.raw"), 4 * MiB, seed=3)
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
