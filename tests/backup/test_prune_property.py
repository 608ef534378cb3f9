"""``backup prune`` keeps every kept point whole: a property test over random
chains of points (full and incremental, with disks full inside incremental
points) and random ``--keep`` values, each kept point read back through its
chain and compared byte for byte with what was backed up."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backup_helpers import add_point, point_bytes

from imagetool import backup
from imagetool.server.dirty import GRAIN

VM = "3b1d2c8e-0000-4000-8000-000000000001"
DISKS = ("aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002")
SIZE = 16 * GRAIN       # 1 MiB: small, so a chain of points takes milliseconds

# One point: (full point?, disk 2 full inside it?, writes [(disk, grain, kind)]).
writes = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 15),
                            st.sampled_from(["data", "zeros"])), max_size=6)
steps = st.lists(st.tuples(st.booleans(), st.booleans(), writes), min_size=1, max_size=6)


def _apply(image: bytearray, grain: int, kind: str, rng: random.Random) -> None:
    start = grain * GRAIN + rng.randrange(0, GRAIN // 2)
    length = min(rng.randrange(1, GRAIN), SIZE - start)
    image[start:start + length] = rng.randbytes(length) if kind == "data" else bytes(length)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.function_scoped_fixture])
@example(steps=[(False, False, [(0, 1, "data")])] * 3, keeps=[1], seed=0)
@example(steps=[(False, True, [(0, 2, "data"), (1, 3, "zeros")]), (False, False, []),
                (True, False, [(1, 0, "data")]), (False, True, [(0, 2, "zeros")]),
                (False, False, [(1, 15, "data")])], keeps=[3, 1], seed=1)
@given(steps=steps, keeps=st.lists(st.integers(1, 7), min_size=1, max_size=2),
       seed=st.integers(0, 2 ** 16))
@pytest.mark.slow
def test_every_kept_point_restores_after_prune(tmp_path_factory, steps, keeps, seed):
    rng = random.Random(seed)
    repo = str(tmp_path_factory.mktemp("repo"))
    images = [bytearray(SIZE), bytearray(SIZE)]
    made = {}           # point -> {disk: bytes backed up}
    previous: list[bytes | None] = [None, None]
    for i, (full, disk2_full, ws) in enumerate(steps):
        for disk, grain, kind in ws:
            _apply(images[disk], grain, kind, rng)
        now = [bytes(x) for x in images]
        disks = {DISKS[0]: (now[0], previous[0]),
                 DISKS[1]: (now[1], None if disk2_full else previous[1])}
        name = add_point(repo, VM, disks, full=full or i == 0)
        made[name] = {DISKS[0]: now[0], DISKS[1]: now[1]}
        previous = now

    for keep in keeps:
        [result] = backup.prune(repo, keep)
        assert result["kept"] == list(made)[-keep:]
        assert result["removed"] == list(made)[:-keep]
        for gone in result["removed"]:
            del made[gone]
        assert sorted(os.listdir(os.path.join(repo, VM))) == sorted(list(made) + [".lock"])
        report = backup.verify(repo)
        assert report.ok and report.points == len(made), report.errors
        for point, disks in made.items():
            for disk_id, data in disks.items():
                assert point_bytes(repo, VM, point, disk_id) == data, (point, disk_id)


def test_keep_one_of_a_full_and_two_incrementals(tmp_path, cli):
    """The case of the report: prune said it kept one point that no longer restored."""
    repo = str(tmp_path / "repo")
    a = bytes(range(256)) * (SIZE // 256)
    b = a[:GRAIN] + b"\x01" * GRAIN + a[2 * GRAIN:]
    c = b[:5 * GRAIN] + b"\x02" * GRAIN + b[6 * GRAIN:]
    add_point(repo, VM, {DISKS[0]: (a, None)})
    add_point(repo, VM, {DISKS[0]: (b, a)})
    last = add_point(repo, VM, {DISKS[0]: (c, b)})
    code, out, err = cli("backup", "prune", repo, "--keep", "1")
    assert code == 0, err
    assert "removed 2 points" in out and "kept 1" in out
    code, out, err = cli("backup", "verify", repo)
    assert (code, err) == (0, ""), err
    assert point_bytes(repo, VM, last, DISKS[0]) == c
    p = backup.Repository(repo).point(VM)
    assert (p.name, p.parent, p.manifest.mode) == (last, None, "full")


def test_a_failed_merge_leaves_no_merging_file(tmp_path, monkeypatch):
    repo = str(tmp_path / "repo")
    a = os.urandom(SIZE)
    b = a[:GRAIN] + bytes(GRAIN) + a[2 * GRAIN:]
    add_point(repo, VM, {DISKS[0]: (a, None)})
    last = add_point(repo, VM, {DISKS[0]: (b, a)})
    from imagetool.backup import maintain

    def broken(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(maintain, "copy", broken)
    with pytest.raises(OSError):
        backup.prune(repo, 1)
    point_dir = os.path.join(repo, VM, last)
    assert not [f for f in os.listdir(point_dir) if f.endswith(".merging")]
    monkeypatch.undo()
    assert backup.verify(repo).points == 2
    assert point_bytes(repo, VM, last, DISKS[0]) == b


@pytest.mark.parametrize("crash", ["before the new manifest", "after the new manifest"])
def test_the_next_prune_finishes_a_merge_a_kill_interrupted(tmp_path, monkeypatch, crash):
    repo = str(tmp_path / "repo")
    a = os.urandom(SIZE)
    b = a[:GRAIN] + bytes(GRAIN) + a[2 * GRAIN:]
    c = b[:3 * GRAIN] + os.urandom(GRAIN) + b[4 * GRAIN:]
    add_point(repo, VM, {DISKS[0]: (a, None)})
    mid = add_point(repo, VM, {DISKS[0]: (b, a)})
    last = add_point(repo, VM, {DISKS[0]: (c, b)})
    mid_dir = os.path.join(repo, VM, mid)
    if crash == "before the new manifest":
        # Killed while writing the merged file: half of it is there.
        with open(os.path.join(mid_dir, f"{DISKS[0]}.qcow2.merging"), "wb") as f:
            f.write(b"QFI\xfb" + bytes(1000))
    else:
        # Killed between the new manifest and the renames.
        from imagetool.backup import maintain

        class Kill(BaseException):
            pass

        def killed(point_dir):
            if os.path.exists(os.path.join(point_dir, "manifest.merging")):
                raise Kill
        monkeypatch.setattr(maintain, "finish_merges", killed)
        with pytest.raises(Kill):
            backup.prune(repo, 2)
        monkeypatch.undo()
        assert "manifest.merging" in os.listdir(mid_dir)
    [r] = backup.prune(repo, 2)
    assert r["kept"] == [mid, last]
    assert not [f for f in os.listdir(mid_dir) if f.endswith(".merging")]
    assert backup.verify(repo).points == 2
    assert point_bytes(repo, VM, mid, DISKS[0]) == b
    assert point_bytes(repo, VM, last, DISKS[0]) == c
