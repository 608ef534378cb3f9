"""What a failed resumable download keeps (resume.download_failed): never a
claim that a partial file is kept when there is none."""

from __future__ import annotations

import os

import pytest

from imagetool.errors import TransferError
from imagetool.transfer.journal import Journal
from imagetool.transfer.resume import download_failed, download_paths


def _journal(tmp_path):
    jpath, part = download_paths(str(tmp_path / "out.raw"))
    return Journal.create(jpath, disk_id="d"), jpath, part


def test_failure_before_the_partial_file_keeps_nothing_and_says_nothing(tmp_path):
    journal, jpath, part = _journal(tmp_path)
    download_failed(journal, part, TransferError("engine went away"), resume=True)
    assert not os.path.exists(jpath) and not os.path.exists(part)


def test_failure_with_a_partial_file_keeps_both_and_says_where(tmp_path):
    journal, jpath, part = _journal(tmp_path)
    open(part, "wb").close()
    with pytest.raises(TransferError, match="the partial download is kept in .*--resume"):
        download_failed(journal, part, TransferError("engine went away"), resume=True)
    assert os.path.exists(jpath) and os.path.exists(part)


def test_ctrl_c_without_resume_removes_both(tmp_path):
    journal, jpath, part = _journal(tmp_path)
    open(part, "wb").close()
    download_failed(journal, part, KeyboardInterrupt(), resume=False)
    assert not os.path.exists(jpath) and not os.path.exists(part)
