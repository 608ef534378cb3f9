"""Merging a qcow2 layer down into the one below it (``commit_layer``), copying
only the upper layer's clusters into the lower file copy on write."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from helpers import MiB, qemu_check, qemu_img, qemu_io, run
from imagetool.errors import UnsupportedFeature
from imagetool.formats import open_image
from imagetool.formats.qcow2_writer import Qcow2Writer
from imagetool.server.layers import commit_layer, merge_layer


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _chain(tmp_path):
    """base <- mid <- top (names relative, as the engine writes them)."""
    base, mid, top = (str(tmp_path / n) for n in ("base", "mid", "top"))
    qemu_img("create", "-q", "-f", "qcow2", base, "64M")
    qemu_io(base, "write -P 1 0 8M", "write -P 9 40M 3M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base", "-F", "qcow2", mid)
    qemu_io(mid, "write -P 2 1M 2M", "write -P 3 20M 100k", "write -P 4 7M 3M",
            "write -z 41M 64k", "write -P 5 12345 777")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "mid", "-F", "qcow2", top)
    # Whole clusters, partial clusters over data of the lower layer and over
    # its holes, zeros hiding the base's data.
    qemu_io(top, "write -P 7 30M 2M", "write -z 2M 128k", "write -P 8 100000 5000",
            "write -z 40M 64k", "write -P 6 7340000 100")
    return base, mid, top


class Failing:
    """A reader whose reads fail after ``budget`` of them (an I/O error)."""

    def __init__(self, inner, budget):
        self._b = inner
        self.budget = budget

    size = property(lambda self: self._b.size)

    def extents(self, context="zero"):
        return self._b.extents(context)

    def read_into(self, offset, buf):
        self.budget -= 1
        if self.budget < 0:
            raise OSError(5, "read error")
        return self._b.read_into(offset, buf)

    def clone(self):
        return self

    def close(self):
        self._b.close()


@pytest.mark.slow
def test_commit_gives_the_chain_and_copies_only_the_upper_layer(tmp_path):
    base, mid, top = _chain(tmp_path)
    expect = str(tmp_path / "expect.raw")
    qemu_img("convert", "-O", "raw", top, expect)
    mid_inode = os.stat(mid).st_ino
    mid_size = os.path.getsize(mid)
    top_size = os.path.getsize(top)
    done = commit_layer(mid, top, open_image(top, "r", format="qcow2"),
                        open_image(base, "r", format="qcow2"))
    assert done is True
    assert not os.path.exists(mid)
    # The lower file, changed in place, now sits at the upper's path.
    assert os.stat(top).st_ino == mid_inode
    # Grown by about the upper layer's size (its data, new tables), not a copy.
    assert os.path.getsize(top) <= mid_size + top_size + 4 * 65536
    assert qemu_check(top)["check-errors"] == 0
    info = qemu_img("info", top)
    assert "backing file: base" in info
    got = str(tmp_path / "got.raw")
    qemu_img("convert", "-O", "raw", top, got)
    assert _sha(got) == _sha(expect)


def test_failed_commit_leaves_both_files_as_they_were(tmp_path):
    base, mid, top = _chain(tmp_path)
    before = {p: _sha(p) for p in (mid, top)}

    reader = Failing(open_image(top, "r", format="qcow2"), budget=2)
    with pytest.raises(OSError):
        commit_layer(mid, top, reader, open_image(base, "r", format="qcow2"))
    assert {p: _sha(p) for p in (mid, top)} == before
    assert qemu_check(mid)["check-errors"] == 0


def test_failed_merge_leaves_no_merging_file(tmp_path):
    """``merge_layer`` (the other direction) writes ``top.merging`` first: a
    failure removes it and leaves the chain as it was."""
    base, mid, top = _chain(tmp_path)
    before = {p: _sha(p) for p in (mid, top)}
    reader = Failing(open_image(top, "r", format="qcow2"), budget=2)
    with pytest.raises(OSError):
        merge_layer(mid, top, "base", "qcow2", 64 * MiB, reader=reader,
                    parent=open_image(base, "r", format="qcow2"))
    assert sorted(os.listdir(tmp_path)) == ["base", "mid", "top"]
    assert {p: _sha(p) for p in (mid, top)} == before


def test_abort_before_flush_restores_the_file(tmp_path):
    base, mid, _ = _chain(tmp_path)
    before = _sha(mid)
    w = Qcow2Writer.open_existing(mid)
    w.write(0, b"\xaa" * (3 * MiB))
    w.zero(7 * MiB, 1 * MiB)
    w.abort()
    assert _sha(mid) == before


@pytest.mark.slow
def test_writes_after_open_existing_do_not_touch_old_clusters(tmp_path):
    """Old data stays readable through the old header until the flush."""
    base, mid, _ = _chain(tmp_path)
    copy = str(tmp_path / "copy")
    shutil.copyfile(mid, copy)
    w = Qcow2Writer.open_existing(mid)
    w.write(1 * MiB, b"\xbb" * (2 * MiB))        # over clusters mid holds
    w.write(7 * MiB + 100, b"\xcc" * 1000)       # partial cluster over held data
    # Nothing flushed: the file's first part still equals the old image.
    with open(mid, "rb") as f, open(copy, "rb") as g:
        assert f.read(os.path.getsize(copy)) == g.read()
    w.close()
    got = str(tmp_path / "got.raw")
    want = str(tmp_path / "want.raw")
    qemu_io(copy, "write -P 0xbb 1M 2M", "write -P 0xcc 7340132 1000")
    run("qemu-img", "convert", "-O", "raw", mid, got, check=True)
    run("qemu-img", "convert", "-O", "raw", copy, want, check=True)
    assert _sha(got) == _sha(want)
    assert qemu_check(mid)["check-errors"] == 0


def test_image_with_internal_snapshot_is_not_changed_in_place(tmp_path):
    base, mid, top = _chain(tmp_path)
    qemu_img("snapshot", "-c", "s1", mid)
    before = _sha(mid)
    with pytest.raises(UnsupportedFeature):
        Qcow2Writer.open_existing(mid)
    assert commit_layer(mid, top, open_image(top, "r", format="qcow2")) is False
    assert _sha(mid) == before
