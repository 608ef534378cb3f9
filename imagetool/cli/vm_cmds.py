"""``imagetool vms`` and ``imagetool snapshots``: VMs, their OVF and snapshots.

Thin over ``imagetool.vms`` and ``imagetool.snapshots``. Commands that
change something wait for the engine to finish (with a deadline) and,
when they fail, leave nothing they created behind.
"""

from __future__ import annotations

import os
from typing import Any

import click

from imagetool.cli.common import SIZE, emit, emit_json
from imagetool.cli.config import (EngineOptions, engine_view, json_engine_options,
                                  open_connection)
from imagetool.cli.inventory_cmds import SEARCH, _list_command, _print_list, _show
from imagetool.errors import DestinationExists
from imagetool.units import count

TIMEOUT = click.option("--timeout", type=click.IntRange(1), default=600, show_default=True,
                       help="Seconds to wait for the engine to finish.")


def _vm_dict(vm: Any) -> dict[str, Any]:
    return {"id": vm.id, "name": vm.name, "description": vm.description,
            "status": vm.status, "memory": vm.memory, "cluster_id": vm.cluster_id,
            "template_id": vm.template_id}


def _snap_dict(s: Any, disks: list[Any] | None = None) -> dict[str, Any]:
    d = {"id": s.id, "description": s.description, "status": s.snapshot_status,
         "type": s.snapshot_type, "date": s.date,
         "persist_memorystate": s.persist_memorystate}
    if disks is not None:
        d["disks"] = [{"id": x.id, "name": x.name or x.alias, "image_id": x.image_id}
                      for x in disks]
    return d


# --- vms -------------------------------------------------------------------------

@click.group()
def vms() -> None:
    """VMs: create, remove, list, show, OVF, export to and import from an export domain."""


class DiskSpec(click.ParamType):
    """``--disk``: a size (``10G``: a new empty disk) or an image file to upload."""

    name = "size|file"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, int) or os.path.exists(value):
            return value
        return SIZE.convert(value, param, ctx) if value[:1].isdigit() else self.fail(
            f"{value!r} is neither a size (e.g. 10G) nor an existing image file", param, ctx)


@vms.command("create")
@click.argument("name")
@click.option("--sd", "storage_domain", required=True, metavar="SD",
              help="Data storage domain (name or id) for the disks.")
@click.option("--disk", "disks", multiple=True, type=DiskSpec(), metavar="SIZE|FILE",
              help="A new empty disk of SIZE (e.g. 10G), or an image FILE (raw, qcow2, "
                   "vmdk) uploaded as the disk; repeat for several, the first boots.")
@click.option("--cluster", metavar="C", help="Cluster (name or id) [default: Default].")
@click.option("--memory", type=SIZE, metavar="SIZE", help="Memory, e.g. 2G [engine default].")
@click.option("--cpus", type=click.IntRange(1, 512), metavar="N", help="Virtual CPUs.")
@click.option("--backup", type=click.Choice(["incremental", "none"]), default="incremental",
              show_default=True,
              help="incremental: qcow2 disks whose backups after the first copy only "
                   "what changed; none: each file's own format, every backup full.")
