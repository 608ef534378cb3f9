"""The storage interface, on a directory and on Ceph RGW, and the
directory's own guarantees (owner-only, atomic, no symbolic links)."""

from __future__ import annotations

import os
import stat

import pytest

from imagetool.backup.store import ObjectMissing, StoreError, open_storage
from imagetool.backup.store.storage import check_name


def test_put_get_list_delete(target):
    s = target.open()
    s.put("points/vm1/p1", b"one")
    s.put("points/vm1/p1", b"two")               # replaced whole
    s.put("chunks/abcd/abcdef", b"x" * 1000)
    assert s.get("points/vm1/p1") == b"two"
    info = s.stat("chunks/abcd/abcdef")
    assert info.size == 1000 and info.mtime > 0
    assert s.stat("points/vm1/nope") is None
    assert sorted(i.name for i in s.list("points/")) == ["points/vm1/p1"]
    assert sorted(i.name for i in s.list("")) == ["chunks/abcd/abcdef", "points/vm1/p1"]
    assert list(s.list("nothing/")) == []
    old = info.mtime
    assert s.touch("chunks/abcd/abcdef") and s.stat("chunks/abcd/abcdef").mtime >= old
    assert not s.touch("chunks/abcd/gone")
    s.delete("points/vm1/p1")
    s.delete("points/vm1/p1")                    # missing: not an error
    with pytest.raises(ObjectMissing):
        s.get("points/vm1/p1")


@pytest.mark.parametrize("name", ["../x", "/abs", "a//b", ".hidden", "a/../b", "a/", "",
                                  "a\0b", "a b", "x" * 129])
def test_invalid_names_refused(name):
    with pytest.raises(StoreError, match="invalid object name"):
        check_name(name)


def test_storage_refuses_invalid_names(target):
    s = target.open()
    for op in (lambda: s.put("../x", b""), lambda: s.get("../x"), lambda: s.delete("../x")):
        with pytest.raises(StoreError, match=r"invalid object name '\.\./x'"):
            op()


def test_directory_is_owner_only_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        s = open_storage(str(tmp_path / "repo"), create=True)
        s.put("chunks/abcd/abcdef", b"secret")
    finally:
        os.umask(old)
    for path, mode in [(tmp_path / "repo", 0o700), (tmp_path / "repo/chunks", 0o700),
                       (tmp_path / "repo/chunks/abcd", 0o700),
                       (tmp_path / "repo/chunks/abcd/abcdef", 0o600)]:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path


def test_directory_leaves_no_temporary_files(tmp_path):
    s = open_storage(str(tmp_path / "repo"), create=True)
    for i in range(3):
        s.put("points/vm/p", b"%d" % i)
    assert os.listdir(tmp_path / "repo/points/vm") == ["p"]
    # Files no object can be named (a crash's temporary file, a stray name)
    # are not listed.
    for stray in (".p.1a2b.tmp", "a b", "x" * 200):
        (tmp_path / "repo/points/vm" / stray).write_bytes(b"")
    assert [i.name for i in s.list("points/")] == ["points/vm/p"]


def test_directory_does_not_follow_symbolic_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep")
    s = open_storage(str(tmp_path / "repo"), create=True)
    os.symlink(outside, tmp_path / "repo/points")
    os.makedirs(tmp_path / "repo/chunks")
    os.symlink(outside / "victim", tmp_path / "repo/chunks/abcd")
    with pytest.raises(StoreError, match="symbolic links are not followed"):
        s.put("points/victim", b"overwritten")
    with pytest.raises(StoreError, match="symbolic links are not followed"):
        s.delete("points/victim")
    with pytest.raises(StoreError, match="is a symbolic link"):
        s.get("chunks/abcd")
    with pytest.raises(StoreError, match="symbolic links are not followed"):
        list(s.list("points/"))
    assert (outside / "victim").read_bytes() == b"keep"


def test_unknown_url_and_s3_options_on_a_directory(tmp_path):
    with pytest.raises(StoreError, match="unsupported repository URL"):
        open_storage("ftp://host/x")
    with pytest.raises(StoreError, match="apply to s3:// repositories only"):
        open_storage(str(tmp_path), endpoint="http://x")
    with pytest.raises(StoreError, match="invalid bucket name"):
        open_storage("s3://a/x")
