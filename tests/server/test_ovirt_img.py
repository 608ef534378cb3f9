"""The reference command line client, ``ovirt-img``, against the local engine
through an ovirt-img.conf section."""

from __future__ import annotations

import json
import os
import subprocess
from urllib.parse import urlsplit

import pytest

from helpers import ENGINE_PASSWORD, find_tool, make_pattern_image, qemu_img

OVIRT_IMG = find_tool("ovirt-img")
pytestmark = [pytest.mark.skipif(OVIRT_IMG is None, reason="ovirt-img missing"),
              pytest.mark.slow]


@pytest.fixture
def ovirt_img(engine, tmp_path):
    """Run ovirt-img with a config section 'local' for the engine."""
    conf_dir = tmp_path / "xdg"
    conf_dir.mkdir()
    url = urlsplit(engine.url)
    (conf_dir / "ovirt-img.conf").write_text(
        "[local]\n"
        f"engine_url = {url.scheme}://{url.netloc}\n"
        "username = admin@internal\n"
        f"password = {ENGINE_PASSWORD}\n"
        f"cafile = {engine.cafile}\n")

    def run(*args: str) -> str:
        res = subprocess.run([OVIRT_IMG, *args], capture_output=True, text=True, timeout=120,
                             env={"XDG_CONFIG_HOME": str(conf_dir), "PATH": "/usr/bin:/bin:"
                                  + os.path.dirname(OVIRT_IMG)})
        assert res.returncode == 0, res.stderr
        return res.stdout
    return run


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_ovirt_img_upload_download(ovirt_img, connection, tmp_path, fmt):
    src = make_pattern_image(str(tmp_path / f"src.{fmt}"), fmt)
    out = ovirt_img("upload-disk", "-c", "local", "-s", "data", "-f", fmt, "-o", "json",
                    "--name", f"ovirt-img-{fmt}", src)
    last = json.loads(out.splitlines()[-1])
    assert last["description"] == "upload completed" and last["transferred"] == 4 << 20
    found = connection.system_service().disks_service().list(search=f"name=ovirt-img-{fmt}")
    assert len(found) == 1
    disk, disk_id = found[0], found[0].id
    assert disk.status.value == "ok"
    assert disk.format.value == ("cow" if fmt == "qcow2" else "raw")
    dst = str(tmp_path / f"dst.{fmt}")
    ovirt_img("download-disk", "-c", "local", "-f", fmt, disk_id, dst)
    assert "Images are identical" in qemu_img("compare", src, dst)
