"""``backup_vm``: one new restore point of a VM.

Two methods, both giving the same repository format:

- ``checkpoint`` (engines 4.4+, VM backup API): start a backup (from the
  last point's checkpoint for an incremental), wait ``ready``, download
  each disk through a backup transfer (incremental disks: the dirty
  extents only), finalize the backup; the new checkpoint is the next
  incremental's start.
- ``snapshot`` (any engine: the snapshot API of the oVirt REST API guide):
  take a snapshot; a full point downloads each disk's snapshot volume with
  its whole chain, an incremental only that volume's layer (``shallow``),
  which holds exactly what was written since the previous point's snapshot;
  that previous snapshot is then removed and the new one kept as the base.

Whatever fails (Ctrl-C included) the backup is finalized or the new snapshot
removed, and the point's staging directory deleted. A run killed outright
leaves its staging directory with what it created on the engine; the next
run for that VM cleans that up and starts over, saying so.

The same flow writes both repository formats: a directory of qcow2 chains
or a chunk repository (directory or S3); ``imagetool.backup.destination``
holds what differs (where the point, its state and its disks go).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

from imagetool.backup import engine_ops as ops
from imagetool.backup.destination import destination_for
from imagetool.backup.manifest import DiskEntry, Manifest, OvfRef, RepositoryError
from imagetool.engine.lifecycle import remove_snapshot, take_snapshot
from imagetool.engine.wait import wait_for_backup
from imagetool.errors import EngineError, ImagetoolError, NotFound
from imagetool.ids import is_uuid
from imagetool.phases import BACKUP_ENDED, BackupPhase
from imagetool.threads import interrupts_held, shielded
from imagetool.units import count

Progress = Callable[[int], None]
METHODS = ("auto", "checkpoint", "snapshot")


def _say(notes: list[str], text: str, log: Callable[[str], None] | None) -> None:
    notes.append(text)
    if log is not None:
        log(text)


def recover_interrupted(conn: Any, repo: Any, vm_id: str,
                        log: Callable[[str], None] | None = None) -> list[str]:
    """Clean up after runs that were killed: engine side first, then the
    files. ``repo``: a Repository, a ChunkStore or a destination."""
    notes: list[str] = []
    dest = repo if hasattr(repo, "interrupted") else destination_for(repo)
    for run in dest.interrupted(vm_id):
        state = _engine_ids(run.state, vm_id, run.point)
        what = []
        layers = set()
        if state.get("snapshot_id"):
            with contextlib.suppress(NotFound):
                layers = set(ops.snapshot_layers(conn, vm_id, state["snapshot_id"]).values())
        stale = ops.cancel_leftover_transfers(conn, backup_id=state.get("backup_id"),
                                              layers=layers)
        if stale:
            _say(notes, f"cancelling {count(len(stale), 'image transfer')} the interrupted "
                        f"backup of VM {vm_id} left open ({', '.join(stale)}), then "
                        f"waiting for the engine to end them", log)
        if state.get("backup_id"):
            phase = ops.finalize_backup(conn, vm_id, state["backup_id"])
            what.append(f"its engine backup {state['backup_id']} was finalized ({phase})")
        cp = state.get("checkpoint_id")
        if cp:
            # An engine may refuse to remove a checkpoint that is not the
            # oldest: then it stays, unused, and the run goes on.
            done = _undo(lambda: ops.remove_checkpoint(conn, vm_id, cp))
            what.append(f"its checkpoint {cp} was " + ("removed" if done else
                                                        "left (the engine refused)"))
        if state.get("snapshot_id"):
            remove_snapshot(conn, vm_id, state["snapshot_id"])
            what.append(f"its snapshot {state['snapshot_id']} was removed")
        run.discard()
        _say(notes, f"an interrupted backup of VM {vm_id} (point {run.point}) was found"
                    + (f": {', '.join(what)}" if what else "")
                    + "; starting over", log)
    return notes


ENGINE_IDS = ("snapshot_id", "backup_id", "checkpoint_id")


def _engine_ids(state: dict, vm_id: str, point: str) -> dict:
    """A killed run's state, read from the repository (which is not
    trusted): the engine ids it names become parts of request paths, so
    each must be a UUID, or nothing is sent."""
    for key in ENGINE_IDS:
        value = state.get(key)
        if value is not None and not (isinstance(value, str) and is_uuid(value)):
            raise RepositoryError(
                f"the interrupted backup of VM {vm_id} (point {point}) records {key} "
                f"{str(value)[:80]!r}, not an engine id; check the engine for what that "
                "run left, then remove the run's state from the repository")
    return state


def _pick_method(conn: Any, vm_id: str, method: str) -> str:
    if method not in METHODS:
        raise ImagetoolError(f"unknown backup method {method!r} ({', '.join(METHODS)})")
    if method == "auto":
        return "checkpoint" if ops.supports_backups(conn, vm_id) else "snapshot"
    if method == "checkpoint" and not ops.supports_backups(conn, vm_id):
        raise ImagetoolError("this engine has no VM backup API (oVirt 4.4+): use "
                             "--method snapshot")
    return method


def _base(conn: Any, vm_id: str, last: Any, method: str,
          full: bool) -> tuple[Any, str | None]:
    """(the point an incremental builds on or None, why the point is full)."""
    if last is None:
        return None, "no chain yet"
    if full:
        return None, "a full backup was asked"
    if last.method != method:
        return None, f"the last point was made with the {last.method} method"
    engine = last.engine
    if method == "snapshot":
        sid = engine.get("snapshot_id")
        if not sid or not ops.snapshot_exists(conn, vm_id, sid):
            return None, f"the engine no longer has the base snapshot {sid}"
    else:
        cp = engine.get("checkpoint_id")
        state = ops.checkpoint_state(conn, vm_id, cp) if cp else None
        if state != "created":
            return None, (f"the engine no longer has the base checkpoint {cp}" if state is None
                          else f"the base checkpoint {cp} is {state}")
    return last, None


def backup_vm(conn: Any, vm: str, repository: Any, *, full: bool = False,
              method: str = "auto", workers: int = 4, inactivity_timeout: int = 60,
              progress: Progress | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Make one restore point of ``vm`` (name or id) in ``repository``: a
    directory of qcow2 chains (made if missing) or an open chunk
    repository (``imagetool.backup.store.ChunkStore``).

    Full when the VM has no chain yet, when ``full`` is given, when the
    method changed or when the engine no longer has the base checkpoint or
    snapshot (the result's ``reason`` says which); incremental otherwise.
    ``progress(nbytes)`` is called as guest bytes are processed; ``log``
    with one line per notable event. Returns a dict: ``vm_id``,
    ``vm_name``, ``point``, ``mode``, ``method``, ``bytes`` (data moved),
    ``seconds``, ``disks`` (``disk_id``, ``name``, ``path``, ``mode``,
    ``reason``: why a disk is full, ``checksum``, ``algorithm``,
    ``block_size``), ``reason``, ``notes``; in a chunk repository also
    ``stored`` (``data``: guest bytes of the chunks the point names,
    ``written``: bytes it added to the repository, after dedup and zstd).
    A disk can be full inside an incremental point (``backup: none``, new,
    resized): its ``reason`` says why.
    """
    start = time.monotonic()
    dest = destination_for(repository, create=True)
    v = conn.vms.find(vm)
    vm_id = v.id
    with dest.locked(vm_id):
        notes = recover_interrupted(conn, dest, vm_id, log)
        method = _pick_method(conn, vm_id, method)
        disks = ops.vm_disks(conn, vm_id)
        if not disks:
            raise ImagetoolError(f"VM {v.name} has no disks to back up")
        last = dest.last_point(vm_id)
        base, reason = _base(conn, vm_id, last, method, full)
        if reason and last is not None:
            _say(notes, f"VM {v.name}: full backup: {reason}", log)
        now = time.time()
        name = dest.new_point_name(vm_id, now)
        state = {"vm_id": vm_id, "point": name, "method": method, "started": now}
        staged = dest.begin(vm_id, name, state, base, workers)
        try:
            staged.write_ovf(conn.vms.get(vm_id, all_content=True).ovf or "")
            run = _snapshot_point if method == "snapshot" else _checkpoint_point
            engine_ids, entries = run(conn, vm_id, name, disks, base, staged, state,
                                      workers=workers, inactivity_timeout=inactivity_timeout,
                                      progress=progress, point_reason=reason)
            manifest = point_manifest(vm_id, v.name, name, now, method, base, engine_ids,
                                      entries, staged.ovf_info())
            point = staged.commit(manifest)
        except BaseException:
            _abandon(conn, vm_id, staged, state)
            raise
        if last is not None:     # a base snapshot the new point no longer needs
            old = last.engine.get("snapshot_id")
            if old and old != engine_ids.get("snapshot_id"):
                try:
                    remove_snapshot(conn, vm_id, old)
                except ImagetoolError as e:
                    _say(notes, f"VM {v.name}: the previous base snapshot {old} could not "
                                f"be removed: {e}", log)
    return {
        "vm_id": vm_id, "vm_name": v.name, "point": point.name,
        "path": point.path, "mode": manifest.mode, "method": method,
        "bytes": manifest.bytes, "seconds": round(time.monotonic() - start, 3),
        "reason": reason, "notes": notes,
        **({"stored": point.stored} if point.stored is not None else {}),
        "disks": [{"disk_id": e.disk_id, "name": e.name, "path": point.disk_paths[e.disk_id],
                   "mode": e.mode, "reason": e.reason, "checksum": e.checksum.value,
                   "algorithm": e.checksum.algorithm, "block_size": e.checksum.block_size}
                  for e in entries],
    }


