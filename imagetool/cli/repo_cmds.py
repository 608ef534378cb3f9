"""``imagetool repo``: the chunk repository (backup repository v2).

A repository of deduplicated, compressed, optionally encrypted chunks on
a directory or S3 (``imagetool.backup.store``). ``init`` makes one;
``add`` writes a point from local images; ``list``, ``export``,
``prune``, ``gc`` and ``verify`` work on the points. Every command takes
``--endpoint``/``--profile`` for S3 and ``--key-file`` (or the
``IMAGETOOL_PASSPHRASE`` environment variable) for an encrypted one.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from imagetool.cli.common import emit_json
from imagetool.cli.store_options import PASSPHRASE_ENV, open_repository, repo_options, repo_secret
from imagetool.units import format_size

@click.group()
def repo() -> None:
    """Backup repository v2: deduplicated chunks on a directory or S3.

    \b
    Disks are cut into fixed chunks (4 MiB by default) stored once per
    repository by their SHA-256, zstd-compressed, AES-256-GCM encrypted
    with --encrypt. A point is an index of chunk ids; prune deletes
    indexes only and gc frees the chunks no index names.
    """


@repo.command("init")
@click.argument("repository")
@click.option("--encrypt", is_flag=True,
              help="Encrypt with --key-file (made if missing) or IMAGETOOL_PASSPHRASE.")
@click.option("--chunk-size", type=click.Choice(["1", "2", "4", "8"]), default="4",
              show_default=True, help="Chunk size in MiB.")
@repo_options
def init(repository: str, encrypt: bool, chunk_size: str, endpoint: str | None,
         profile: str | None, key_file: str | None) -> None:
    """Make a new repository at REPOSITORY (a directory or s3://bucket/prefix)."""
    from imagetool.backup.store import ChunkStore, new_key_file, open_storage
    if encrypt and key_file and not os.path.exists(key_file):
        new_key_file(key_file)
        click.echo(f"imagetool: new key in {key_file}: keep a copy apart from the "
                   "repository, nothing can be restored without it", err=True)
    secret, phrase = repo_secret(key_file)
    if encrypt and secret is None:
        raise click.UsageError(f"--encrypt needs --key-file or {PASSPHRASE_ENV}")
    if not encrypt and key_file:
        raise click.UsageError("--key-file without --encrypt")
    storage = open_storage(repository, endpoint=endpoint, profile=profile, create=True)
    ChunkStore.init(storage, chunk_size=int(chunk_size) << 20,
                    secret=secret if encrypt else None, passphrase=phrase)
    click.echo(f"initialised {'encrypted ' if encrypt else ''}repository {storage.url}")


@repo.command("add")
@click.argument("repository")
@click.argument("vm")
@click.argument("disks", nargs=-1, required=True, metavar="DISK_ID=IMAGE...")
@click.option("--ovf", type=click.Path(dir_okay=False, exists=True), help="The VM's OVF.")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@repo_options
def add(repository: str, vm: str, disks: tuple[str, ...], ovf: str | None, workers: int,
        as_json: bool, endpoint: str | None, profile: str | None,
        key_file: str | None) -> None:
    """Write a full point of VM from local images (raw, qcow2, vmdk)."""
    from imagetool import formats
    from imagetool.backup.store import DiskSource, write_point
    pairs = []
    for d in disks:
        disk_id, sep, path = d.partition("=")
        if not sep or not disk_id or not path:
            raise click.UsageError(f"{d!r}: give DISK_ID=IMAGE")
        pairs.append((disk_id, path))
    store = open_repository(repository, endpoint, profile, key_file, workers)
    backends = []
    try:
        for disk_id, path in pairs:
            backends.append(DiskSource(disk_id, formats.open_image(path, "r")))
        text = open(ovf).read() if ovf else None
        ix = write_point(store, vm, backends, ovf=text, workers=workers)
    finally:
        for s in backends:
            s.backend.close()
    if as_json:
        emit_json({"vm_id": vm, "point": ix.name, "stats": ix.stats})
    else:
        click.echo(f"{vm} {ix.name}: {format_size(ix.stats['logical'])} logical, "
                   f"{format_size(ix.stats['data'])} data, "
                   f"{format_size(ix.stats['written'])} new stored")


@repo.command("list")
@click.argument("repository")
@click.argument("vm", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@repo_options
def list_cmd(repository: str, vm: str | None, as_json: bool, endpoint: str | None,
             profile: str | None, key_file: str | None) -> None:
    """Points per VM: logical size, data, new bytes stored and the ratio."""
    from imagetool.backup.store import list_points, load_index
    store = open_repository(repository, endpoint, profile, key_file)
    rows = []
    for vm_id, name in list_points(store, vm):
        ix = load_index(store, vm_id, name)
        s = ix.stats
        rows.append({"vm_id": vm_id, "point": name, "parent": ix.parent,
                     "disks": len(ix.disks), "logical": s.get("logical", 0),
                     "data": s.get("data", 0), "stored": s.get("written", 0)})
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        ratio = f"{r['data'] / r['stored']:.1f}x" if r["stored"] else "all reused"
        click.echo(f"{r['vm_id']}  {r['point']}  {r['disks']} disks  "
                   f"{format_size(r['logical'])} logical  {format_size(r['data'])} data  "
                   f"{format_size(r['stored'])} new ({ratio})")


def _point(store: Any, vm: str, point: str | None) -> Any:
    from imagetool.backup.store import StoreError, latest, load_index
    if point:
        return load_index(store, vm, point)
    ix = latest(store, vm)
    if ix is None:
        raise StoreError(f"{store.url}: no point of VM {vm}")
    return ix


@repo.command("export")
@click.argument("repository")
@click.argument("vm")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--point", help="Point name (default: the newest).")
@click.option("--format", "out_format", type=click.Choice(["qcow2", "raw"]), default="qcow2",
              show_default=True)
@click.option("--force", is_flag=True, help="Replace existing files.")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True)
@repo_options
def export(repository: str, vm: str, outdir: str, point: str | None, out_format: str,
           force: bool, workers: int, endpoint: str | None, profile: str | None,
           key_file: str | None) -> None:
    """Write a point's disks to OUTDIR as images qemu-img reads (and vm.ovf)."""
    from imagetool.backup.store import export_point
    store = open_repository(repository, endpoint, profile, key_file, workers)
    ix = _point(store, vm, point)
    for path in export_point(store, ix, outdir, out_format, workers=workers, force=force):
        click.echo(path)


@repo.command("prune")
@click.argument("repository")
@click.argument("vm", required=False)
@click.option("--keep-last", type=click.IntRange(0), default=0)
@click.option("--keep-hourly", type=click.IntRange(0), default=0)
@click.option("--keep-daily", type=click.IntRange(0), default=0)
@click.option("--keep-weekly", type=click.IntRange(0), default=0)
@click.option("--keep-monthly", type=click.IntRange(0), default=0)
@click.option("--keep-yearly", type=click.IntRange(0), default=0)
@click.option("--dry-run", is_flag=True, help="Say what would go; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@repo_options
def prune_cmd(repository: str, vm: str | None, keep_last: int, keep_hourly: int,
              keep_daily: int, keep_weekly: int, keep_monthly: int, keep_yearly: int,
              dry_run: bool, as_json: bool, endpoint: str | None, profile: str | None,
              key_file: str | None) -> None:
    """Remove points no keep rule keeps (indexes only; run gc to free chunks)."""
    from imagetool.backup.store import prune
    store = open_repository(repository, endpoint, profile, key_file)
    out = prune(store, vm, dry_run=dry_run, last=keep_last, hourly=keep_hourly,
                daily=keep_daily, weekly=keep_weekly, monthly=keep_monthly,
                yearly=keep_yearly)
    if as_json:
        emit_json([d.to_dict() for d in out])
        return
    for d in out:
        verb = "keep  " if d.keep else ("would remove" if dry_run else "remove")
        click.echo(f"{verb} {d.vm_id} {d.name}: {d.reason}")


@repo.command("gc")
@click.argument("repository")
@click.option("--grace", type=click.FloatRange(0), default=24 * 3600 + 300, show_default=True,
              help="Seconds: chunks modified more recently are kept (running backups).")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@repo_options
def gc_cmd(repository: str, grace: float, dry_run: bool, as_json: bool,
           endpoint: str | None, profile: str | None, key_file: str | None) -> None:
    """Delete chunks no point references (mark and sweep)."""
    from imagetool.backup.store import collect
    res = collect(open_repository(repository, endpoint, profile, key_file), grace=grace,
                  dry_run=dry_run)
    if as_json:
        emit_json(res.to_dict())
        return
    for note in res.notes:
        click.echo(f"imagetool: {note}", err=True)
    click.echo(f"{res.indexes} points, {res.chunks} chunks, {res.referenced} referenced; "
               f"{'would delete' if dry_run else 'deleted'} {res.deleted} "
               f"({format_size(res.deleted_bytes)}), {res.kept_recent} kept as recent")


@repo.command("verify")
@click.argument("repository")
@click.argument("vm", required=False)
@click.option("--point", help="Only this point (of VM).")
@click.option("--sample", type=click.FloatRange(0, 100, min_open=True), default=100.0,
              show_default=True, help="Percentage of the chunks to read.")
@click.option("--checksums", is_flag=True,
              help="Also read each disk whole and compare its recorded guest checksum.")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@repo_options
def verify_cmd(repository: str, vm: str | None, point: str | None, sample: float,
               checksums: bool, workers: int, as_json: bool, endpoint: str | None,
               profile: str | None, key_file: str | None) -> None:
    """Check indexes, chunk presence and chunk content; exit 1 on damage."""
    from imagetool.backup.store import verify
    rep = verify(open_repository(repository, endpoint, profile, key_file, workers), vm, point,
                 sample=sample, workers=workers, checksums=checksums)
    if as_json:
        emit_json(rep.to_dict())
    else:
        click.echo(f"{rep.points} points, {rep.chunks} chunks: {rep.checked} read "
                   f"({format_size(rep.checked_bytes)}), {rep.missing} missing, "
                   f"{rep.bad} damaged")
        for d in rep.damaged:
            for p in d.problems:
                click.echo(f"damaged {d.vm_id} {d.name}: {p}")
    if not rep.ok:
        sys.exit(1)
