"""Retention by calendar: which points to keep, and why.

The rules are Proxmox Backup Server's (``docs/prune-simulator``,
``pbs-datastore/src/prune.rs``), which restic's ``forget`` shares in
spirit: per VM, points are taken newest first; ``keep-last N`` keeps the
N newest; then each of ``keep-hourly``, ``keep-daily``, ``keep-weekly``
(ISO weeks), ``keep-monthly`` and ``keep-yearly`` keeps the newest point of
each of its N most recent periods, skipping periods that already hold a
point an earlier rule kept. Points no rule keeps are removed; with no rule
at all, everything is kept. Periods are in local time, as both tools do.

Removing a point deletes its index only (never rewriting data: each index
lists all of its chunks); ``gc`` frees the chunks no index names. A point
a running backup builds on (its lease's parent) is always kept.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Callable

from imagetool.backup.store import gc
from imagetool.backup.store.chunkstore import ChunkStore
from imagetool.backup.store.points import index_name, list_points, parse_time

RULES: dict[str, Callable[[datetime.datetime], str]] = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H:00"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "%04d-W%02d" % t.isocalendar()[:2],
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


@dataclass
class Decision:
    vm_id: str
    name: str
    keep: bool
    reason: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def decide(names: list[str], *, last: int = 0, hourly: int = 0, daily: int = 0,
           weekly: int = 0, monthly: int = 0, yearly: int = 0,
           protected: frozenset[str] = frozenset()) -> dict[str, tuple[bool, str]]:
    """``{name: (keep, reason)}`` for one VM's point names (which sort by time)."""
    counts = {"hourly": hourly, "daily": daily, "weekly": weekly, "monthly": monthly,
              "yearly": yearly}
    for rule, n in [("last", last), *counts.items()]:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"keep-{rule} must be a whole number >= 0, not {n!r}")
    newest_first = sorted(names, reverse=True)
    marks: dict[str, tuple[bool, str]] = {}
    if not any([last, *counts.values()]):
        return {n: (True, "no keep rule given") for n in names}
    for name in newest_first:
        if name in protected:
            marks[name] = (True, "parent of a running backup")
        elif parse_time(name) is None:
            marks[name] = (True, "its name carries no time")
    for i, name in enumerate(n for n in newest_first if n not in marks):
        if i >= last:
            break
        marks[name] = (True, f"last {i + 1}")
    for rule, keep in counts.items():
        if not keep:
            continue
        period = RULES[rule]
        covered = {period(parse_time(n)) for n, (k, _) in marks.items()
                   if k and parse_time(n) is not None}
        chosen: set[str] = set()
        for name in newest_first:
            if name in marks:
                continue
            p = period(parse_time(name))
            if p in covered:
                continue
            if p in chosen:
                marks[name] = (False, f"{rule} {p} has a newer point")
                continue
            if len(chosen) >= keep:
                break
            chosen.add(p)
            marks[name] = (True, f"{rule} {p}")
    for name in names:
        marks.setdefault(name, (False, "no rule keeps it"))
    return marks


def prune(store: ChunkStore, vm_id: str | None = None, *, dry_run: bool = False,
          **keep: int) -> list[Decision]:
    """Apply the rules to each VM's points (or one VM's); delete the indexes
    of points not kept unless ``dry_run``. Returns every decision, oldest first."""
    live, _ = gc.live_leases(store, time.time())
    by_vm: dict[str, list[str]] = {}
    for vm, name in list_points(store, vm_id):
        by_vm.setdefault(vm, []).append(name)
    out = []
    for vm, names in sorted(by_vm.items()):
        protected = frozenset(p for v, p in live if v == vm and p)
        marks = decide(names, protected=protected, **keep)
        for name in sorted(names):
            k, reason = marks[name]
            out.append(Decision(vm, name, k, reason))
    if not dry_run:
        for d in out:
            if not d.keep:
                store.storage.delete(index_name(d.vm_id, d.name))
    return out
