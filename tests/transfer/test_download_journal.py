"""Plain raw downloads keep a journal (issue 5): what a later run finds.

An in-process LocalEngine (the ``engine`` fixture of tests/conftest.py);
the source image is random bytes written by the test, the expected content
is that file
(compared with qemu-img compare). Kills of a real process are in
tests/faults/test_resume_kill.py.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from helpers import MiB
from imagetool.errors import ChecksumMismatch
from imagetool.transfer.download import download_disk
from imagetool.transfer.journal import JournalError
from imagetool.transfer.upload import upload_disk

SIZE = 8 * MiB


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("src") / "src.raw")
    with open(path, "wb") as f:
        f.write(os.urandom(SIZE))
    return path


@pytest.fixture
def disk(conn, source):
    return upload_disk(conn, source, "data")


def _same(a: str, b: str) -> bool:
    res = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", a, b],
                         capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode == 0


def _files(dest: str) -> tuple[str, str]:
    return dest + ".imagetool-journal", dest + ".imagetool-part"


def _interrupted(conn, disk, dest: str, after: int = 3 * MiB) -> None:
    """A --resume download stopped mid-way: journal and partial file stay."""
    seen = [0]

    def stop(n: int) -> None:
        seen[0] += n
        if seen[0] >= after:
            raise RuntimeError("client died")

    with pytest.raises(RuntimeError, match="client died"):
        download_disk(conn, disk, dest, workers=1, buffer_size=MiB, resume=True,
                      progress=stop)


@pytest.mark.slow
def test_plain_download_journals_while_it_runs(conn, disk, source, tmp_path):
    dest = str(tmp_path / "plain.raw")
    jpath, part = _files(dest)
    seen = []

    def watch(_n: int) -> None:
        seen.append((os.path.exists(jpath), os.path.exists(part), os.path.exists(dest)))

    download_disk(conn, disk, dest, workers=1, buffer_size=MiB, progress=watch)
    assert seen and all(s == (True, True, False) for s in seen), seen
    with open(dest, "rb") as f:
        assert f.read(1)        # readable, complete file under the final name
    assert _same(source, dest)
    assert not os.path.exists(jpath) and not os.path.exists(part)


@pytest.mark.slow
def test_plain_failure_removes_part_and_journal(conn, disk, tmp_path):
    dest = str(tmp_path / "fail.raw")

    def die(_n: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        download_disk(conn, disk, dest, workers=1, buffer_size=MiB, progress=die)
    assert os.listdir(tmp_path) == []
    assert conn.disks.get(disk.id).status == "ok"


@pytest.mark.slow
def test_plain_run_reports_journal_then_resume_finishes(conn, disk, source, tmp_path):
    dest = str(tmp_path / "later.raw")
    jpath, part = _files(dest)
    _interrupted(conn, disk, dest)
    with open(jpath) as f:
        before = f.read()
    assert json.loads(before)["done"], "nothing recorded as durable"
    part_size = os.path.getsize(part)

    with pytest.raises(JournalError) as e:
        download_disk(conn, disk, dest)
    msg = str(e.value)
    assert "interrupted download" in msg and "--resume" in msg
    assert f"rm {jpath} {part}" in msg
    # Reported, not reused nor deleted.
    with open(jpath) as f:
        assert f.read() == before
    assert os.path.getsize(part) == part_size and not os.path.exists(dest)

    r = download_disk(conn, disk, dest, resume=True)
    assert r.verification.verified
    assert _same(source, dest)
    assert sorted(os.listdir(tmp_path)) == ["later.raw"]


@pytest.mark.slow
def test_resume_with_corrupt_part_removes_both(conn, disk, source, tmp_path):
    """A mismatch cannot be fixed by resuming: both files go, no final file."""
    dest = str(tmp_path / "corrupt.raw")
    jpath, part = _files(dest)
    _interrupted(conn, disk, dest)
    done = json.loads(open(jpath).read())["done"]
    start = done[0][0]
    with open(part, "r+b") as f:       # a range the journal calls durable
        f.seek(start)
        f.write(b"\xff" * 4096)
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        download_disk(conn, disk, dest, resume=True)
    assert os.listdir(tmp_path) == []
    # Starting over then works.
    download_disk(conn, disk, dest)
    assert _same(source, dest)


@pytest.mark.slow
def test_resume_failure_keeps_files_and_says_so(conn, disk, source, tmp_path):
    from imagetool.errors import TransferError

    dest = str(tmp_path / "kept.raw")
    jpath, part = _files(dest)
    seen = [0]

    def fail(n: int) -> None:
        seen[0] += n
        if seen[0] >= 3 * MiB:
            raise TransferError("the data plane went away")

    with pytest.raises(TransferError) as e:
        download_disk(conn, disk, dest, workers=1, buffer_size=MiB, resume=True,
                      progress=fail)
    assert "the data plane went away" in str(e.value)
    assert f"partial download is kept in {part}" in str(e.value)
    assert "--resume" in str(e.value)
    assert os.path.exists(jpath) and os.path.exists(part) and not os.path.exists(dest)
    download_disk(conn, disk, dest, resume=True)
    assert _same(source, dest)
    assert sorted(os.listdir(tmp_path)) == ["kept.raw"]


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [{"format": "qcow2"}, {"format": "qcow2", "resume": True}])
def test_non_resumable_downloads_refuse_a_journal_or_resume(conn, disk, tmp_path, kwargs):
    dest = str(tmp_path / "q.raw")
    if not kwargs.get("resume"):
        _interrupted(conn, disk, dest)
    with pytest.raises(JournalError, match="raw downloads of guest data only"):
        download_disk(conn, disk, dest, **kwargs)
    assert not os.path.exists(dest)
    if not kwargs.get("resume"):
        assert os.path.exists(dest + ".imagetool-journal")


@pytest.mark.slow
def test_qcow2_download_unchanged(conn, disk, source, tmp_path):
    dest = str(tmp_path / "q.qcow2")
    download_disk(conn, disk, dest, format="qcow2")
    res = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", source, dest],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert os.listdir(tmp_path) == ["q.qcow2"]
