"""Bad OVAs: each one a clear error, exit code 1, nothing left on the engine."""

from __future__ import annotations

import os
import signal
import tarfile

import pytest

from helpers import qemu_img, sigint_after
from ova_fixtures import SD, VMWARE_OVF, add_member, inventory, make_vmware_ova, rewrite_ova


def _vmdk_bytes(ova: str) -> bytes:
    with tarfile.open(ova) as t:
        return t.extractfile("web-disk1.vmdk").read()


def _case(name: str, scratch: str) -> str:
    made = make_vmware_ova(scratch)
    good = made["ova"]
    out = os.path.join(scratch, f"{name}.ova")
    data = _vmdk_bytes(good)
    ovf = VMWARE_OVF.replace("{mib}", "6")
    if name == "truncated":
        with tarfile.open(good) as t:
            m = t.getmember("web-disk1.vmdk")
        with open(good, "rb") as f:      # cut in the middle of the disk
            open(out, "wb").write(f.read(m.offset_data + m.size // 2))
    elif name == "manifest-mismatch":
        make_vmware_ova(scratch, mf_override="SHA256(web-disk1.vmdk)= " + "0" * 64 + "\n")
        os.replace(good, out)
    elif name == "missing-member":
        rewrite_ova(good, out, {"web.mf": None, "web.ovf": ovf.replace(
            "{size}", str(len(data))).replace("web-disk1.vmdk", "gone.vmdk").encode()})
    elif name in ("dotdot", "absolute"):
        evil = "../web-disk1.vmdk" if name == "dotdot" else "/tmp/web-disk1.vmdk"
        text = ovf.replace("{size}", str(len(data))).replace('"web-disk1.vmdk"', f'"{evil}"')
        with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as t:
            add_member(t, "web.ovf", text.encode())
            add_member(t, evil, data)
    elif name in ("larger", "smaller"):
        declared = len(data) - 512 if name == "larger" else len(data) + 512
        rewrite_ova(good, out, {"web.mf": None, "web.ovf": ovf.replace(
            "{size}", str(declared)).encode()})
    elif name == "vhdx":
        blob = b"vhdxfile" + bytes(1 << 20)
        rewrite_ova(good, out, {"web.mf": None, "web-disk1.vmdk": blob, "web.ovf": ovf.replace(
            "{size}", str(len(blob))).encode()})
    elif name == "backing-file":
        base = os.path.join(scratch, "base.qcow2")
        top = os.path.join(scratch, "top.qcow2")
        qemu_img("create", "-f", "qcow2", base, "6M")
        qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
        blob = open(top, "rb").read()
        rewrite_ova(good, out, {"web.mf": None, "web-disk1.vmdk": blob, "web.ovf": ovf.replace(
            "{size}", str(len(blob))).encode()})
    else:
        raise AssertionError(name)
    return out


CASES = [
    ("truncated", "truncated tar"),
    ("manifest-mismatch", "member 'web-disk1.vmdk': its SHA256 digest"),
    ("missing-member", "names member 'gone.vmdk' for disk vmdisk1, which is not in the OVA"),
    ("dotdot", "climbs out of the archive with '..'"),
    ("absolute", "is an absolute path"),
    ("larger", "bytes but the OVF declares"),
    ("smaller", "bytes but the OVF declares"),
    ("vhdx", "member 'web-disk1.vmdk': vhdx images are not supported"),
    ("backing-file", "member 'web-disk1.vmdk' is a qcow2 image with a backing file"),
]


@pytest.mark.parametrize("name, message", CASES, ids=[c[0] for c in CASES])
def test_bad_ova_is_refused(cli, conn, engine_env, scratch, name, message):
    path = _case(name, scratch)
    before = inventory(conn)
    code, out, err = cli("ova", "import", path, "--sd", SD, "--name", f"bad-{name}")
    assert code == 1, (out, err)
    assert err.startswith("imagetool: error: ") and message in err, err
    assert "Traceback" not in err
    assert inventory(conn) == before
    code, out, err = cli("ova", "info", path, "--verify")
    assert code == 1 and message in err, err


@pytest.mark.slow
def test_failure_after_uploads_removes_the_disks(cli, conn, engine_env, scratch):
    """The VM cannot be added (its name is taken): the uploaded disks go again."""
    made = make_vmware_ova(scratch)
    taken = conn.vms.add(name="taken")
    before = inventory(conn)
    code, out, err = cli("ova", "import", made["ova"], "--sd", SD, "--name", "taken")
    assert code == 1 and "already in use" in err, err
    assert inventory(conn) == before
    assert [d.status for d in conn.disks.list()].count("locked") == 0
    conn.vms.remove(taken.id)


@pytest.mark.slow
def test_export_failure_leaves_no_file_and_no_snapshot(conn, scratch, monkeypatch):
    """A disk that cannot be exported: no OVA, no partial file, the snapshot removed."""
    from imagetool import export_ova
    from imagetool.errors import ImagetoolError
    from imagetool.ova import export as export_mod
    from ova_fixtures import make_sources, make_vm
    vm, _ = make_vm(conn, {"raw": make_sources(scratch, size=2 << 20)["raw"]}, "fail-vm")

    def boom(*a, **kw):
        raise ImagetoolError("injected failure")
    monkeypatch.setattr(export_mod, "_export_disk", boom)
    ova = os.path.join(scratch, "fail.ova")
    with pytest.raises(ImagetoolError, match="injected failure"):
        export_ova(conn, vm.id, ova)
    assert os.listdir(scratch).count("fail.ova") == 0
    assert not os.path.exists(ova + ".imagetool-part")
    assert [s.snapshot_type for s in conn.snapshots.list(vm.id)] == ["active"]


@pytest.mark.parametrize("where", ["send", "answer"])
@pytest.mark.slow
def test_ctrl_c_during_an_import_leaves_nothing(conn, scratch, monkeypatch, where):
    """Ctrl-C while a disk is sent, or while the VM is added (the engine
    made it, its answer never came): no VM, no disk; the same OVA imports
    again afterwards."""
    from imagetool import import_ova
    from imagetool.ova import importer
    made = make_vmware_ova(scratch)
    before = inventory(conn)
    real_add = importer._add_entity

    def interrupted(*a, **kw):
        real_add(*a, **kw)
        raise KeyboardInterrupt

    def interrupt(n):
        raise KeyboardInterrupt
    monkeypatch.setattr(importer, "_add_entity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_ova(conn, made["ova"], SD, name="ctrl-c",
                   progress=interrupt if where == "send" else None)
    assert inventory(conn) == before
    monkeypatch.undo()
    r = import_ova(conn, made["ova"], SD, name="ctrl-c")
    conn.vms.remove(r.id)


@pytest.mark.slow
def test_ctrl_c_while_the_snapshot_goes_leaves_no_ova(conn, scratch, monkeypatch):
    """A Ctrl-C during the removal of the export's snapshot (after every
    byte is written): the removal ends, and no OVA is left under its name."""
    from imagetool import export_ova
    from imagetool.engine import lifecycle
    from ova_fixtures import make_sources, make_vm
    vm, _ = make_vm(conn, {"raw": make_sources(scratch, size=2 << 20)["raw"]}, "ctrl-c-vm")
    real_remove = lifecycle.remove_snapshot

    def interrupted(*a, **kw):
        real_remove(*a, **kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(lifecycle, "remove_snapshot", interrupted)
    ova = os.path.join(scratch, "ctrl-c.ova")
    with pytest.raises(KeyboardInterrupt):
        export_ova(conn, vm.id, ova)
    assert not os.path.exists(ova)
    assert not os.path.exists(ova + ".imagetool-part")
    assert [s.snapshot_type for s in conn.snapshots.list(vm.id)] == ["active"]


@pytest.mark.slow
def test_ctrl_c_while_the_snapshot_is_added_leaves_no_snapshot(conn, scratch, monkeypatch):
    """A Ctrl-C (a real SIGINT) while the export's snapshot request is in
    flight: the engine made it, the export never got its id; it is
    removed all the same."""
    from imagetool import export_ova
    from ova_fixtures import make_sources, make_vm
    vm, _ = make_vm(conn, {"raw": make_sources(scratch, size=2 << 20)["raw"]}, "add-vm")
    sigint_after(monkeypatch, conn.snapshots)
    ova = os.path.join(scratch, "add.ova")
    with pytest.raises(KeyboardInterrupt):
        export_ova(conn, vm.id, ova)
    assert [s.snapshot_type for s in conn.snapshots.list(vm.id)] == ["active"]
    assert not os.path.exists(ova) and not os.path.exists(ova + ".imagetool-part")


@pytest.mark.slow
def test_ctrl_c_as_the_ova_gets_its_name_leaves_no_ova(conn, scratch, monkeypatch):
    """A real SIGINT as the OVA is renamed to its name (issue 20): the
    library call raises KeyboardInterrupt and no OVA is left under the name."""
    from imagetool import export_ova
    from imagetool.ova import export as export_mod
    from ova_fixtures import make_sources, make_vm
    vm, _ = make_vm(conn, {"raw": make_sources(scratch, size=2 << 20)["raw"]}, "name-vm")
    ova = os.path.join(scratch, "named.ova")
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if dst == ova:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(export_mod.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        export_ova(conn, vm.id, ova)
    assert not os.path.exists(ova) and not os.path.exists(ova + ".imagetool-part")


@pytest.mark.slow
def test_ova_commands_stand_once_their_result_exists(conn, cli, engine_env, scratch, monkeypatch):
    """Issue 20, item 2: a real SIGINT once the OVA is under its name, or
    the VM imported, as the command closes its connection before
    reporting, is ignored: exit 0, the result reported and kept (before,
    130 with an OVA or a VM the command never reported)."""
    from imagetool.engine import Connection
    from ova_fixtures import make_sources, make_vm
    vm, _ = make_vm(conn, {"raw": make_sources(scratch, size=2 << 20)["raw"]}, "stand-vm")
    ova = os.path.join(scratch, "stand.ova")
    with monkeypatch.context() as m:
        sigint_after(m, Connection, "close")
        code, out, err = cli("ova", "export", vm.id, ova)
        assert (code, err) == (0, "") and f"\nexported {ova}: 1 disk, " in out
        assert os.path.isfile(ova)
        code, out, err = cli("ova", "import", ova, "--sd", SD, "--name", "stand-copy",
                             "--clone")
    assert (code, err) == (0, "") and out.startswith("imported vm stand-copy ")
    conn.vms.remove(conn.vms.find("stand-copy").id)
