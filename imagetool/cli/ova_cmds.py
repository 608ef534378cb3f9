"""``imagetool ova export|import|info``: VMs to and from OVA files."""

from __future__ import annotations

import click

from imagetool.cli.common import JSON, checksum_json, emit, emit_json
from imagetool.cli.config import EngineOptions, json_engine_options, open_connection
from imagetool.cli.progress import progress_bar, vm_disks_size
from imagetool.threads import interrupts_ignored
from imagetool.units import count, format_seconds, format_size


@click.group()
def ova() -> None:
    """Export a VM to an OVA file, import one, or describe one.

    The OVAs written are laid out as the oVirt engine writes its own (the
    engine's OVA import reads them); VMware and VirtualBox OVAs import too.
    """


@ova.command("export")
@click.argument("vm")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--snapshot", metavar="S",
              help="Export this snapshot (id or description); default: a temporary one.")
@click.option("--manifest", is_flag=True,
              help="Add a SHA-256 .mf member (the oVirt engine's importer refuses it).")
@click.option("--force", is_flag=True, help="Overwrite PATH.")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True)
@json_engine_options
def ova_export(vm: str, path: str, snapshot: str | None, manifest: bool, force: bool,
               workers: int, as_json: bool, engine: EngineOptions) -> None:
    """Export VM (name or id) to PATH as an OVA."""
    from imagetool.ova import export_ova
    with open_connection(engine) as conn:
        with progress_bar(vm_disks_size(conn, vm), "ova export") as update:
            r = export_ova(conn, vm, path, snapshot=snapshot, manifest=manifest,
                           force=force, workers=workers, progress=update,
                           committed=interrupts_ignored)
    if as_json:
        emit_json(r.to_json())
        return
    for d in r.disks:
        click.echo(f"{d.member}  disk {d.disk_id}  {format_size(d.virtual_size or 0)}"
                   f"  {d.checksum.algorithm}:{d.checksum.value}")
    click.echo(f"exported {r.path}: {count(len(r.disks), 'disk')}, "
               f"{format_size(r.bytes)} in {format_seconds(r.seconds)}")


@ova.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--sd", "storage_domain", required=True, metavar="NAME",
              help="Storage domain for the disks.")
@click.option("--cluster", default="Default", show_default=True)
@click.option("--name", help="Name of the new VM or template (default: the OVF's).")
@click.option("--template", is_flag=True, help="Import as a template.")
@click.option("--clone", is_flag=True,
              help="New ids for the VM and its disks (an OVA exported from the same "
                   "engine); give --name when the VM's name is in use.")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True)
@json_engine_options
def ova_import(path: str, storage_domain: str, cluster: str, name: str | None,
               template: bool, clone: bool, workers: int, as_json: bool,
               engine: EngineOptions) -> None:
    """Import the OVA at PATH as a VM (or a template)."""
    from imagetool.ova import import_ova, ova_info
    total = sum(d["virtual_size"] or 0 for d in ova_info(path)["disks"])
    with open_connection(engine) as conn:
        with progress_bar(total, "ova import") as update:
            r = import_ova(conn, path, storage_domain, cluster=cluster, name=name,
                           template=True if template else None, workers=workers,
                           clone=clone, progress=update, committed=interrupts_ignored)
    emit(as_json, r.to_json(), f"imported {r.kind} {r.name} ({r.id}): "
         f"{count(len(r.disks), 'disk')}, {format_size(r.bytes)} in "
         f"{format_seconds(r.seconds)}")


@ova.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--verify", is_flag=True,
              help="Check the manifest and compute every disk's checksum.")
@click.option("--algorithm", metavar="NAME",
              help="Checksum algorithm with --verify (default: blake2b, as imageio).")
@JSON
def ova_info_cmd(path: str, verify: bool, algorithm: str | None, as_json: bool) -> None:
    """Describe the OVA at PATH (no engine needed)."""
    from imagetool.ova import ova_info
    r = ova_info(path, verify=verify, algorithm=algorithm)
    if as_json:     # each disk's checksum in the object shape of every --json
        emit_json(dict(r, disks=[checksum_json(d) for d in r["disks"]]))
        return
    mem = format_size(r["memory"]) if r["memory"] else "-"
    click.echo(f"{r['kind']}: {r['name']}  cpus: {r['cpus'] or '-'}  memory: {mem}"
               f"  ({r['dialect']} OVF {r['ovf']})")
    for d in r["disks"]:
        line = (f"  {d['member']}  {d['format']}  virtual {format_size(d['virtual_size'])}"
                f"  allocated {format_size(d['allocated_size'])}")
        if verify:
            line += f"  {d['algorithm']}:{d['checksum']}"
        click.echo(line)
    if verify:
        click.echo(f"manifest: {count(len(r['manifest_digests']), 'member')} verified"
                   if r["manifest"] else "manifest: none")
