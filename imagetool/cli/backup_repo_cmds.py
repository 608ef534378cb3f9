"""``imagetool backup init|gc|export|migrate``: chunk repositories (backup
repository v2, ``imagetool.backup.store``).

``list``, ``verify`` and ``prune`` of ``backup_cmds`` call the ``chunk_*``
functions here when their repository is a chunk one
(``store_options.is_chunk_repository``), so one command works on both
formats.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from imagetool.cli.common import JSON, emit, emit_json
from imagetool.cli.progress import progress_bar
from imagetool.cli.store_options import (PASSPHRASE_ENV, RepoOptions, is_chunk_repository,
                                         repo_options, repo_secret)
from imagetool.errors import ImagetoolError
from imagetool.iocore.backend import Closing
from imagetool.units import count, format_size

WORKERS = click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True,
                       help="Chunks read, hashed or written at a time.")


@click.command("init")
@click.argument("repository")
@click.option("--encrypt", is_flag=True,
              help=f"Encrypt with --key-file (made if missing) or {PASSPHRASE_ENV}.")
@click.option("--chunk-size", type=click.Choice(["1", "2", "4", "8"]),
              help="Chunk size in MiB (default: 1 on a directory, 4 on S3).")
@repo_options
def init(repository: str, encrypt: bool, chunk_size: str, repo: RepoOptions) -> None:
    """Make a chunk repository at REPOSITORY (a directory or s3://bucket/prefix).

    \b
    Disks are cut into fixed chunks (1 MiB, 4 MiB on S3) stored once per
    repository by their SHA-256, zstd-compressed, and with --encrypt sealed
    with AES-256-GCM under a key file or a passphrase (IMAGETOOL_PASSPHRASE).
    A point is an index of chunk ids; prune removes indexes only and gc
    frees the chunks no index names.
    """
    from imagetool.backup.store import ChunkStore, StoreError, new_key_file, open_storage
    key_file = repo.key_file
    if not encrypt and key_file:
        raise click.UsageError("--key-file without --encrypt")
    if encrypt and not key_file and not os.environ.get(PASSPHRASE_ENV):
        raise click.UsageError(f"--encrypt needs --key-file or {PASSPHRASE_ENV}")
    if not is_chunk_repository(repository) and os.path.lexists(repository) and (
            not os.path.isdir(repository) or os.listdir(repository)):
        raise StoreError(f"{repository}: exists and is not an empty directory; give a new "
                         "one (backup migrate moves a qcow2-chain repository)")
    made_key = encrypt and key_file is not None and not os.path.exists(key_file)
    if made_key:
        new_key_file(key_file)
    secret, phrase = repo_secret(key_file)
    try:
        storage = open_storage(repository, endpoint=repo.endpoint, profile=repo.profile,
                               create=True)
        ChunkStore.init(storage, chunk_size=int(chunk_size) << 20 if chunk_size else None,
                        secret=secret if encrypt else None, passphrase=phrase)
    except BaseException:
        if made_key:
            os.unlink(key_file)         # a key of no repository
        raise
    if made_key:
        click.echo(f"imagetool: new key in {key_file}: keep a copy apart from the "
                   "repository, nothing can be restored without it", err=True)
    click.echo(f"initialised {'encrypted ' if encrypt else ''}repository {storage.url}")


# --- list ----------------------------------------------------------------------------

def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 2) if b else None


def point_row(store: Any, ix: Any) -> dict:
    """A point's line of ``backup list``: its sizes and ratios.

    ``logical``: the disks' virtual sizes; ``data``: the guest bytes of its
    non-zero chunks; ``new``: those of the chunks it was first to store
    (before compression); ``stored``: the bytes they took in the repository.
    ``dedup`` is data/new (how many times what the point holds is larger
    than what it added), ``compression`` new/stored. The fields of a
    qcow2-chain repository's list are there too: ``size`` (what the point
    added to the repository: ``stored``), ``time``, ``mode``, ``method``."""
    cs = store.chunk_size
    data = sum(min(cs, d.virtual_size - i * cs) for d in ix.disks
               for i, c in enumerate(d.chunks) if c is not None)
    s = ix.stats
    new = max(0, int(s.get("data", 0)) - int(s.get("reused", 0)))
    stored = int(s.get("written", 0))
    when = ix.manifest.get("time") or time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                    time.gmtime(ix.timestamp))
    return {"vm_id": ix.vm_id, "vm_name": ix.manifest.get("vm_name"), "point": ix.name,
            "parent": ix.parent, "time": when, "timestamp": ix.timestamp,
            "mode": ix.manifest.get("mode"), "method": ix.manifest.get("method"),
            "size": stored,
            "disks": [{"disk_id": d.disk_id, "virtual_size": d.virtual_size,
                       "name": d.meta.get("name")} for d in ix.disks],
            "logical": sum(d.virtual_size for d in ix.disks), "data": data, "new": new,
            "stored": stored, "dedup": _ratio(data, new), "compression": _ratio(new, stored)}


def vm_label(v: dict) -> str:
    """``web1 (<id>)``: the name the VM had at its newest point, and its id."""
    return f"{v['vm_name']} ({v['vm_id']})" if v.get("vm_name") else v["vm_id"]


def print_points(vms: list[dict], as_json: bool, line: Any) -> None:
    """What ``backup list`` prints of either kind of repository: the list
    as it is with ``--json``, else a line a VM and ``line(point)`` a point."""
    if as_json:
        emit_json(vms)
        return
    for v in vms:
        click.echo(f"VM {vm_label(v)}: {count(len(v['points']), 'point')}")
        for p in v["points"]:
            click.echo("  " + line(p))


def _times(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}x"


def chunk_list(repository: str, vm: str | None, as_json: bool, repo: RepoOptions) -> None:
    """``backup list`` of a chunk repository."""
    from imagetool.backup.store import list_points, load_index
    from imagetool.backup.store.points import find_vm
    store = repo.open(repository)
    vm_id = find_vm(store, vm) if vm else None
    rows = [point_row(store, load_index(store, v, n)) for v, n in list_points(store, vm_id)]
    vms: list[dict] = []
    for r in rows:          # by VM, oldest first, as a qcow2-chain repository's list
        if not vms or vms[-1]["vm_id"] != r["vm_id"]:
            vms.append({"vm_id": r["vm_id"], "points": []})
        vms[-1]["vm_name"] = r["vm_name"]       # the newest point's
        vms[-1]["points"].append({k: v for k, v in r.items() if k not in ("vm_id", "vm_name")})
    print_points(vms, as_json, lambda r: (
        f"{r['point']}  logical {format_size(r['logical']):>9}  "
        f"data {format_size(r['data']):>9}  new {format_size(r['new']):>9}  "
        f"stored {format_size(r['stored']):>9}  dedup {_times(r['dedup']):>6}  "
        f"compression {_times(r['compression']):>6}"))
    if as_json:
        return
    chunks = stored = 0
    for info in store.storage.list("chunks/"):
        chunks += 1
        stored += info.size
    data = sum(r["data"] for r in rows)
    click.echo(f"{store.url}: {count(len(rows), 'point')}, {format_size(data)} of "
               f"data in {count(chunks, 'chunk')} taking {format_size(stored)} "
               f"({_times(_ratio(data, stored))} smaller)")


# --- verify ----------------------------------------------------------------------------

def chunk_verify(repository: str, vm: str | None, point: str | None, sample: float,
                 workers: int, as_json: bool, repo: RepoOptions) -> None:
    """``backup verify`` of a chunk repository: exit 1 naming damaged points."""
    from imagetool.backup.store import verify
    from imagetool.backup.store.points import find_vm
    try:
        store = repo.open(repository, workers)
        vm_id = find_vm(store, vm) if vm else None
        total = _chunk_bytes(store, vm_id, point) * sample / 100
        with progress_bar(round(total), "verify") as update:
            rep = verify(store, vm_id, point, sample=sample, workers=workers, checksums=True,
                         progress=update)
    except ImagetoolError as e:
        if as_json:     # the shape of a qcow2-chain repository's report
            emit_json({"ok": False, "points": 0, "repository": repository,
                       "errors": [{"path": repository, "error": str(e)}]})
        raise
    if as_json:
        emit_json(dict(rep.to_dict(), repository=store.url, sample=sample,
                       errors=[{"path": f"{d.vm_id}/{d.name}", "error": p}
                               for d in rep.damaged for p in d.problems]))
    else:
        what = "chunks read" if sample >= 100 else f"chunks read ({sample:g}% sample)"
        click.echo(f"verified {count(rep.points, 'point')}, {rep.checked} of {rep.chunks} "
                   f"{what} ({format_size(rep.checked_bytes)}): "
                   + ("ok" if rep.ok else f"{rep.missing} missing, {rep.bad} damaged, "
                      f"{count(len(rep.damaged), 'damaged point')}"))
        if sample < 100:
            click.echo("imagetool: guest checksums not compared (they need every chunk)",
                       err=True)
    for d in rep.damaged:
        for p in d.problems:
            click.echo(f"imagetool: error: point {d.vm_id} {d.name}: {p}", err=True)
    if not rep.ok:
        sys.exit(1)


def _chunk_bytes(store: Any, vm_id: str | None, point: str | None) -> int:
    """A verify bar's total (on a terminal): the guest bytes of the chunks
    the points name, each counted once. 0 (no percentage) when an index
    cannot be read: verify then reports it."""
    from imagetool.backup.store import list_points, load_index
    if not sys.stderr.isatty():
        return 0
    sizes: dict[str, int] = {}
    cs = store.chunk_size
    try:
        for v, n in list_points(store, vm_id):
            if point is None or n == point:
                for d in load_index(store, v, n).disks:
                    for i, c in enumerate(d.chunks):
                        if c is not None:
                            sizes[c] = min(cs, d.virtual_size - i * cs)
    except ImagetoolError:
        return 0
    return sum(sizes.values())


# --- prune -----------------------------------------------------------------------------

KEEP_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_PERIODS = {"hourly": "hours", "daily": "days", "weekly": "ISO weeks", "monthly": "months",
            "yearly": "years"}


def keep_options(fn):
    """``--keep-last`` ... ``--keep-yearly`` (chunk repositories' calendar rules)."""
    for rule in reversed(KEEP_RULES):
        text = ("Chunk repositories: keep the N newest points." if rule == "last" else
                f"... and the newest point of each of the N last {_PERIODS[rule]}.")
        fn = click.option(f"--keep-{rule}", type=click.IntRange(0), default=0, metavar="N",
                          help=text)(fn)
    return fn


def chunk_prune(repository: str, vm: str | None, keep: dict[str, int], dry_run: bool,
                as_json: bool, repo: RepoOptions) -> None:
    """``backup prune`` of a chunk repository: calendar rules, indexes only."""
    from imagetool.backup.store import prune
    from imagetool.backup.store.points import find_vm
    store = repo.open(repository)
    vm_id = find_vm(store, vm) if vm else None
    out = prune(store, vm_id, dry_run=dry_run, **keep)
    if as_json:     # per VM, as a qcow2-chain repository's prune
        by_vm: dict[str, dict] = {}
        for d in out:
            v = by_vm.setdefault(d.vm_id, {"vm_id": d.vm_id, "dry_run": dry_run, "kept": [],
                                           "removed": [], "merged": [], "decisions": []})
            v["kept" if d.keep else "removed"].append(d.name)
            v["decisions"].append({"point": d.name, "keep": d.keep, "reason": d.reason})
        emit_json(list(by_vm.values()))
        return
    for d in out:
        verb = "keep  " if d.keep else ("would remove" if dry_run else "remove")
        click.echo(f"{verb} {d.vm_id} {d.name}: {d.reason}")
    gone = sum(1 for d in out if not d.keep)
    if gone and not dry_run:
        click.echo(f"imagetool: {count(gone, 'point')} removed; run backup gc to free "
                   "the chunks no point needs", err=True)


# --- gc --------------------------------------------------------------------------------

@click.command("gc")
@click.argument("repository")
@click.option("--grace", type=click.FloatRange(0), default=24 * 3600 + 300, show_default=True,
              help="Seconds: chunks modified more recently are kept (running backups).")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@JSON
@repo_options
def gc_cmd(repository: str, grace: float, dry_run: bool, as_json: bool,
           repo: RepoOptions) -> None:
    """Delete the chunks of a chunk repository that no point names.

    Mark and sweep: chunks modified within the grace period (24 h 5 min, as
    Proxmox Backup Server) are kept, so a backup running meanwhile is safe.
    """
    from imagetool.backup.store import collect
    if not is_chunk_repository(repository):
        raise click.UsageError(f"{repository}: not a chunk repository (backup gc works on "
                               "repositories made by backup init)")
    res = collect(repo.open(repository), grace=grace, dry_run=dry_run)
    if as_json:
        emit_json(res.to_dict())
        return
    for note in res.notes:
        click.echo(f"imagetool: {note}", err=True)
    click.echo(f"{count(res.indexes, 'point')}, {count(res.chunks, 'chunk')}, "
               f"{res.referenced} referenced; {'would delete' if dry_run else 'deleted'} "
               f"{res.deleted} ({format_size(res.deleted_bytes)}), "
               f"{res.kept_recent} kept as recent")


# --- export ----------------------------------------------------------------------------

@click.command("export")
@click.argument("repository")
@click.argument("vm")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--point", metavar="P", help="The point (default: the newest).")
@click.option("--format", "out_format", type=click.Choice(["qcow2", "raw"]), default="qcow2",
              show_default=True)
@click.option("--force", is_flag=True, help="Replace existing files.")
@WORKERS
@JSON
@repo_options
def export_cmd(repository: str, vm: str, outdir: str, point: str | None, out_format: str,
               force: bool, workers: int, as_json: bool, repo: RepoOptions) -> None:
    """Write a point's disks to OUTDIR as images qemu-img reads, and vm.ovf.

    One file per disk, OUTDIR/DISK_ID.qcow2 (or .raw), sparse, owner-only;
    works on chunk and qcow2-chain repositories alike.
    """
    with open_point(repository, vm, point, repo, workers) as pt:
        total = sum(b.size for _, b in pt.disks)
        from imagetool.backup.store.reader import export_disks
        with progress_bar(total, "export") as update:
            paths = export_disks(pt.disks, pt.ovf, outdir, out_format, workers=workers,
                                 force=force, progress=update)
    if as_json:
        emit_json({"vm_id": pt.vm_id, "point": pt.name, "format": out_format,
                   "files": paths})
    else:
        for path in paths:
            click.echo(path)


class OpenPoint(Closing):
    """A point of either repository format, its disks open as Backends:
    ``vm_id``, ``name``, ``ovf`` and ``disks`` (``(disk_id, backend)``)."""

    def __init__(self, vm_id: str, name: str, ovf: str | None, disks: list) -> None:
        self.vm_id, self.name, self.ovf, self.disks = vm_id, name, ovf, disks

    def close(self) -> None:
        for _, b in self.disks:
            b.close()


def open_point(repository: str, vm: str, point: str | None, repo: RepoOptions,
               workers: int = 4) -> OpenPoint:
    """The point ``point`` (default: the newest) of VM ``vm`` (name or id) in
    a chunk or qcow2-chain repository."""
    if is_chunk_repository(repository):
        from imagetool.backup.store import PointBackend
        from imagetool.backup.store.points import find_point
        store = repo.open(repository, workers)
        ix = find_point(store, vm, point)
        return OpenPoint(ix.vm_id, ix.name, ix.ovf, [
            (d.disk_id, PointBackend(store, d, f"{ix.vm_id}/{ix.name} disk {d.disk_id}"))
            for d in ix.disks])
    if any(vars(repo).values()):
        raise click.UsageError(f"{repository}: --endpoint, --profile and --key-file apply "
                               "to chunk repositories only")
    from imagetool.backup import Repository
    from imagetool.backup.maintain import checked_ovf
    repo = Repository(repository)
    vm_id = repo.find_vm(vm)
    every = repo.points(vm_id)
    p = repo.point(vm_id, point)
    out = OpenPoint(vm_id, p.name, checked_ovf(p), [])
    try:
        for d in p.manifest.disks:
            out.disks.append((d.disk_id, repo.open_disk(p, d.disk_id, every)))
    except BaseException:
        out.close()
        raise
    return out


# --- migrate ---------------------------------------------------------------------------

@click.command("migrate")
@click.argument("old", type=click.Path(file_okay=False, exists=True))
@click.argument("new")
@WORKERS
@JSON
@repo_options
def migrate_cmd(old: str, new: str, workers: int, as_json: bool, repo: RepoOptions) -> None:
    """Move every point of the qcow2-chain repository OLD into the chunk repository NEW.

    \b
    NEW is made by backup init first (encrypted, on S3, as wanted). Every
    VM's points are written oldest first with their names, times, OVF and
    manifest facts; an incremental point reads only what its own qcow2
    layer holds. OLD is left as it was. Points NEW already has are skipped,
    so an interrupted migration is finished by running it again. Each
    point is verified once written (every chunk read back against its id,
    every disk's guest checksum against OLD's manifest); one that fails is
    not kept and is named, and the exit code is 1.
    """
    from imagetool.backup.store.migrate import migrate, point_total
    if is_chunk_repository(old):
        raise click.UsageError(f"{old}: already a chunk repository")
    if not is_chunk_repository(new):
        raise click.UsageError(f"{new}: not a chunk repository; make it first with "
                               "imagetool backup init")
    store = repo.open(new, workers)
    total = point_total(old) if sys.stderr.isatty() else 0
    with progress_bar(total, "migrate") as update:
        res = migrate(old, store, workers=workers, progress=update)
    emit(as_json, res.to_dict(),
         f"migrated {count(len(res.written), 'point')} ({format_size(res.bytes_read)} of data, "
         f"{format_size(res.bytes_stored)} stored), skipped {count(len(res.skipped), 'point')} "
         f"already in {store.url}\nverified {count(len(res.written) + len(res.failed), 'point')} "
         "as written (chunks and guest checksums): "
         + ("ok" if res.ok else f"{len(res.failed)} failed"))
    for vm_id, name, problems in res.failed:
        for p in problems:
            click.echo(f"imagetool: error: point {vm_id} {name} not migrated: {p}", err=True)
    if not res.ok:
        sys.exit(1)
