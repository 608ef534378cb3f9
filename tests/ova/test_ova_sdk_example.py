"""The SDK's own ``upload_ova_as_vm_or_template.py`` imports an OVA that
``imagetool ova export`` wrote, into the local engine.

The example ships in the ovirt-engine-sdk-python sdist (``examples/``); it
is fetched with pip into a cache at test time (never committed) and run
unmodified: its connection settings come from ``~/.config/ovirt.conf``,
written here under a temporary HOME.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import ENGINE_PASSWORD
from ova_fixtures import SD, connect, make_sources, make_vm, second_engine

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def target(tmp_path_factory):
    eng = second_engine(str(tmp_path_factory.mktemp("engine-sdk")))
    try:
        yield eng
    finally:
        eng.stop()


def test_sdk_example_imports_our_ova(conn, target, scratch, sdk_examples):
    pytest.importorskip("lxml")
    pytest.importorskip("ovirtsdk4")
    pytest.importorskip("ovirt_imageio.client")
    from imagetool import export_ova
    from imagetool.transfer.disk_checksum import disk_checksum
    sources = make_sources(scratch, size=4 << 20)
    vm, disks = make_vm(conn, sources, "sdk-vm")
    ova = os.path.join(scratch, "sdk.ova")
    exported = export_ova(conn, vm.id, ova)

    home = os.path.join(scratch, "home")
    os.makedirs(os.path.join(home, ".config"))
    with open(os.path.join(home, ".config", "ovirt.conf"), "w") as f:
        f.write(f"[local]\nengine_url = {target.url.rsplit('/ovirt-engine', 1)[0]}\n"
                f"username = admin@internal\npassword = {ENGINE_PASSWORD}\n"
                f"cafile = {target.cafile}\n")
    env = dict(os.environ, HOME=home)
    env.pop("PYTHONPATH", None)
    p = subprocess.run([sys.executable, "upload_ova_as_vm_or_template.py", "-c", "local",
                        "--sd-name", SD, "--cluster-name", "Default",
                        "--logfile", os.path.join(scratch, "example.log"), ova],
                       cwd=sdk_examples, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    with connect(target) as conn2:
        [new_vm] = [v for v in conn2.vms.list() if v.name == "sdk-vm"]
        attached = {a.disk_id for a in conn2.vms.disk_attachments(new_vm.id)}
        assert attached == {d.id for d in disks.values()}
        for d in exported.disks:
            remote = disk_checksum(conn2, d.disk_id, algorithm=d.checksum.algorithm)
            assert remote["checksum"] == d.checksum.value
