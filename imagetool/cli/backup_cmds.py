"""``imagetool backup create|list|verify|restore|prune``: VM backups into a
repository of restore points (qcow2 chains, or chunks: ``backup_repo_cmds``).
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

import click

from imagetool.cli.common import JSON, checksum_json, emit, emit_json
from imagetool.cli.config import EngineOptions, engine_options, open_connection
from imagetool.cli.backup_repo_cmds import (KEEP_RULES, chunk_list, chunk_prune, chunk_verify,
                                            export_cmd, gc_cmd, init, keep_options, migrate_cmd,
                                            print_points, vm_label)
from imagetool.cli.backup_serve_cmd import serve
from imagetool.cli.progress import progress_bar, run_with_bars, vm_disks_size
from imagetool.cli.store_options import RepoOptions, is_chunk_repository, repo_options
from imagetool.errors import ImagetoolError, NotFound
from imagetool.threads import interrupts_ignored
from imagetool.units import count, format_seconds, format_size

if TYPE_CHECKING:
    from imagetool.backup.results import VerifyResult


@click.group()
def backup() -> None:
    """VM backups: full then incremental restore points in a directory.

    \b
    Each VM has a chain of points; each point holds the VM's OVF, one qcow2
    file per disk (an incremental's backing file is the previous point's
    file, by relative name: qemu-img reads the chain) and manifest.json.
    Incrementals use the engine's VM backup API with checkpoints (oVirt 4.4+)
    or snapshots on older engines (--method).

    \b
    A repository made by backup init (a directory or s3://bucket/prefix)
    holds deduplicated, compressed, optionally encrypted chunks instead;
    every command takes either. serve reads a point over NBD, export
    writes it as images, migrate moves a qcow2-chain repository into one.
    """


def _looks_like_dir(arg: str) -> bool:
    """A path rather than a VM name (oVirt VM names have no ``/``)."""
    return os.sep in arg or arg in (".", "..") or os.path.isdir(arg)


def _is_vm(conn: Any, name: str) -> bool:
    try:
        conn.vms.find(name)
    except NotFound:
        return False
    return True


def _create_args(conn: Any, args: tuple[str, ...]) -> tuple[str, list[str]]:
    """(directory, VMs) of ``backup create DIR VM...``.

    The directory comes first, as in every backup command (and restic's or
    borg's). The old order ``VM... DIR`` still works, with a warning: it is
    recognised when only the last argument is a path (or an existing
    directory), or, when neither end is, when only the first one names a
    VM of the engine.
    """
    if len(args) < 2:
        raise click.UsageError("give the backup directory, then the VMs: "
                               "imagetool backup create DIR VM...")
    first, last = args[0], args[-1]
    old = (not _looks_like_dir(first) and
           (_looks_like_dir(last) or (_is_vm(conn, first) and not _is_vm(conn, last))))
    if not old:
        if not os.path.exists(first) and _is_vm(conn, first):
            # Both ends VM names (the directory forgotten): never make a
            # repository named after a VM and back up the rest into it.
            raise click.UsageError(f"{first!r} is a VM of the engine, not a backup "
                                   "directory: give the directory first: "
                                   "imagetool backup create DIR VM...")
        return first, list(args[1:])
    directory, vms = last, list(args[:-1])
    click.echo("imagetool: warning: the directory last (backup create VM... DIR) is "
               "deprecated; put it first: imagetool backup create "
               + shlex.join([directory, *vms]), err=True)
    return directory, vms


def _repository(location: str, repo: RepoOptions, workers: int = 8) -> Any:
    """The open chunk repository ``location`` names, or the qcow2-chain
    directory itself (the S3 and key options apply to the former only)."""
    if is_chunk_repository(location):
        return repo.open(location, workers)
    if any(vars(repo).values()):
        raise click.UsageError(f"{location}: not a chunk repository: --endpoint, --profile "
                               "and --key-file apply to chunk repositories only")
    return location


def _vm_total(conn: Any, vm: str) -> int:
    """A VM's bar total; 0 (no percentage) for a VM the run will report missing."""
    try:
        return vm_disks_size(conn, vm)
    except ImagetoolError:
        return 0


@backup.command("create")
@click.argument("args", nargs=-1, required=True, metavar="DIR VM...")
@click.option("--full", is_flag=True, help="A full point even when a chain exists.")
@click.option("--method", type=click.Choice(["auto", "checkpoint", "snapshot"]),
              default="auto", show_default=True,
              help="checkpoint: the engine's VM backup API (4.4+); snapshot: any engine; "
                   "auto: checkpoint where the engine has it.")
@click.option("--jobs", type=click.IntRange(1, 16), default=1, show_default=True,
              help="VMs backed up at a time.")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Parallel connections per disk.")
@click.option("--inactivity-timeout", type=click.IntRange(1), default=60, show_default=True,
              help="Seconds without activity before the engine ends a transfer of a "
                   "killed run (and unlocks its disk).")
@JSON
@repo_options
@engine_options
def create(args: tuple[str, ...], full: bool, method: str, jobs: int,
           workers: int, inactivity_timeout: int, as_json: bool, repo: RepoOptions,
           engine: EngineOptions) -> None:
    """Make one new restore point of each VM (name or id) in DIR.

    DIR is a directory of qcow2 chains (made if missing) or a chunk
    repository (a directory or s3://bucket/prefix made by backup init).
    The directory comes first, as in the other backup commands; the old
    order (VM... DIR) still works, with a warning.
    """
    from imagetool.backup import backup_vm

    with open_connection(engine) as conn:
        directory, vms = _create_args(conn, args)
        repository = _repository(directory, repo, workers * jobs)
        results = run_with_bars(jobs, [(v, _vm_total(conn, v)) for v in vms], lambda i, bars: (
            backup_vm(conn, vms[i], repository, full=full, method=method, workers=workers,
                      inactivity_timeout=inactivity_timeout, progress=bars.callback(i),
                      log=lambda text: bars.write(f"imagetool: {text}"))))
    errors = [(v, r) for v, r in zip(vms, results) if isinstance(r, BaseException)]
    if as_json:
        emit_json([{"vm": v, "error": str(r)} if isinstance(r, BaseException)
                   else dict(r, disks=[checksum_json(d) for d in r["disks"]])
                   for v, r in zip(vms, results)])
    else:
        for r in (r for r in results if not isinstance(r, BaseException)):
            why = f" ({r['reason']})" if r["mode"] == "full" and r.get("reason") else ""
            click.echo(f"VM {r['vm_name']}: {r['mode']} point {r['point']} by {r['method']}"
                       f"{why}: {format_size(r['bytes'])} moved in "
                       f"{format_seconds(r['seconds'])}")
            for d in r["disks"]:
                why = f" ({d['reason']})" if d.get("reason") and r["mode"] != "full" else ""
                click.echo(f"  disk {d['name']}: {d['mode']}{why}")
    for v, e in errors:
        click.echo(f"imagetool: error: VM {v}: {e}", err=True)
    if errors:
        sys.exit(max(getattr(e, "exit_code", 1) for _, e in errors))


def _chunk_options_only(directory: str, **given: Any) -> None:
    """Usage error if an option only chunk repositories take is given for a
    qcow2-chain repository."""
    used = [name for name, value in given.items() if value]
    if used:
        opts = ", ".join("--" + n.replace("_", "-") for n in used)
        raise click.UsageError(f"{directory}: {opts}: for chunk repositories only (made by "
                               "backup init); this one holds qcow2 chains")


def _verified(out: VerifyResult) -> str:
    return f"{count(out.points, 'point')}, {count(out.files, 'file')}"


def _repo_total(directory: str, vm: str | None, point: str | None, chain: bool) -> int:
    """Guest bytes of the points a command reads (every point of the VMs, or
    ``point`` and, with ``chain``, the points it builds on): a bar's total.
    0 (no percentage) off a terminal or when the repository is not sound,
    which the command itself then reports."""
    if not sys.stderr.isatty():
        return 0
    from imagetool.backup import Repository
    try:
        repo = Repository(directory)
        total = 0
        for vm_id in [repo.find_vm(vm)] if vm else repo.vm_ids():
            every = repo.scan_points(vm_id)
            pts = every
            if point or not chain:
                p = repo.point(vm_id, point)
                pts = repo.chain(p, every) if chain else [p]
            total += sum(d.virtual_size for p in pts for d in p.manifest.disks)
        return total
    except (ImagetoolError, OSError, LookupError, TypeError, ValueError):
        return 0


def _restore_total(repository: Any, vm: str, point: str | None) -> int:
    if isinstance(repository, str):
        return _repo_total(repository, vm, point, chain=False)
    if not sys.stderr.isatty():
        return 0
    from imagetool.backup.store.points import find_point
    try:
        ix = find_point(repository, vm, point)
        return sum(d.virtual_size for d in ix.disks)
    except (ImagetoolError, AttributeError):
        return 0


@backup.command("list")
@click.argument("directory", type=click.Path(file_okay=False), metavar="REPOSITORY")
@click.option("--vm", metavar="VM", help="Only this VM (name or id).")
@JSON
@repo_options
def list_cmd(directory: str, vm: str | None, as_json: bool, repo: RepoOptions) -> None:
    """The VMs of REPOSITORY, their points, size on disk and data held.

    A chunk repository shows per point its logical size, its data, the new
    bytes it stored (before and after compression) and its dedup and
    compression ratios, then the repository's totals.
    """
    from imagetool.backup import list_points

    if is_chunk_repository(directory):
        return chunk_list(directory, vm, as_json, repo)
    _chunk_options_only(directory, **vars(repo))
    print_points(list_points(directory, vm), as_json, lambda p: (
        f"{p['point']}  {p['mode']:<11} {p['method']:<10} "
        f"size {format_size(p['size']):>9}  data {format_size(p['data']):>9}"
        + (f"  <- {p['parent']}" if p["parent"] else "")))


@backup.command("verify")
@click.argument("directory", type=click.Path(file_okay=False), metavar="REPOSITORY")
@click.option("--vm", metavar="VM", help="Only this VM (name or id).")
@click.option("--point", metavar="P", help="Only this point (and the points it builds on).")
@click.option("--sample", type=click.FloatRange(0, 100, min_open=True), default=100.0,
              show_default=True, help="Chunk repositories: percentage of the chunks read.")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Chunk repositories: chunks read and hashed at a time.")
@JSON
@repo_options
def verify_cmd(directory: str, vm: str | None, point: str | None, sample: float,
               workers: int, as_json: bool, repo: RepoOptions) -> None:
    """Check every file's SHA-256 and every point's guest-data checksum.

    \b
    Every bad file is named, one line each, and the exit code is 1; so is
    a directory that is not a backup repository. With --json the report
    (ok, points, files, errors) is printed whatever the outcome.
    A chunk repository: every chunk's content matches its id (and decrypts
    and authenticates), every index's chunks exist, every disk's guest
    checksum equals the one recorded at backup time; damaged points are
    named with what they lost. --sample reads a part of the chunks only.
    """
    from imagetool.backup import verify

    if is_chunk_repository(directory):
        return chunk_verify(directory, vm, point, sample, workers, as_json, repo)
    _chunk_options_only(directory, **vars(repo), sample=sample < 100)

    try:
        with progress_bar(_repo_total(directory, vm, point, chain=True), "verify") as update:
            out = verify(directory, vm=vm, point=point, strict=False, progress=update)
    except ImagetoolError as e:
        if as_json:
            emit_json({"ok": False, "points": 0, "files": 0,
                       "errors": [{"path": os.path.abspath(directory), "error": str(e)}]})
        raise
    if as_json:
        emit_json(out.to_json())
    elif out.ok:
        click.echo(f"verified {_verified(out)}: ok")
    for e in out.errors:
        click.echo(f"imagetool: error: {e.path}: {e.error}", err=True)
    if not out.ok:
        if not as_json:
            click.echo(f"verified {_verified(out)}: {count(len(out.errors), 'error')}")
        sys.exit(1)


@backup.command("restore")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("vm")
@click.option("--point", metavar="P", help="The point to restore (default: the newest).")
@click.option("--sd", "storage_domain", required=True, metavar="NAME",
              help="Storage domain for the new disks.")
@click.option("--name", metavar="N", help="Name of the new VM.")
@click.option("--cluster", metavar="C", help="Cluster of the new VM (default: Default).")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Parallel connections per disk.")
@JSON
@repo_options
@engine_options
def restore_cmd(directory: str, vm: str, point: str | None, storage_domain: str,
                name: str | None, cluster: str | None, workers: int, as_json: bool,
                repo: RepoOptions, engine: EngineOptions) -> None:
    """Create a new VM from a point of VM (name or id) in DIRECTORY (a
    directory of qcow2 chains, or a chunk repository: a directory or
    s3://bucket/prefix)."""
    from imagetool.backup import restore_vm
    from imagetool.backup.restore import restore_chunk_vm

    repository = _repository(directory, repo, workers)
    restore = restore_vm if isinstance(repository, str) else restore_chunk_vm
    with open_connection(engine) as conn:
        with progress_bar(_restore_total(repository, vm, point), "restore") as update:
            out = restore(conn, repository, vm, storage_domain=storage_domain, point=point,
                          name=name, cluster=cluster, workers=workers, progress=update,
                          committed=interrupts_ignored)
    emit(as_json, out.to_json(),
         f"restored point {out.point} as VM {out.vm_name} ({out.vm_id}): "
         f"{count(len(out.disks), 'disk')}, {format_size(out.bytes)} in "
         f"{format_seconds(out.seconds)}, checksums match the manifest")


@backup.command("prune")
@click.argument("directory", type=click.Path(file_okay=False), metavar="REPOSITORY")
@click.option("--keep", type=click.IntRange(1), help="Points kept per VM (the newest).")
@keep_options
@click.option("--dry-run", is_flag=True, help="Chunk repositories: say what would go; "
                                              "delete nothing.")
@click.option("--vm", metavar="VM", help="Only this VM (name or id).")
@JSON
@repo_options
def prune_cmd(directory: str, keep: int | None, keep_last: int, keep_hourly: int,
              keep_daily: int, keep_weekly: int, keep_monthly: int, keep_yearly: int,
              dry_run: bool, vm: str | None, as_json: bool, repo: RepoOptions) -> None:
    """Keep the newest N points per VM; older ones a kept point needs are merged into it.

    \b
    A chunk repository keeps points by calendar, with the rules of Proxmox
    Backup Server and restic: --keep-last N keeps the N newest, then each
    --keep-hourly/daily/weekly/monthly/yearly N keeps the newest point of
    each of its N last periods that holds none kept yet; every decision is
    printed with its reason. Removing a point deletes its index only; run
    backup gc to free the chunks. --keep N means --keep-last N there.
    """
    from imagetool.backup import prune

    rules = dict(zip(KEEP_RULES, (keep_last, keep_hourly, keep_daily, keep_weekly,
                                  keep_monthly, keep_yearly)))
    if is_chunk_repository(directory):
        if keep:
            rules["last"] = max(rules["last"], keep)
        if not any(rules.values()):
            raise click.UsageError("give at least one of --keep-last, --keep-hourly, "
                                   "--keep-daily, --keep-weekly, --keep-monthly, --keep-yearly")
        return chunk_prune(directory, vm, rules, dry_run, as_json, repo)
    _chunk_options_only(directory, **vars(repo), dry_run=dry_run,
                        **{f"keep_{k}": v for k, v in rules.items() if k != "last"})
    keep = keep or keep_last
    if not keep:
        raise click.UsageError("give --keep N (points kept per VM)")
    out = prune(directory, keep, vm=vm)
    if as_json:
        emit_json(out)
    else:
        for v in out:
            click.echo(f"VM {vm_label(v)}: removed {count(len(v['removed']), 'point')}, "
                       f"merged into {', '.join(v['merged']) or 'none'}, "
                       f"kept {count(len(v['kept']), 'point')}")


# The commands of other modules that live in this group.
for _cmd in (init, gc_cmd, export_cmd, migrate_cmd, serve):
    backup.add_command(_cmd)
