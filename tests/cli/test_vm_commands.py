"""``imagetool vms``, ``snapshots``, ``disks layers|copy|move|sparsify`` and
``download --chain``, on the local engine: in-process (no engine
configured) and over TLS (``--engine-url`` and ``--cafile``).

The state a command leaves is checked through the library, and chains by
qemu-img against a full download of the same point.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from imagetool.cli.main import main
from imagetool.engine import Connection
from imagetool.server.local import LocalEngine
from helpers import MiB, qemu_img

# Every test here starts engines or CLI processes: out of the quick loop.
pytestmark = pytest.mark.slow

SIZE = 1 * MiB


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _seed(eng, tmp_path) -> None:
    """VM ``web`` with disk ``web-disk`` (0x11), snapshot ``s1``, then 0x22 on top."""
    from imagetool import snapshots
    from imagetool.imageio.client import ImageioClient
    from imagetool.transfer.session import TransferSession
    from imagetool.transfer.upload import upload_disk

    src = str(tmp_path / "seed.raw")
    with open(src, "wb") as f:
        f.write(b"\x11" * SIZE)
    with Connection(eng.url, username=eng.username, password=eng.password,
                    cafile=eng.cafile) as conn:
        disk = upload_disk(conn, src, "data", name="web-disk", disk_format="qcow2")
        vm = conn.vms.add(name="web")
        conn.vms.attach_disk(vm.id, disk.id, bootable=True)
        snapshots.create_snapshot(conn, vm.id, "s1")
        with TransferSession(conn, disk_id=disk.id, direction="upload") as s:
            with ImageioClient(s.url, cafile=eng.cafile) as c:
                c.write(64 * 1024, b"\x22" * (128 * 1024))
                c.flush()


@pytest.fixture(params=["in-process", "tls"])
def cli(request, clean_env, capsys):
    """(run, engine connection factory) for one way of reaching the engine."""
    home = clean_env / "home"
    if request.param == "in-process":
        with LocalEngine(str(home)) as eng:
            _seed(eng, clean_env)
        args: list[str] = []

        def connect():
            from imagetool.cli.config import EngineOptions, open_connection
            return open_connection(EngineOptions())
        yield (lambda *a: run(capsys, *a, *args)), connect
        return
    with LocalEngine(str(clean_env / "remote")) as eng:
        _seed(eng, clean_env)
        pw = clean_env / "pw"
        pw.write_text(eng.password + "\n")
        args = ["--engine-url", eng.url, "--username", eng.username,
                "--password-file", str(pw), "--cafile", eng.cafile]

        def connect():
            return Connection(eng.url, username=eng.username, password=eng.password,
                              cafile=eng.cafile)
        yield (lambda *a: run(capsys, *a, *args)), connect


def _snaps(connect, vm="web"):
    from imagetool import snapshots
    with connect() as conn:
        return [(s.description, s.snapshot_type) for s in snapshots.list_snapshots(conn, vm)]


# --- vms ---------------------------------------------------------------------------

def test_vms_list_show_ovf(cli, tmp_path):
    run_, connect = cli
    code, out, err = run_("vms", "list", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [v["name"] for v in listed] == ["web"]
    vm_id = listed[0]["id"]
    code, out, err = run_("vms", "list")
    assert code == 0 and out.splitlines()[0].split() == ["ID", "NAME", "STATUS", "DESCRIPTION"]
    assert vm_id in out
    code, out, err = run_("vms", "show", "web", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["id"] == vm_id and len(shown["disks"]) == 1 and len(shown["snapshots"]) == 2
    code, out, err = run_("vms", "ovf", vm_id)
    assert code == 0, err
    assert "Envelope" in out and "web" in out and shown["disks"][0] in out
    dest = tmp_path / "web.ovf"
    code, out2, err = run_("vms", "ovf", "web", "-o", str(dest), "--json")
    assert code == 0, err
    assert json.loads(out2) == {"id": vm_id, "name": "web", "path": str(dest)}
    assert dest.read_text() == out.rstrip("\n") or dest.read_text() == out
    code, _, err = run_("vms", "ovf", "web", "-o", str(dest))
    assert code == 1 and err == f"imagetool: error: {dest}: file exists (use --force to overwrite)\n"


def test_unknown_vm_one_line_exit_1(cli):
    run_, connect = cli
    for args in (["vms", "show", "nope"], ["vms", "ovf", "nope"],
                 ["snapshots", "list", "nope"], ["snapshots", "create", "nope"]):
        code, out, err = run_(*args)
        assert (code, out) == (1, ""), args
        assert err == "imagetool: error: no vm with id or name 'nope'\n", args


# --- snapshots -----------------------------------------------------------------------------

def test_snapshots_create_list_remove(cli):
    run_, connect = cli
    code, out, err = run_("snapshots", "create", "web", "--description", "nightly", "--json")
    assert code == 0, err
    snap = json.loads(out)
    assert snap["description"] == "nightly" and snap["status"] == "ok"
    assert [d["name"] for d in snap["disks"]] == ["web-disk"]
    assert snap["disks"][0]["image_id"]
    code, out, err = run_("snapshots", "list", "web", "--json")
    assert code == 0, err
    assert [s["description"] for s in json.loads(out)] == ["Active VM", "s1", "nightly"]
    code, out, err = run_("snapshots", "remove", "web", "nightly")
    assert code == 0, err
    assert out == f"removed snapshot 'nightly' ({snap['id']}) of VM web\n"
    assert _snaps(connect) == [("Active VM", "active"), ("s1", "regular")]


def test_snapshots_create_of_one_disk(cli):
    run_, connect = cli
    code, out, err = run_("snapshots", "create", "web", "--disk", "web-disk", "--json")
    assert code == 0, err
    snap = json.loads(out)
    assert snap["description"].startswith("imagetool ")
    assert [d["name"] for d in snap["disks"]] == ["web-disk"]
    # The text line counts its disks as every other output does (issue 20, 9).
    code, out, err = run_("snapshots", "create", "web", "--description", "one")
    assert code == 0, err
    assert re.fullmatch(r"created snapshot 'one' \(\S+\) of 1 disk\n", out), out
    run_("snapshots", "remove", "web", "one")
    code, out, err = run_("snapshots", "create", "web", "--disk", "no-disk")
    assert (code, out) == (1, "")
    assert err == "imagetool: error: no disk with id or name 'no-disk'\n"


def test_snapshot_bad_input(cli):
    run_, connect = cli
    before = _snaps(connect)
    code, out, err = run_("snapshots", "remove", "web", "never")
    assert (code, out) == (1, "")
    assert err == ("imagetool: error: VM web has no snapshot with id or description "
                   "'never'\n")
    code, out, err = run_("snapshots", "remove", "web", "Active VM")
    assert (code, out) == (1, "")
    assert err == ("imagetool: error: cannot remove the active snapshot of VM web "
                   "(it is the VM's current state)\n")
    code, out, err = run_("snapshots", "commit", "web")
    assert (code, out) == (1, "")
    assert err == "imagetool: error: VM web previews no snapshot: nothing to commit\n"
    code, out, err = run_("snapshots", "restore", "web")
    assert code == 2 and "Missing argument 'SNAPSHOT'" in err
    assert _snaps(connect) == before


def test_snapshot_of_a_locked_disk_leaves_nothing(cli):
    from imagetool.transfer.session import TransferSession
    run_, connect = cli
    with connect() as conn:
        disk = conn.disks.find("web-disk")
        with TransferSession(conn, disk_id=disk.id, direction="download") as session:
            code, out, err = run_("snapshots", "create", "web", "--description", "x")
            tid = session.transfer_id
        assert (code, out) == (1, "")
        # The error names the transfer holding the disk and how to end it.
        assert err == ("imagetool: error: cannot take a snapshot of VM web: its disk "
                       f"web-disk is locked; image transfer {tid} (download, transferring) "
                       f"holds disk {disk.id}: end it with 'imagetool transfers cancel "
                       f"{tid}'\n")
        assert conn.disks.get(disk.id).status == "ok"
    assert _snaps(connect) == [("Active VM", "active"), ("s1", "regular")]


def test_snapshots_restore(cli, tmp_path):
    run_, connect = cli
    code, out, err = run_("snapshots", "restore", "web", "s1", "--json")
    assert code == 0, err
    assert json.loads(out)["action"] == "restored"
    dest = tmp_path / "after.raw"
    code, out, err = run_("download", "web-disk", str(dest))
    assert code == 0, err
    assert dest.read_bytes() == b"\x11" * SIZE


def test_snapshots_preview_undo(cli):
    run_, connect = cli
    code, out, err = run_("snapshots", "preview", "web", "s1")
    assert code == 0, err
    code, out, err = run_("snapshots", "undo", "web", "s1", "--json")
    assert code == 0, err
    assert json.loads(out)["action"] == "undid"


# --- disks ----------------------------------------------------------------------------------

def test_disks_layers(cli):
    run_, connect = cli
    code, out, err = run_("disks", "layers", "web-disk", "--json")
    assert code == 0, err
    layers = json.loads(out)
    assert len(layers) == 2
    assert layers[0]["parent"] is None and layers[1]["parent"] == layers[0]["id"]
    assert [x["format"] for x in layers] == ["cow", "cow"]
    assert layers[0]["date"] is not None and layers[0]["actual_size"] > 0
    with connect() as conn:
        assert layers[1]["id"] == conn.disks.find("web-disk").image_id
    code, out, err = run_("disks", "layers", "web-disk")
    assert code == 0 and out.splitlines()[0].split() == \
        ["ID", "PARENT", "FORMAT", "ACTUAL", "DATE"]
    code, out, err = run_("disks", "layers", "nope")
    assert (code, err) == (1, "imagetool: error: no disk with id or name 'nope'\n")


def test_disks_copy(cli, tmp_path):
    run_, connect = cli
    code, out, err = run_("disks", "copy", "web-disk", "--sd", "data", "--name", "web-copy",
                          "--json")
    assert code == 0, err
    copy = json.loads(out)
    assert copy["name"] == "web-copy" and copy["status"] == "ok"
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    assert run_("download", "web-disk", str(a))[0] == 0
    assert run_("download", "web-copy", str(b))[0] == 0
    assert a.read_bytes() == b.read_bytes()
    code, out, err = run_("disks", "move", "web-disk", "--sd", "data")
    assert (code, out) == (1, "")
    assert err == "imagetool: error: disk web-disk is already on storage domain data\n"
    code, out, err = run_("disks", "copy", "web-disk", "--sd", "nowhere")
    assert (code, err) == (1, "imagetool: error: no storage domain with id or name "
                              "'nowhere'\n")


def test_disks_sparsify(cli):
    run_, connect = cli
    code, out, err = run_("disks", "sparsify", "web-disk", "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "ok"


# --- download --chain -------------------------------------------------------------------------

def test_download_chain_json_and_qemu(cli, tmp_path):
    run_, connect = cli
    out_dir = tmp_path / "chain"
    code, out, err = run_("download", "web-disk", str(out_dir), "--chain", "--json")
    assert code == 0, err
    doc = json.loads(out)
    with connect() as conn:
        disk = conn.disks.find("web-disk")
    assert doc["disk_id"] == disk.id and len(doc["layers"]) == 2
    base, top = doc["layers"]
    assert base["backing"] is None and top["backing"] == os.path.basename(base["path"])
    assert doc["top"] == top["path"] and top["id"] == disk.image_id
    chain = json.loads(qemu_img("info", "--backing-chain", "--output=json", doc["top"]))
    assert [c["filename"] for c in chain] == [top["path"], base["path"]]
    for layer in doc["layers"]:
        qemu_img("check", layer["path"])
    full = tmp_path / "full.raw"
    assert run_("download", "web-disk", str(full))[0] == 0
    res = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", doc["top"],
                          str(full)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    expected = bytearray(b"\x11" * SIZE)
    expected[64 * 1024:192 * 1024] = b"\x22" * (128 * 1024)
    assert full.read_bytes() == bytes(expected)


def test_download_chain_up_to_a_snapshot(cli, tmp_path):
    run_, connect = cli
    code, out, err = run_("download", "web-disk", str(tmp_path / "c"), "--chain",
                          "--snapshot", "s1")
    assert code == 0, err
    files = os.listdir(tmp_path / "c")
    assert len(files) == 1
    assert out.splitlines()[-1] == f"top: {tmp_path / 'c' / files[0]}"
    raw = tmp_path / "s1.raw"
    qemu_img("convert", "-O", "raw", str(tmp_path / "c" / files[0]), str(raw))
    assert raw.read_bytes() == b"\x11" * SIZE


def test_download_chain_bad_input(cli, tmp_path):
    run_, connect = cli
    full = tmp_path / "full"
    full.mkdir()
    (full / "other").write_text("x")
    code, out, err = run_("download", "web-disk", str(full), "--chain")
    assert (code, out) == (1, "")
    assert err == (f"imagetool: error: {full}: already holds files; a chain is "
                   f"downloaded into an empty or new directory\n")
    assert os.listdir(full) == ["other"]
    code, out, err = run_("download", "web-disk", str(tmp_path / "n"), "--chain",
                          "--snapshot", "nope")
    assert (code, out) == (1, "")
    assert err == "imagetool: error: VM web has no snapshot with id or description 'nope'\n"
    assert not (tmp_path / "n").exists()
    code, out, err = run_("download", "web-disk", str(tmp_path / "n"), "--chain",
                          "--format", "qcow2")
    assert code == 2 and "--chain" in err
    code, out, err = run_("download", "web-disk", str(tmp_path / "n.raw"), "--snapshot", "s1")
    assert code == 2 and "'s1' is not a UUID" in err
    with connect() as conn:
        assert conn.disks.find("web-disk").status == "ok"
        assert [t for t in conn.transfers.list() if t.phase == "transferring"] == []


def test_download_and_upload_with_host(cli, tmp_path):
    run_, connect = cli
    dest = tmp_path / "h.raw"
    code, out, err = run_("download", "web-disk", str(dest), "--host", "local")
    assert code == 0, err
    code, out, err = run_("download", "web-disk", str(tmp_path / "x.raw"), "--host", "far")
    assert (code, out) == (1, "")
    assert err == f"imagetool: error: {tmp_path / 'x.raw'}: no host with id or name 'far'\n"
    assert not (tmp_path / "x.raw").exists()
    code, out, err = run_("upload", str(dest), "--sd", "data", "--name", "via-host",
                          "--host", "far")
    assert code == 1 and "no host with id or name 'far'" in err
    code, out, err = run_("upload", str(dest), "--sd", "data", "--name", "via-host",
                          "--host", "local", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["name"] == "via-host"


def test_upload_chain_from_download(cli, tmp_path):
    run_, connect = cli
    out_dir = tmp_path / "chain"
    code, out, err = run_("download", "web-disk", str(out_dir), "--chain", "--json")
    assert code == 0, err
    top = json.loads(out)["top"]
    code, out, err = run_("upload", top, "--sd", "data", "--name", "restored", "--json")
    assert code == 0, err
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    assert run_("download", "web-disk", str(a))[0] == 0
    assert run_("download", "restored", str(b))[0] == 0
    assert a.read_bytes() == b.read_bytes()


# --- export domain --------------------------------------------------------------------------

def test_export_to_a_data_domain_is_refused(cli):
    run_, connect = cli
    code, out, err = run_("vms", "export", "web", "--export-domain", "data")
    assert (code, out) == (1, "")
    assert err == ("imagetool: error: storage domain data is a data domain, not an "
                   "export domain\n")
    code, out, err = run_("vms", "import", "web", "--export-domain", "nope", "--sd", "data")
    assert (code, err) == (1, "imagetool: error: no storage domain with id or name 'nope'\n")


def test_export_and_import(cli, tmp_path):
    run_, connect = cli
    code, out, err = run_("vms", "export", "web", "--export-domain", "export",
                          "--discard-snapshots", "--json")
    assert code == 0, err
    code, out, err = run_("vms", "import", "web", "--export-domain", "export", "--sd", "data",
                          "--clone", "--name", "web2", "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "web2"


def test_subprocess_exit_code_and_json(clean_env, tmp_path):
    with LocalEngine(str(clean_env / "home")) as eng:
        _seed(eng, clean_env)
    cmd = [sys.executable, "-m", "imagetool", "snapshots", "list", "web", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert [s["description"] for s in json.loads(res.stdout)] == ["Active VM", "s1"]
    res = subprocess.run(cmd[:5] + ["ghost"], capture_output=True, text=True,
                         env=dict(os.environ))
    assert res.returncode == 1
    assert res.stderr == "imagetool: error: no vm with id or name 'ghost'\n"
