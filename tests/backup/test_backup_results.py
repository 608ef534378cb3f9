"""verify's and restore_vm's results: the --json documents, key for key."""

from __future__ import annotations

from imagetool.backup.results import Problem, RestoredDisk, Restored, VerifyResult
from imagetool.checksum import GuestChecksum


def test_verify_report_counts_each_problem_once():
    r = VerifyResult(points=2, files=6)
    assert r.ok and r.to_json() == {"points": 2, "files": 6, "ok": True, "errors": []}
    r.add("/r/a.qcow2", "SHA-256 differs")
    r.add("/r/a.qcow2", "SHA-256 differs")
    r.add("/r/a.qcow2", "cannot be read")
    assert not r.ok
    assert r.errors == [Problem("/r/a.qcow2", "SHA-256 differs"),
                        Problem("/r/a.qcow2", "cannot be read")]
    assert r.to_json()["errors"] == [{"path": "/r/a.qcow2", "error": "SHA-256 differs"},
                                     {"path": "/r/a.qcow2", "error": "cannot be read"}]


def test_restored_json():
    r = Restored(vm_id="v2", vm_name="web-copy", point="20260101T000000Z", bytes=10,
                 seconds=2.00049, disks=[RestoredDisk("n1", "d1", "web-copy-os", "web-os",
                                                      GuestChecksum("aa", "blake2b", 65536))])
    assert r.to_json() == {
        "vm_id": "v2", "vm_name": "web-copy", "point": "20260101T000000Z", "bytes": 10,
        "seconds": 2.0, "disks": [{
            "disk_id": "n1", "source_disk_id": "d1", "name": "web-copy-os",
            "source_name": "web-os", "checksum": {"algorithm": "blake2b", "block_size": 65536,
                                                  "value": "aa", "scope": "guest-data"}}]}
