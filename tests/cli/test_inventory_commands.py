"""``imagetool disks|sds|transfers``: output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fake_engine import PASSWORD, SD_ID, USERNAME, FakeEngine, FakeEngineServer
from imagetool.cli.main import main


@pytest.fixture
def fake(clean_env, monkeypatch):
    """A fake engine over HTTP, configured through the environment."""
    engine = FakeEngine()
    with FakeEngineServer(engine) as server:
        monkeypatch.setenv("IMAGETOOL_ENGINE_URL", server.url)
        monkeypatch.setenv("IMAGETOOL_USERNAME", USERNAME)
        monkeypatch.setenv("IMAGETOOL_PASSWORD", PASSWORD)
        engine.url = server.url
        yield engine


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_disks_list_json_and_table(fake, capsys):
    a = fake.add_disk("alpha", fmt="cow", size=3 << 30)
    b = fake.add_disk("beta", fmt="raw", size=1 << 20, status="locked")
    fake.disks[b]["next_status"] = "locked"
    code, out, err = run(capsys, "disks", "list", "--json")
    assert code == 0, err
    assert json.loads(out) == [
        {"id": a, "name": "alpha", "status": "ok", "format": "cow",
         "provisioned_size": 3 << 30, "actual_size": 4096},
        {"id": b, "name": "beta", "status": "locked", "format": "raw",
         "provisioned_size": 1 << 20, "actual_size": 4096},
    ]
    code, out, _ = run(capsys, "disks", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "STATUS", "FORMAT", "VIRTUAL", "ACTUAL"]
    assert a in lines[1] and "alpha" in lines[1] and "3.00 GiB" in lines[1]
    assert b in lines[2] and "locked" in lines[2]


@pytest.mark.slow
def test_alias_only_disk_listed_by_alias(fake, capsys):
    # 4.1-era engines may send only <alias>.
    old = fake.add_disk("x")
    fake.disks[old].update(name=None, alias="legacy-alias")
    code, out, _ = run(capsys, "disks", "list", "--json")
    assert code == 0 and json.loads(out)[0]["name"] == "legacy-alias"
    code, out, err = run(capsys, "disks", "show", old, "--json")
    assert code == 0 and json.loads(out)["alias"] == "legacy-alias"


@pytest.mark.slow
def test_disks_list_search_max(fake, capsys):
    for name in ("web1", "web2", "db1"):
        fake.add_disk(name)
    code, out, _ = run(capsys, "disks", "list", "--json", "--search", "name=web*")
    assert code == 0 and [d["name"] for d in json.loads(out)] == ["web1", "web2"]
    code, out, _ = run(capsys, "disks", "list", "--json", "--max", "1")
    assert code == 0 and len(json.loads(out)) == 1


@pytest.mark.slow
def test_disks_show(fake, capsys):
    a = fake.add_disk("alpha", size=5 << 20)
    code, out, _ = run(capsys, "disks", "show", "alpha", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["id"] == a and d["provisioned_size"] == 5 << 20
    assert d["storage_domain_ids"] == [SD_ID] and d["sparse"] is True
    code, out, _ = run(capsys, "disks", "show", a)
    assert code == 0 and "name" in out and "alpha" in out
    code, out, err = run(capsys, "disks", "show", "nosuch")
    assert code == 1 and out == ""
    assert "no disk with id or name 'nosuch'" in err


@pytest.mark.slow
def test_disks_remove(fake, capsys):
    a = fake.add_disk("gone")
    busy = fake.add_disk("busy", status="locked")
    fake.disks[busy]["next_status"] = "locked"
    # Not on a terminal and no --yes: refused as a usage error.
    code, _, err = run(capsys, "disks", "remove", "gone")
    assert code == 2 and "--yes" in err
    assert a in fake.disks
    code, out, err = run(capsys, "disks", "remove", "gone", "busy", "nosuch", "--yes", "--json")
    assert code == 1
    results = {r["disk"]: r for r in json.loads(out)}
    assert results["gone"]["removed"] is True and results["gone"]["id"] == a
    assert results["busy"]["removed"] is False and "conflict" in results["busy"]["error"]
    assert results["nosuch"]["removed"] is False and results["nosuch"]["id"] is None
    assert "2 of 3 disks not removed" in err
    assert a not in fake.disks and busy in fake.disks


@pytest.mark.slow
def test_sds_list(fake, capsys):
    code, out, _ = run(capsys, "sds", "list", "--json")
    assert code == 0
    assert json.loads(out) == [{
        "id": SD_ID, "name": "data", "type": "data", "status": "ok",
        "storage_type": "nfs", "available": 10 << 30, "used": 1 << 30,
        "committed": 2 << 30}]
    code, out, _ = run(capsys, "sds", "list")
    assert code == 0 and "data" in out and "10.00 GiB" in out


@pytest.mark.slow
def test_transfers_list_show_cancel(fake, capsys):
    disk = fake.add_disk("t")
    code, out, _ = run(capsys, "transfers", "list", "--json")
    assert code == 0 and json.loads(out) == []
    from imagetool.engine import Connection
    with Connection(fake.url, username=USERNAME,
                    password=PASSWORD) as conn:
        t = conn.transfers.add(disk_id=disk, direction="download", format="raw")
    code, out, _ = run(capsys, "transfers", "list", "--json")
    assert code == 0
    [listed] = json.loads(out)
    assert listed["id"] == t.id and listed["disk_id"] == disk
    assert listed["direction"] == "download" and "signed_ticket" not in listed
    code, out, _ = run(capsys, "transfers", "show", t.id, "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["id"] == t.id and shown["transfer_url"].endswith("/images/" + fake.transfers[t.id]["ticket"])
    code, out, _ = run(capsys, "transfers", "cancel", t.id, "--json")
    assert code == 0
    assert json.loads(out) == {"id": t.id, "cancelled": True, "phase": "cancelled_user"}
    assert any(r["path"].endswith(f"/imagetransfers/{t.id}/cancel") for r in fake.requests)
    code, _, err = run(capsys, "transfers", "show", "nope")
    assert code == 1 and "not found" in err


@pytest.mark.slow
def test_wrong_password_exit_3(fake, capsys, monkeypatch):
    monkeypatch.setenv("IMAGETOOL_PASSWORD", "wrong-pw-123")
    code, out, err = run(capsys, "disks", "list")
    assert code == 3 and out == ""
    assert "login failed" in err and "wrong-pw-123" not in err


def test_connection_refused_exit_3(clean_env, capsys):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(capsys, "sds", "list", "--engine-url", f"http://127.0.0.1:{port}",
                       "--username", USERNAME)
    # No password and not a terminal: a usage error before connecting.
    assert code == 2 and "no engine password" in err
    pw = clean_env / "pw"
    pw.write_text(PASSWORD)
    code, _, err = run(capsys, "sds", "list", "--engine-url", f"http://127.0.0.1:{port}",
                       "--username", USERNAME, "--password-file", str(pw))
    assert code == 3 and "cannot connect" in err


@pytest.mark.slow
def test_config_section_and_missing_section(clean_env, capsys):
    engine = FakeEngine()
    engine.add_disk("from-config")
    with FakeEngineServer(engine) as server:
        (clean_env / "xdg" / "imagetool.conf").write_text(
            f"[fake]\nengine_url = {server.url}\nusername = {USERNAME}\npassword = {PASSWORD}\n")
        code, out, _ = run(capsys, "disks", "list", "--json", "-c", "fake")
        assert code == 0 and [d["name"] for d in json.loads(out)] == ["from-config"]
        code, _, err = run(capsys, "disks", "list", "-c", "missing")
        assert code == 2 and "no section [missing]" in err


@pytest.mark.slow
def test_subprocess_json_and_exit_code(fake):
    fake.add_disk("sub")
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "imagetool", "disks", "list", "--json"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [d["name"] for d in json.loads(proc.stdout)] == ["sub"]
    env["IMAGETOOL_PASSWORD"] = "bad"
    proc = subprocess.run([sys.executable, "-m", "imagetool", "disks", "list", "--json"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and proc.stdout == ""


# --- the local engine (H4's), over TLS --------------------------------------

local = pytest.importorskip("imagetool.server.local")


@pytest.mark.slow
def test_remote_local_engine_tls_cafile_and_hint(clean_env, capsys, monkeypatch):
    with local.LocalEngine(str(clean_env / "remote")) as eng:
        pw = clean_env / "pw"
        pw.write_text(eng.password + "\n")
        base = ["sds", "list", "--json", "--engine-url", eng.url, "--username", eng.username,
                "--password-file", str(pw)]
        code, out, err = run(capsys, *base, "--cafile", eng.cafile)
        assert code == 0, err
        assert "data" in [sd["name"] for sd in json.loads(out)]
        code, out, err = run(capsys, *base)
        assert code == 3 and out == ""
        assert "certificate verify failed" in err and "--cafile" in err
        code, out, err = run(capsys, *base, "--insecure")
        assert code == 0, err
        monkeypatch.setenv("IMAGETOOL_CAFILE", eng.cafile)
        code, out, err = run(capsys, *base)
        assert code == 0, err


@pytest.mark.slow
def test_no_engine_configured_uses_in_process_local_engine(clean_env, capsys):
    code, out, err = run(capsys, "sds", "list", "--json")
    assert code == 0, err
    assert "data" in [sd["name"] for sd in json.loads(out)]
    code, out, err = run(capsys, "disks", "list", "--json")
    assert code == 0 and json.loads(out) == []
    assert (clean_env / "home").is_dir()  # the default data dir came from IMAGETOOL_HOME
    assert not (clean_env / "home" / "serve.json").exists()


@pytest.mark.slow
def test_running_serve_is_used(clean_env, capsys, monkeypatch):
    from imagetool.engine import Connection, wait_for_disk
    with local.LocalEngine(str(clean_env / "home")) as eng:
        local.write_lock_file(eng.server)
        try:
            with Connection(eng.url, username=eng.username, password=eng.password,
                            cafile=eng.cafile) as conn:
                disk = conn.disks.add(name="served", provisioned_size=1 << 20,
                                      storage_domain="data")
                wait_for_disk(conn, disk.id, timeout=20)

            def no_second_engine(*a, **kw):
                raise AssertionError("started an in-process engine despite imagetool serve")
            monkeypatch.setattr(local, "LocalEngine", no_second_engine)
            code, out, err = run(capsys, "disks", "list", "--json")
            assert code == 0, err
            assert [d["name"] for d in json.loads(out)] == ["served"]
        finally:
            local.remove_lock_file(eng.server)
