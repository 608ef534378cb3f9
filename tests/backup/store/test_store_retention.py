"""Retention by calendar, garbage collection with its grace period and
leases, and verify's sampling."""

from __future__ import annotations

import calendar
import os
import time

import pytest
from helpers import KiB, make_raw

from imagetool import formats
from imagetool.backup.store import (ChunkStore, DiskSource, open_storage, collect, list_points, load_index, prune,
                                    verify, write_point)
from imagetool.backup.store import gc
from imagetool.backup.store.points import new_point_name
from imagetool.backup.store.retention import decide


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def name_at(stamp: str, tag: str = "000000") -> str:
    """A point name for ``YYYY-MM-DD HH:MM`` UTC."""
    t = calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M"))
    return new_point_name(t)[:-6] + tag


def test_keep_last_and_daily(utc):
    names = [name_at(s) for s in ("2026-12-01 10:00", "2026-12-01 20:00", "2026-12-02 10:00",
                                  "2026-12-03 09:00", "2026-12-03 21:00")]
    marks = decide(names, last=1, daily=2)
    assert marks == {
        names[4]: (True, "last 1"),
        names[3]: (False, "no rule keeps it"),        # its day is covered by "last"
        names[2]: (True, "daily 2026-12-02"),
        names[1]: (True, "daily 2026-12-01"),
        names[0]: (False, "daily 2026-12-01 has a newer point"),
    }


def test_weekly_monthly_yearly_skip_covered_periods(utc):
    names = [name_at(s) for s in ("2024-06-01 00:00", "2025-03-10 00:00", "2025-11-30 00:00",
                                  "2026-11-02 00:00", "2026-11-28 00:00", "2026-12-07 00:00")]
    marks = decide(names, weekly=1, monthly=2, yearly=3)
    assert {n: r for n, (k, r) in marks.items() if k} == {
        names[5]: "weekly 2026-W50",
        names[4]: "monthly 2026-11",
        names[2]: "monthly 2025-11",
        names[0]: "yearly 2024",
    }
    assert marks[names[3]] == (False, "monthly 2026-11 has a newer point")
    # yearly: 2026 and 2025 are covered already, so its 3 periods reach 2024.
    assert marks[names[1]] == (False, "yearly 2025 has a newer point") or not marks[names[1]][0]


def test_no_rule_keeps_everything_and_bad_counts_refused():
    assert decide(["a", "b"]) == {"a": (True, "no keep rule given"),
                                  "b": (True, "no keep rule given")}
    with pytest.raises(ValueError, match="keep-daily must be a whole number"):
        decide(["a"], daily=-1)


def point(store, tmp_path, vm, seed, name=None, data=None):
    raw = str(tmp_path / f"{vm}-{seed}.raw")
    make_raw(raw, 256 * KiB, [(0, 256 * KiB)], seed=seed)
    b = formats.open_image(raw, "r")
    try:
        return write_point(store, vm, [DiskSource("d1", b)], name=name)
    finally:
        b.close()


def age_chunks(store, seconds):
    """Make every chunk look ``seconds`` old (directory repositories)."""
    for info in store.storage.list("chunks/"):
        path = os.path.join(store.storage.root, info.name)
        os.utime(path, (info.mtime - seconds, info.mtime - seconds))


def test_prune_removes_indexes_only_then_gc_frees_chunks(store, tmp_path, utc, target):
    names = [name_at(f"2026-12-0{d} 10:00") for d in (1, 2, 3)]
    ixs = [point(store, tmp_path, "vm1", seed=i, name=n) for i, n in enumerate(names)]
    chunks_before = {i.name for i in store.storage.list("chunks/")}
    dry = prune(store, dry_run=True, last=1)
    assert [(d.name, d.keep, d.reason) for d in dry] == [
        (names[0], False, "no rule keeps it"), (names[1], False, "no rule keeps it"),
        (names[2], True, "last 1")]
    assert len(list_points(store)) == 3
    prune(store, last=1)
    assert list_points(store) == [("vm1", names[2])]
    assert {i.name for i in store.storage.list("chunks/")} == chunks_before
    # Within the grace period nothing goes.
    res = collect(store)
    assert res.deleted == 0 and res.kept_recent == 8
    if not target.url.startswith("s3://"):
        age_chunks(store, gc.DEFAULT_GRACE + 60)
        res = collect(store, dry_run=True)
        assert res.deleted == 8 and len(list(store.storage.list("chunks/"))) == 12
    res = collect(store, grace=0)
    assert res.deleted == 8 and res.referenced == 4
    left = {i.name.rpartition("/")[2] for i in store.storage.list("chunks/")}
    assert left == set(ixs[2].disks[0].chunks)
    assert verify(store).ok


def test_gc_keeps_a_reused_old_chunk_that_a_backup_touched(tmp_path):
    # A directory only: an S3 object's time cannot be set back.
    store = ChunkStore.init(open_storage(str(tmp_path / "repo"), create=True),
                            chunk_size=64 * KiB)
    first = point(store, tmp_path, "vm1", seed=1)
    store.storage.delete(first.object_name)             # its chunks are garbage now
    age_chunks(store, gc.DEFAULT_GRACE + 60)
    fresh = type(store).open(store.storage)              # a new backup process
    point(fresh, tmp_path, "vm2", seed=1)                # the same data: reused, touched
    res = collect(store)
    assert res.deleted == 0
    assert verify(store).ok


def test_a_running_backups_parent_survives_prune_and_gc(store, tmp_path, utc):
    names = [name_at(f"2026-12-0{d} 10:00") for d in (1, 2)]
    old, new = [point(store, tmp_path, "vm1", seed=i, name=n) for i, n in enumerate(names)]
    lease = gc.take_lease(store, "vm1", new_point_name(), old.name)
    try:
        decisions = prune(store, last=1)
        assert (decisions[0].name, decisions[0].keep, decisions[0].reason) == \
            (old.name, True, "parent of a running backup")
        store.storage.delete(old.object_name)        # gone anyway (another tool)
        res = collect(store, grace=0)
        assert not res.swept and res.deleted == 0
        assert "which is gone: nothing swept" in res.notes[0]
    finally:
        gc.drop_lease(store, lease)


def test_verify_sample_checks_part_of_the_chunks(store, tmp_path):
    for seed in range(4):
        point(store, tmp_path, "vm1", seed=seed)
    full = verify(store)
    assert full.ok and full.chunks == 16 and full.checked == 16
    part = verify(store, sample=25, seed=1)
    assert part.ok and part.checked == 4
    with pytest.raises(ValueError, match="sample must be a percentage"):
        verify(store, sample=0)


def test_verify_compares_recorded_checksums(store, tmp_path):
    from imagetool import checksum as block_checksum
    raw = str(tmp_path / "a.raw")
    make_raw(raw, 256 * KiB, [(0, 100 * KiB)], seed=3)
    good = block_checksum.checksum_file(raw)
    b = formats.open_image(raw, "r")
    try:
        ix = write_point(store, "vm1", [DiskSource("d1", b, meta={"checksum": {
            "algorithm": good["algorithm"], "block_size": good["block_size"],
            "value": good["checksum"]}})])
        bad = write_point(store, "vm1", [DiskSource("d1", b, meta={"checksum": {
            "algorithm": "blake2b", "block_size": good["block_size"], "value": "00" * 32}})])
    finally:
        b.close()
    rep = verify(store, checksums=True)
    assert [d.name for d in rep.damaged] == [bad.name]
    assert "differs from the recorded" in rep.damaged[0].problems[0]
    assert load_index(store, "vm1", ix.name).disks[0].meta["checksum"]["value"] == \
        good["checksum"]