def point_manifest(vm_id: str, vm_name: str | None, name: str, now: float, method: str,
                   base: Any, engine_ids: dict, entries: list[DiskEntry],
                   ovf: OvfRef) -> Manifest:
    """The manifest of a point; ``ovf``: what it records of the OVF (its
    SHA-256, and its file in a qcow2-chain point)."""
    return Manifest(
        vm_id=vm_id, vm_name=vm_name, point=name,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), timestamp=now,
        method=method, mode="incremental" if base is not None else "full",
        parent=base.name if base is not None else None, engine=engine_ids,
        bytes=sum(e.bytes for e in entries), disks=tuple(entries), ovf=ovf)


def _abandon(conn: Any, vm_id: str, staged: Any, state: dict) -> None:
    """After a failed run: drop the checkpoint it made (no point needs it)
    once its backup is over, and its files; the state file stays while the
    engine has not confirmed the end of the run's backup or snapshot, so
    the next run can clean up."""
    if state.get("checkpoint_id") and not state.get("backup_id"):
        _undo(lambda: ops.remove_checkpoint(conn, vm_id, state["checkpoint_id"]))
    staged.discard(keep_state=bool(state.get("backup_id") or state.get("snapshot_id")))


def _fetch_all(conn: Any, disks: list, base: Any, staged: Any, *,
               why_full: Callable[[ops.VmDisk], str | None], source: Callable, workers: int,
               inactivity_timeout: int, progress: Progress | None,
               point_reason: str | None) -> list[DiskEntry]:
    """Download every disk; each entry says its mode and, when full, why."""
    entries = []
    for d in disks:
        reason = point_reason if base is None else why_full(d)
        prev_entry, prev_digests = (None, None) if reason else staged.previous(base, d.id)
        if reason is None and prev_entry is None:
            reason = "the disk is not in the previous point"
        elif reason is None and prev_entry.virtual_size != d.provisioned_size:
            prev_entry = prev_digests = None
            reason = "the disk's size changed since the previous point"
        entries.append(staged.fetch(conn, d, base, prev_entry, prev_digests,
                                    source(d, prev_entry is not None), reason=reason,
                                    workers=workers, inactivity_timeout=inactivity_timeout,
                                    progress=progress))
    return entries


