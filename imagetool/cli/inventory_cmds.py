"""``imagetool disks|sds|transfers``: look at and tidy the engine's inventory."""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Sequence

import click

from imagetool.cli.common import SIZE, emit, emit_json
from imagetool.cli.config import (EngineOptions, engine_view, json_engine_options,
                                  naming_lock_holders, open_connection)
from imagetool.engine import Disk, ImageTransfer, StorageDomain
from imagetool.errors import ImagetoolError
from imagetool.units import format_size

DISK_LIST_KEYS = ("id", "name", "status", "format", "provisioned_size", "actual_size")


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(h) for h in headers]] + [
        ["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in cells)


def _size(n: int | None) -> str:
    return "-" if n is None else format_size(n)


def _show(d: dict[str, Any]) -> str:
    """``key: value`` lines for one entity (a show command's text)."""
    width = max(len(k) for k in d)
    lines = []
    for k, v in d.items():
        if isinstance(v, (list, tuple)):
            v = ", ".join(v) or "-"
        lines.append(f"{k.ljust(width)}  {'-' if v is None else v}")
    return "\n".join(lines)


def _print_list(as_json: bool, items: Sequence[Any], json_row: Callable[[Any], Any],
                headers: Sequence[str], table_row: Callable[[Any], Sequence[Any]]) -> None:
    """A list command's output: JSON rows, or a table with ``headers``."""
    emit(as_json, [json_row(x) for x in items],
         _table(headers, [table_row(x) for x in items]))


def _list_command(group: click.Group, doc: str, fetch: Callable[..., Sequence[Any]],
                  json_row: Callable[[Any], Any], headers: Sequence[str],
                  table_row: Callable[[Any], Sequence[Any]], *options: Callable) -> None:
    """Add ``GROUP list [OPTIONS] [--json]``, printing what ``fetch(conn,
    **options)`` returns as ``_print_list`` does; ``doc`` is its help."""
    def list_command(as_json: bool, engine: EngineOptions, **kwargs: Any) -> None:
        with open_connection(engine) as conn:
            found = fetch(conn, **kwargs)
        _print_list(as_json, found, json_row, headers, table_row)

    for decorate in reversed([group.command("list", help=doc), *options,
                              json_engine_options]):
        list_command = decorate(list_command)


SEARCH = click.option("--search", metavar="QUERY",
                      help="Engine search expression (e.g. name=web*).")


# --- disks -----------------------------------------------------------------

@click.group()
def disks() -> None:
    """List, show, update, copy, move and remove disks."""


# Old engines may fill only the alias; show it as the name then.
_list_command(disks, "List disks.",
              lambda conn, search, max_: conn.disks.list(search=search, max=max_),
              lambda d: {k: (d.name or d.alias) if k == "name" else getattr(d, k)
                         for k in DISK_LIST_KEYS},
              ("ID", "NAME", "STATUS", "FORMAT", "VIRTUAL", "ACTUAL"),
              lambda d: (d.id, d.name or d.alias, d.status, d.format,
                         _size(d.provisioned_size), _size(d.actual_size)),
              SEARCH, click.option("--max", "max_", type=int, metavar="N",
                                   help="Return at most N disks."))


@engine_view(disks, "show", "disk")
def disks_show(disk: str, as_json: bool, engine: EngineOptions) -> None:
    """Show one disk (by id or name)."""
    with open_connection(engine) as conn:
        d = conn.disks.find(disk).to_dict()
    emit(as_json, d, _show(d))


@disks.command("remove")
@click.argument("disk_refs", metavar="DISK...", nargs=-1, required=True)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_engine_options
def disks_remove(disk_refs: tuple[str, ...], yes: bool, as_json: bool,
                 engine: EngineOptions) -> None:
    """Remove disks (by id or name). Fails for disks that are locked."""
    if not yes and not sys.stdin.isatty():
        raise click.UsageError("refusing to remove disks without --yes when not on a terminal")
    results: list[dict[str, Any]] = []
    with open_connection(engine) as conn:
        targets: list[tuple[str, Disk | None, str | None]] = []
        for ref in disk_refs:
            try:
                targets.append((ref, conn.disks.find(ref), None))
            except ImagetoolError as e:
                targets.append((ref, None, str(e)))
        if not yes:
            names = ", ".join(f"{d.name} ({d.id})" for _, d, _ in targets if d)
            if names and not click.confirm(f"Remove {names}?", err=True):
                raise ImagetoolError("nothing removed")
        for ref, d, error in targets:
            if d is not None:
                try:
                    with naming_lock_holders(conn):
                        conn.disks.remove(d.id or ref)
                except ImagetoolError as e:
                    error = str(e)
            results.append({"disk": ref, "id": d.id if d else None,
                            "name": d.name if d else None,
                            "removed": error is None, "error": error})
    if as_json:
        emit_json(results)
    else:
        for r in results:
            if r["removed"]:
                click.echo(f"removed {r['name']} ({r['id']})")
            else:
                click.echo(f"imagetool: error: {r['disk']}: {r['error']}", err=True)
    failed = sum(1 for r in results if not r["removed"])
    if failed:
        # Exit code 1 through the CLI's error mapping.
        raise ImagetoolError(f"{failed} of {len(results)} disks not removed")


@engine_view(disks, "layers", "disk")
def disks_layers(disk: str, as_json: bool, engine: EngineOptions) -> None:
    """The disk's layers (disk snapshots), base first."""
    from imagetool.snapshots import _vm_of_disk, disk_layers

    with open_connection(engine) as conn:
        d = conn.disks.find(disk)
        layers = disk_layers(conn, d)
        dates: dict[str, Any] = {}
        try:
            vm = _vm_of_disk(conn, d.id or "")
            if vm is not None:
                dates = {s.id: s.date for s in conn.snapshots.list(vm.id)}
        except ImagetoolError:
            pass        # the date is a nicety: the layers are what was asked
    rows = [{"id": s.id, "parent": s.parent_id, "format": s.format,
             "actual_size": s.actual_size, "date": dates.get(s.snapshot_id),
             "snapshot_id": s.snapshot_id} for s in layers]
    _print_list(as_json, rows, lambda r: r, ("ID", "PARENT", "FORMAT", "ACTUAL", "DATE"),
                lambda r: (r["id"], r["parent"], r["format"], _size(r["actual_size"]),
                           r["date"]))


def _disk_op(verb: str, as_json: bool, d: Disk) -> None:
    emit(as_json, d.to_dict(), f"{verb} disk {d.name or d.alias} ({d.id}): {d.status}")


def _disk_action(name: str, verb: str, action: str, doc: str, waited: str,
                 *options: Callable) -> None:
    """Add ``disks NAME DISK``: ``imagetool.disks``'s ``action`` on the disk,
    ``options`` passed as its keyword arguments, waiting up to ``--timeout``."""
    def command(disk: str, timeout: int, as_json: bool, engine: EngineOptions,
                **kwargs: Any) -> None:
        from imagetool import disks as lib

        with open_connection(engine) as conn:
            d = getattr(lib, action)(conn, disk, timeout=timeout, **kwargs)
        _disk_op(verb, as_json, d)

    for decorate in reversed([
            disks.command(name, help=doc), click.argument("disk"), *options,
            click.option("--timeout", type=click.IntRange(1), default=3600, show_default=True,
                         help=f"Seconds to wait{waited}."),
            json_engine_options]):
        command = decorate(command)


_TO_SD = click.option("--sd", "storage_domain", required=True, metavar="NAME",
                      help="Target storage domain (name or id).")
_disk_action("copy", "copied to", "copy_disk",
             "Copy a disk to a storage domain; waits until the copy is ok.", " for the copy",
             _TO_SD, click.option("--name", metavar="NAME", help="Name of the copy."))
_disk_action("move", "moved", "move_disk",
             "Move a disk to another storage domain; waits until it is ok there.",
             " for the move", _TO_SD)
_disk_action("sparsify", "sparsified", "sparsify_disk",
             "Free the space the guest does not use (disks without snapshots).", "")


@disks.command("update")
@click.argument("disk")
@click.option("--name", metavar="N", help="New name.")
@click.option("--size", type=SIZE, metavar="SIZE", help="New virtual size (grow only), e.g. 20G.")
@click.option("--backup", type=click.Choice(["incremental", "none"]),
              help="incremental: backups after the next one copy only what changed "
                   "(qcow2 disks); none: every backup of the disk is full.")
@click.option("--timeout", type=click.IntRange(1), default=3600, show_default=True,
              help="Seconds to wait for the engine.")
@json_engine_options
def disks_update(disk: str, name: str | None, size: int | None, backup: str | None,
                 timeout: int, as_json: bool, engine: EngineOptions) -> None:
    """Rename a disk, grow it, or turn incremental backup on or off.

    \b
    Examples:
      imagetool disks update web1-disk1 --backup incremental
      imagetool disks update web1-disk2 --size 200G --name web1-data
    """
    from imagetool.disks import update_disk

    if name is None and size is None and backup is None:
        raise click.UsageError("nothing to change: give --name, --size or --backup")
    with open_connection(engine) as conn:
        d = update_disk(conn, disk, name=name, size=size, backup=backup, timeout=timeout)
    _disk_op("updated", as_json, d)
    if not as_json:
        click.echo(f"  name {d.name or d.alias}, virtual size {_size(d.provisioned_size)}, "
                   f"backup {d.backup or 'none'}")


# --- storage domains -------------------------------------------------------

@click.group()
def sds() -> None:
    """Storage domains."""


def _sd_dict(sd: StorageDomain) -> dict[str, Any]:
    return {"id": sd.id, "name": sd.name, "type": sd.type,
            "status": sd.status or sd.external_status, "storage_type": sd.storage_type,
            "available": sd.available, "used": sd.used, "committed": sd.committed}


_list_command(sds, "List storage domains.", lambda conn: conn.storage_domains.list(),
              _sd_dict, ("ID", "NAME", "TYPE", "STATUS", "AVAILABLE", "USED"),
              lambda sd: (sd.id, sd.name, sd.type, sd.status or sd.external_status,
                          _size(sd.available), _size(sd.used)))


# --- transfers -------------------------------------------------------------

@click.group()
def transfers() -> None:
    """Image transfers the engine knows about."""


def _transfer_dict(t: ImageTransfer) -> dict[str, Any]:
    d = t.to_dict()
    # The signed ticket is a credential: never print it.
    d.pop("signed_ticket", None)
    return d


_list_command(transfers, "List image transfers.", lambda conn: conn.transfers.list(),
              _transfer_dict, ("ID", "DIRECTION", "PHASE", "FORMAT", "DISK", "TRANSFERRED"),
              lambda t: (t.id, t.direction, t.phase, t.format, t.disk_id,
                         _size(t.transferred)))


@engine_view(transfers, "show", "transfer_id", metavar="ID")
def transfers_show(transfer_id: str, as_json: bool, engine: EngineOptions) -> None:
    """Show one image transfer."""
    with open_connection(engine) as conn:
        t = _transfer_dict(conn.transfers.get(transfer_id))
    emit(as_json, t, _show(t))


@engine_view(transfers, "cancel", "transfer_id", metavar="ID")
def transfers_cancel(transfer_id: str, as_json: bool, engine: EngineOptions) -> None:
    """Cancel an image transfer (an uploaded disk is removed by the engine)."""
    with open_connection(engine) as conn:
        conn.transfers.cancel(transfer_id)
        try:
            phase = conn.transfers.get(transfer_id).phase
        except ImagetoolError:
            phase = None  # engines may drop a cancelled transfer at once
    emit(as_json, {"id": transfer_id, "cancelled": True, "phase": phase},
         f"cancelled transfer {transfer_id}" + (f" (phase {phase})" if phase else ""))
