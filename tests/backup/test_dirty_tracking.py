"""Write tracking for incremental backups (server/dirty.py)."""

from __future__ import annotations

import uuid

from imagetool.iocore.backend import Extent
from imagetool.server.dirty import GRAIN, DirtyTracker, DirtyView, add_range


def test_ranges_merge_and_survive_a_restart(tmp_path):
    disk = str(uuid.uuid4())
    t = DirtyTracker(str(tmp_path))
    t.record(disk, 0, 10)                      # no checkpoint yet: not tracked
    t.add_checkpoint(disk, "cp1")
    t.record(disk, 1, 10)
    t.record(disk, 3 * GRAIN + 5, GRAIN)
    t.add_checkpoint(disk, "cp2")
    t.record(disk, GRAIN, GRAIN)
    again = DirtyTracker(str(tmp_path))
    assert again.ranges(disk, "cp1") == [[0, 2 * GRAIN], [3 * GRAIN, 5 * GRAIN]]
    assert again.ranges(disk, "cp2") == [[GRAIN, 2 * GRAIN]]
    assert again.ranges(disk, "nope") is None
    again.remove_checkpoint(disk, "cp1")
    assert DirtyTracker(str(tmp_path)).ranges(disk, "cp1") is None


def test_add_range_joins_neighbours():
    r = [[0, 10], [20, 30], [40, 50]]
    add_range(r, 5, 45)
    assert r == [[0, 50]]
    add_range(r, 60, 70)
    add_range(r, 50, 60)
    assert r == [[0, 70]]


class _Fake:
    size = 100

    def extents(self, context="zero"):
        return iter([Extent(0, 40), Extent(40, 60, zero=True)])


def test_dirty_view_keeps_zero_flags_inside_dirty_ranges():
    v = DirtyView(_Fake(), [[10, 50], [90, 120]])
    assert list(v.extents("dirty")) == [
        Extent(0, 10, hole=True), Extent(10, 30), Extent(40, 10, zero=True),
        Extent(50, 40, hole=True), Extent(90, 10, zero=True)]