def _snapshot_point(conn: Any, vm_id: str, name: str, disks: list, base: Any,
                    staged: Any, state: dict, **kw: Any) -> tuple[dict, list[DiskEntry]]:
    sid = take_snapshot(conn, vm_id, f"imagetool backup {name}",
                        disk_ids=[d.id for d in disks]).id
    state["snapshot_id"] = sid
    try:
        staged.save_state(state)
        layers = ops.snapshot_layers(conn, vm_id, sid)
        missing = [d.id for d in disks if not layers.get(d.id)]
        if missing:
            raise EngineError(f"snapshot {sid} has no volume for disks {', '.join(missing)}")

        def source(d: ops.VmDisk, incremental: bool) -> dict:
            return {"snapshot_id": layers[d.id], "shallow": incremental}

        entries = _fetch_all(conn, disks, base, staged, source=source,
                             why_full=lambda d: None, **kw)
    except BaseException:
        if _undo(lambda: remove_snapshot(conn, vm_id, sid)):
            _forget(staged, state, "snapshot_id")
        raise
    return {"snapshot_id": sid}, entries


def _checkpoint_point(conn: Any, vm_id: str, name: str, disks: list, base: Any,
                      staged: Any, state: dict, **kw: Any) -> tuple[dict, list[DiskEntry]]:
    from_cp = base.engine.get("checkpoint_id") if base else None
    made: list[Any] = []
    try:
        # A Ctrl-C while the request is in flight comes once its answer is
        # kept: the backup the engine made (unknown to the state file) is
        # finalized and its checkpoint removed.
        with interrupts_held():
            made.append(conn.backups.add(vm_id, disk_ids=[d.id for d in disks],
                                         from_checkpoint_id=from_cp,
                                         description=f"imagetool backup {name}"))
    except BaseException:
        if made:
            shielded(lambda: _drop_unrecorded(conn, vm_id, made[0]))
        raise
    backup = made[0]
    state["backup_id"] = backup.id
    state["checkpoint_id"] = backup.to_checkpoint_id
    try:
        staged.save_state(state)
        backup = wait_for_backup(conn, vm_id, backup.id, BackupPhase.READY)
        modes = {d.id: d.backup_mode for d in conn.backups.disks(vm_id, backup.id)}

        def source(d: ops.VmDisk, incremental: bool) -> dict:
            return {"backup_id": backup.id, "dirty": incremental}

        def why_full(d: ops.VmDisk) -> str | None:
            if modes.get(d.id) == "incremental":
                return None
            if d.backup != "incremental":
                return (f"the disk is not enabled for incremental backup (backup: "
                        f"{d.backup or 'none'})")
            return "the engine backs it up in full (it is not in the base checkpoint)"

        entries = _fetch_all(conn, disks, base, staged, source=source, why_full=why_full,
                             **kw)
        phase = ops.finalize_backup(conn, vm_id, backup.id)
        if phase not in (BackupPhase.SUCCEEDED, "gone"):
            raise EngineError(f"backup {backup.id} of VM {vm_id} ended {phase}")
        _forget(staged, state, "backup_id")
    except BaseException:
        if _finalized(conn, vm_id, backup.id):
            _forget(staged, state, "backup_id")
        raise
    return {"backup_id": backup.id, "checkpoint_id": backup.to_checkpoint_id,
            "from_checkpoint_id": from_cp}, entries


def _drop_unrecorded(conn: Any, vm_id: str, backup: Any) -> None:
    """End a backup the run made but never recorded, and drop its checkpoint."""
    if _finalized(conn, vm_id, backup.id) and backup.to_checkpoint_id:
        _undo(lambda: ops.remove_checkpoint(conn, vm_id, backup.to_checkpoint_id))


def _forget(staged: Any, state: dict, key: str) -> None:
    """The engine confirmed the end of what ``state[key]`` names: the next
    run has nothing to clean up for it."""
    state.pop(key, None)
    staged.save_state(state)


def _finalized(conn: Any, vm_id: str, backup_id: str) -> bool:
    """Finalize a failed run's backup; whether the engine confirmed its end."""
    try:
        return ops.finalize_backup(conn, vm_id, backup_id) in BACKUP_ENDED | {"gone"}
    except Exception:
        return False


def _undo(fn: Callable[[], Any]) -> bool:
    """Run a cleanup step after a failure; its own failure must not hide the
    first. Whether it succeeded."""
    try:
        fn()
        return True
    except Exception:
        return False
