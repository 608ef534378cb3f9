"""``vms create``, ``vms remove`` and ``disks update`` against the local
engine (TLS, ``--engine-url``), and the REST they use: the engine's state
after each command is read back through the API, disk contents by
qemu-img against the source.
"""

from __future__ import annotations

import json
import os

import pytest

from helpers import ENGINE_PASSWORD, MiB, api_json, qemu_compare, qemu_img

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "samples", "data-holes.qcow2")

pytestmark = pytest.mark.slow


@pytest.fixture
def eargs(engine, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(ENGINE_PASSWORD)
    return ["--engine-url", engine.url, "--username", "admin@internal",
            "--password-file", str(pw), "--cafile", engine.cafile]


def _names(conn) -> tuple[set, set]:
    return {v.name for v in conn.vms.list()}, {d.name for d in conn.disks.list()}


def test_create_uploads_files_and_makes_empty_disks(cli, conn, eargs, tmp_path):
    code, out, err = cli("vms", "create", "cw1", "--disk", SAMPLE, "--disk", "4M",
                         "--memory", "2G", "--cpus", "2", "--sd", "data", "--json", *eargs)
    assert code == 0, err
    made = json.loads(out)
    assert made["name"] == "cw1" and made["memory"] == 2 << 30 and len(made["disks"]) == 2
    d1, d2 = (conn.disks.get(i) for i in made["disks"])
    assert (d1.name, d2.name) == ("cw1-disk1", "cw1-disk2")
    assert (d1.format, d1.backup, d2.format, d2.backup) == ("cow", "incremental",
                                                            "cow", "incremental")
    assert d2.provisioned_size == 4 * MiB
    tree = conn.tree("GET", f"vms/{made['id']}")
    assert tree["cpu"]["topology"]["sockets"] == "2"
    out_raw = tmp_path / "d1.raw"
    code, _, err = cli("download", "cw1-disk1", str(out_raw), *eargs)
    assert code == 0, err
    qemu_compare(SAMPLE, str(out_raw), "qcow2", "raw")


def test_create_with_backup_none_keeps_the_file_format(cli, conn, eargs, tmp_path):
    raw = tmp_path / "a.raw"
    qemu_img("convert", "-f", "qcow2", "-O", "raw", SAMPLE, str(raw))
    code, out, err = cli("vms", "create", "cw2", "--disk", str(raw), "--backup", "none",
                         "--sd", "data", *eargs)
    assert code == 0, err
    assert out == "created VM cw2 (%s) with 1 disk\n" % conn.vms.find("cw2").id
    d = conn.disks.find("cw2-disk1")
    assert (d.format, d.backup) == ("raw", "none")


def test_failed_create_leaves_nothing(cli, conn, eargs, tmp_path):
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\xff" * 1020)      # a corrupt qcow2 header
    before = _names(conn)
    code, out, err = cli("vms", "create", "cw3", "--disk", "4M", "--disk", str(bad),
                         "--sd", "data", *eargs)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "bad.qcow2" in err and "Traceback" not in err
    assert _names(conn) == before          # neither the VM nor its first disk


def test_create_refuses_a_missing_file_as_usage(cli, eargs):
    code, _, err = cli("vms", "create", "cw4", "--disk", "./missing.qcow2", "--sd", "data",
                       *eargs)
    assert code == 2 and "neither a size" in err


def test_remove_removes_disks_or_keeps_them(cli, conn, eargs):
    for name in ("rm1", "rm2"):
        assert cli("vms", "create", name, "--disk", "1M", "--sd", "data", *eargs)[0] == 0
    code, out, err = cli("vms", "remove", "rm1", *eargs)
    assert code == 0, err and "1 disk removed" in out
    code, out, err = cli("vms", "remove", "rm2", "--keep-disks", "--json", *eargs)
    assert code == 0, err
    assert json.loads(out)["disks_kept"] is True
    vms, disks = _names(conn)
    assert not {"rm1", "rm2"} & vms
    assert "rm1-disk1" not in disks and "rm2-disk1" in disks
    conn.disks.remove(conn.disks.find("rm2-disk1").id)      # detached: removable


def test_disks_update_attached_and_floating(cli, conn, eargs):
    assert cli("vms", "create", "up1", "--disk", "1M", "--backup", "none", "--sd", "data",
               *eargs)[0] == 0
    code, out, err = cli("disks", "update", "up1-disk1", "--size", "2M", "--name",
                         "up1-data", "--json", *eargs)
    assert code == 0, err
    d = json.loads(out)
    assert (d["name"], d["provisioned_size"], d["backup"]) == ("up1-data", 2 * MiB, "none")
    # A raw disk cannot have incremental backup: one line, exit 1, unchanged.
    code, _, err = cli("disks", "update", "up1-data", "--backup", "incremental", *eargs)
    assert code == 1 and "raw" in err and err.count("\n") == 1
    floating = conn.disks.add(name="up-floating", provisioned_size=MiB,
                              storage_domain="data", format="qcow2")
    from imagetool.engine.wait import wait_for_disk
    wait_for_disk(conn, floating.id, "ok", 30)
    code, out, err = cli("disks", "update", floating.id, "--backup", "incremental", *eargs)
    assert code == 0, err
    assert conn.disks.get(floating.id).backup == "incremental"
    code, _, err = cli("disks", "update", floating.id, *eargs)
    assert code == 2 and "nothing to change" in err


def test_incremental_after_update_is_incremental(cli, conn, eargs, tmp_path):
    """A disk switched to incremental: the next point full, the one after incremental."""
    assert cli("vms", "create", "inc1", "--disk", "1M", "--backup", "none", "--disk",
               SAMPLE, "--sd", "data", *eargs)[0] == 0
    d = conn.disks.find("inc1-disk2")
    assert d.backup == "none" and d.format == "cow"   # qcow2 from the file
    assert cli("disks", "update", d.id, "--backup", "incremental", *eargs)[0] == 0
    repo = tmp_path / "b"
    modes = []
    for _ in range(2):
        code, out, err = cli("backup", "create", str(repo), "inc1", "--json", *eargs)
        assert code == 0, err
        modes.append([p["mode"] for p in json.loads(out)])
    assert modes == [["full"], ["incremental"]]


def test_rest_disk_update_backup_and_vm_cpus_validated(engine):
    status, d = api_json(engine, "POST", "disks", {
        "name": "rest-raw", "provisioned_size": MiB, "format": "raw",
        "storage_domains": {"storage_domain": [{"name": "data"}]}})
    assert status == 201
    assert api_json(engine, "PUT", f"disks/{d['id']}", {"backup": "bogus"})[0] == 400
    status, fault = api_json(engine, "PUT", f"disks/{d['id']}", {"backup": "incremental"})
    assert status == 409 and "RAW" in json.dumps(fault)
    status, _ = api_json(engine, "POST", "vms", {
        "name": "rest-cpus", "cluster": {"name": "Default"},
        "cpu": {"topology": {"sockets": 0}}})
    assert status == 400
    status, vm = api_json(engine, "POST", "vms", {
        "name": "rest-cpus", "cluster": {"name": "Default"},
        "cpu": {"topology": {"sockets": 2, "cores": 2}}})
    topology = vm["cpu"]["topology"]
    assert status == 201 and (int(topology["sockets"]), int(topology["cores"])) == (2, 2)


def test_a_locked_disk_error_names_its_transfer(cli, conn, eargs):
    d = conn.disks.add(name="held.disk", provisioned_size=MiB, storage_domain="data",
                       format="qcow2")
    from imagetool.engine.wait import wait_for_disk
    wait_for_disk(conn, d.id, "ok", 30)
    t = conn.transfers.add(disk_id=d.id, direction="upload")
    code, _, err = cli("disks", "update", "held.disk", "--name", "other", *eargs)
    assert code == 1 and err.count("\n") == 1
    assert f"image transfer {t.id} (upload, " in err
    assert f"end it with 'imagetool transfers cancel {t.id}'" in err
    code, _, err = cli("disks", "remove", "--yes", d.id, *eargs)
    assert code == 1 and f"imagetool transfers cancel {t.id}" in err
    assert cli("transfers", "cancel", t.id, *eargs)[0] == 0


def test_a_ctrl_c_once_the_vm_is_complete_is_ignored(cli, conn, eargs, monkeypatch):
    """A real SIGINT once the VM is complete, as the command closes its
    connection before reporting (issue 20, item 2): exit 0, the VM reported
    and kept (before, 130 and a VM the command never reported)."""
    from helpers import sigint_after
    from imagetool.engine import Connection
    with monkeypatch.context() as m:
        sigint_after(m, Connection, "close")
        code, out, err = cli("vms", "create", "cc1", "--disk", "1M", "--sd", "data", *eargs)
    assert (code, err) == (0, "")
    vm = conn.vms.find("cc1")
    assert out == f"created VM cc1 ({vm.id}) with 1 disk\n"
    conn.vms.remove(vm.id)
