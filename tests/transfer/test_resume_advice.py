"""The advice of ``upload --resume`` when a same-named leftover disk is
held by a live upload transfer: following it, as written, works."""

from __future__ import annotations

import pytest

from helpers import ENGINE_PASSWORD, MiB, wait_for
from imagetool.errors import NotFound

pytestmark = pytest.mark.slow


def test_advice_for_a_leftover_disk_held_by_its_upload(cli, conn, engine, tmp_path):
    src = tmp_path / "leftover.raw"
    src.write_bytes(b"\x5a" * MiB)
    disk = conn.disks.add(name="leftover.raw", provisioned_size=MiB, storage_domain="data")
    wait_for(lambda: conn.disks.get(disk.id).status, lambda s: s == "ok")
    t = conn.transfers.add(disk_id=disk.id, direction="upload")
    pw = tmp_path / "pw"
    pw.write_text(ENGINE_PASSWORD)
    eargs = ["--engine-url", engine.url, "--username", "admin@internal",
             "--password-file", str(pw), "--cafile", engine.cafile]
    code, _, err = cli("upload", str(src), "--sd", "data", "--resume", *eargs)
    assert code == 1 and err.count("\n") == 1
    assert f"imagetool transfers cancel {t.id}), which also removes it" in err
    # As advised: the cancel is enough, the disk goes with it.
    assert cli("transfers", "cancel", t.id, *eargs)[0] == 0

    def gone():
        try:
            conn.disks.get(disk.id)
        except NotFound:
            return True
        return False
    wait_for(gone, bool)