@click.option("--jobs", "workers", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Connections per upload.")
@TIMEOUT
@json_engine_options
def vms_create(name: str, storage_domain: str, disks: tuple[Any, ...], cluster: str | None,
               memory: int | None, cpus: int | None, backup: str, workers: int,
               timeout: int, as_json: bool, engine: EngineOptions) -> None:
    """Create a VM with new or uploaded disks; on failure nothing is left.

    Disks are named NAME-disk1, NAME-disk2... in --disk order.

    \b
    Examples:
      imagetool vms create web1 --disk samples/data-holes.qcow2 --sd data
      imagetool vms create db1 --disk 20G --disk 100G --memory 4G --cpus 2 --sd data
    """
    from imagetool.threads import interrupts_ignored
    from imagetool.vms import create_vm

    with open_connection(engine) as conn:
        v = create_vm(conn, name, storage_domain, disks=disks, cluster=cluster,
                      memory=memory, cpus=cpus, backup=backup, workers=workers,
                      timeout=timeout, committed=interrupts_ignored)
        attached = [a.disk_id for a in conn.vms.disk_attachments(v.id)]
    emit(as_json, {**_vm_dict(v), "disks": attached},
         f"created VM {v.name} ({v.id}) with {count(len(attached), 'disk')}")


@vms.command("remove")
@click.argument("vm")
@click.option("--keep-disks", is_flag=True, help="Detach the disks and keep them.")
@TIMEOUT
@json_engine_options
def vms_remove(vm: str, keep_disks: bool, timeout: int, as_json: bool,
               engine: EngineOptions) -> None:
    """Remove a VM (by name or id) and its disks, or keep them with --keep-disks.

    \b
    Examples:
      imagetool vms remove web1
      imagetool vms remove web1 --keep-disks
    """
    from imagetool.vms import remove_vm

    with open_connection(engine) as conn:
        v, disk_ids = remove_vm(conn, vm, keep_disks=keep_disks, timeout=timeout)
    what = "kept" if keep_disks else "removed"
    emit(as_json, {"id": v.id, "name": v.name, "removed": True, "disks": disk_ids,
                   "disks_kept": keep_disks},
         f"removed VM {v.name} ({v.id}); {count(len(disk_ids), 'disk')} {what}")


_list_command(vms, "List VMs.", lambda conn, search: conn.vms.list(search=search), _vm_dict,
              ("ID", "NAME", "STATUS", "DESCRIPTION"),
              lambda v: (v.id, v.name, v.status, v.description), SEARCH)


@engine_view(vms, "show", "vm")
def vms_show(vm: str, as_json: bool, engine: EngineOptions) -> None:
    """Show one VM (by name or id) with its disks and snapshots."""
    from imagetool.vms import get_vm

    with open_connection(engine) as conn:
        v = get_vm(conn, vm)
        d = {**_vm_dict(v), "disks": [a.disk_id for a in conn.vms.disk_attachments(v.id)],
             "snapshots": [s.id for s in conn.snapshots.list(v.id)]}
    emit(as_json, d, _show(d))


@vms.command("ovf")
@click.argument("vm")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the OVF to FILE (default: standard output).")
@click.option("--force", is_flag=True, help="Overwrite FILE.")
@json_engine_options
def vms_ovf(vm: str, output: str | None, force: bool, as_json: bool,
            engine: EngineOptions) -> None:
    """Print (or save) the VM's OVF, as the engine gives it."""
    from imagetool.transfer.output import atomic_output
    from imagetool.vms import get_vm, vm_ovf

    if output and os.path.lexists(output) and not force:
        raise DestinationExists(output)
    with open_connection(engine) as conn:
        v = get_vm(conn, vm)
        ovf = vm_ovf(conn, v)
    if output:
        with atomic_output(output, force) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(ovf)
    if as_json:
        emit_json({"id": v.id, "name": v.name, "path": output,
                   **({} if output else {"ovf": ovf})})
    elif not output:
        click.echo(ovf, nl=not ovf.endswith("\n"))
    else:
        click.echo(f"saved the OVF of VM {v.name} ({v.id}) to {output}")


@vms.command("export")
@click.argument("vm")
@click.option("--export-domain", required=True, metavar="SD",
              help="The export storage domain (name or id), attached to the VM's data center.")
@click.option("--discard-snapshots", is_flag=True,
              help="Collapse each disk's snapshots into one volume.")
@click.option("--exclusive", is_flag=True,
              help="Overwrite a copy of this VM already on the export domain.")
@click.option("--timeout", type=click.IntRange(1), default=3600, show_default=True,
              help="Seconds to wait for the export.")
@json_engine_options
def vms_export(vm: str, export_domain: str, discard_snapshots: bool, exclusive: bool,
               timeout: int, as_json: bool, engine: EngineOptions) -> None:
    """Export a VM (OVF and disks) to an export storage domain."""
    from imagetool.vms import export_vm, get_vm

    with open_connection(engine) as conn:
        v = get_vm(conn, vm)
        export_vm(conn, v, export_domain, discard_snapshots=discard_snapshots,
                  exclusive=exclusive, timeout=timeout)
    emit(as_json, {"id": v.id, "name": v.name, "export_domain": export_domain,
                   "discard_snapshots": discard_snapshots},
         f"exported VM {v.name} ({v.id}) to {export_domain}")


@vms.command("import")
@click.argument("name")
@click.option("--export-domain", required=True, metavar="SD",
              help="The export storage domain holding the VM.")
@click.option("--sd", "storage_domain", required=True, metavar="DATA",
              help="The data storage domain for its disks.")
@click.option("--cluster", metavar="C", help="Cluster (name or id).")
@click.option("--clone", is_flag=True, help="New ids (and collapsed snapshots).")
@click.option("--name", "new_name", metavar="N", help="Name of the imported VM.")
@click.option("--timeout", type=click.IntRange(1), default=3600, show_default=True,
              help="Seconds to wait for the import.")
@json_engine_options
def vms_import(name: str, export_domain: str, storage_domain: str, cluster: str | None,
               clone: bool, new_name: str | None, timeout: int, as_json: bool,
               engine: EngineOptions) -> None:
    """Import a VM (by name or id) from an export storage domain."""
    from imagetool.vms import import_vm

    with open_connection(engine) as conn:
        v = import_vm(conn, name, export_domain, storage_domain, cluster=cluster,
                      clone=clone, new_name=new_name, timeout=timeout)
    emit(as_json, _vm_dict(v), f"imported VM {v.name} ({v.id})")


# --- snapshots -----------------------------------------------------------------

@click.group()
def snapshots() -> None:
    """VM snapshots: list, create, remove, restore, preview/commit/undo."""


@engine_view(snapshots, "list", "vm")
def snapshots_list(vm: str, as_json: bool, engine: EngineOptions) -> None:
    """List a VM's snapshots (the active one included)."""
    from imagetool.snapshots import list_snapshots

    with open_connection(engine) as conn:
        found = list_snapshots(conn, vm)
    _print_list(as_json, found, _snap_dict, ("ID", "DESCRIPTION", "TYPE", "STATUS", "DATE"),
                lambda s: (s.id, s.description, s.snapshot_type, s.snapshot_status, s.date))


@snapshots.command("create")
@click.argument("vm")
@click.option("--description", metavar="D", help="Description (default: imagetool and the time).")
@click.option("--disk", "disks", multiple=True, metavar="DISK",
              help="Only this disk (name or id); repeat for several. Default: all.")
@click.option("--memory", is_flag=True, help="Save the memory of a running VM too.")
@TIMEOUT
@json_engine_options
def snapshots_create(vm: str, description: str | None, disks: tuple[str, ...],
                     memory: bool, timeout: int, as_json: bool,
                     engine: EngineOptions) -> None:
    """Take a snapshot; waits until it is ok (removed again if that fails)."""
    from imagetool.snapshots import create_snapshot, snapshot_disks

    with open_connection(engine) as conn:
        s = create_snapshot(conn, vm, description, disks=list(disks) or None,
                            persist_memory=memory, timeout=timeout)
        in_snap = snapshot_disks(conn, vm, s)
    emit(as_json, _snap_dict(s, in_snap),
         f"created snapshot {s.description!r} ({s.id}) of {count(len(in_snap), 'disk')}")


def _simple(name: str, verb: str, needs_snapshot: bool):
    """``snapshots NAME VM SNAPSHOT`` (or VM [SNAPSHOT]): the library's
    ``NAME_snapshot``."""

    @click.argument("vm")
    @click.argument("snapshot", required=needs_snapshot)
    @TIMEOUT
    @json_engine_options
    def command(vm: str, snapshot: str | None, timeout: int, as_json: bool,
                engine: EngineOptions) -> None:
        from imagetool import snapshots as lib
        from imagetool.vms import get_vm

        with open_connection(engine) as conn:
            v = get_vm(conn, vm)
            what = ""
            if snapshot is not None:
                s = lib.find_snapshot(conn, v, snapshot)
                snapshot, what = s.id, f" {s.description!r} ({s.id})"
            getattr(lib, f"{name}_snapshot")(conn, v, snapshot, timeout=timeout)
        emit(as_json, {"vm": v.id, "snapshot": snapshot, "action": verb, "done": True},
             f"{verb} snapshot{what} of VM {v.name}")

    return command


for _name, _verb, _needs, _help in [
        ("remove", "removed", True, "Remove (merge) a snapshot; waits until it is gone."),
        ("restore", "restored", True, "Restore the VM to a snapshot for good."),
        ("preview", "previewing", True, "Preview a snapshot (until commit or undo)."),
        ("commit", "committed", False, "Keep the previewed snapshot's state."),
        ("undo", "undid", False, "Drop the preview, back to the state before it.")]:
    snapshots.command(_name, help=_help)(_simple(_name, _verb, _needs))
