"""export_ova's and import_ova's results: the --json documents, key for key."""

from __future__ import annotations

from imagetool.checksum import GuestChecksum
from imagetool.ova.results import ExportedDisk, ImportedDisk, OvaExported, OvaImported

SUM = GuestChecksum("ab" * 32, "sha256", 1 << 20)
SUM_JSON = {"algorithm": "sha256", "block_size": 1 << 20, "value": "ab" * 32,
            "scope": "guest-data"}


def test_export_result_json():
    r = OvaExported(disks=[ExportedDisk("d1", "img1", 4096, SUM, "cd" * 32)], bytes=4096,
                    seconds=1.23456, path="/x.ova", vm_id="v1",
                    members=[{"name": "vm.ovf", "size": 10, "sha256": "ef" * 32}])
    assert r.to_json() == {
        "path": "/x.ova", "vm_id": "v1", "bytes": 4096, "seconds": 1.235,
        "members": [{"name": "vm.ovf", "size": 10, "sha256": "ef" * 32}],
        "disks": [{"disk_id": "d1", "member": "img1", "virtual_size": 4096,
                   "checksum": SUM_JSON, "sha256": "cd" * 32}]}


def test_import_result_json_names_the_kind():
    disks = [ImportedDisk("d1", "web-disk1.vmdk", SUM)]
    vm = OvaImported(disks=disks, bytes=7, seconds=0.5, kind="vm", id="v1", name="web")
    assert vm.to_json() == {"vm_id": "v1", "name": "web", "bytes": 7, "seconds": 0.5,
                            "disks": [{"disk_id": "d1", "member": "web-disk1.vmdk",
                                       "checksum": SUM_JSON}]}
    tpl = OvaImported(disks=disks, kind="template", id="t1", name="web")
    assert set(tpl.to_json()) == {"template_id", "name", "bytes", "seconds", "disks"}
