"""``imagetool backup``: VM backups into a directory of restore points.

``create`` makes one point per VM (full, then incremental), ``list`` shows
the chains, ``verify`` checks every file and every point's guest data,
``restore`` creates a new VM from a point, ``prune`` keeps the newest N
points per VM (merging what the kept ones need).
"""

from __future__ import annotations

import sys

import click

from imagetool.cli.common import emit_json
from imagetool.cli.config import EngineOptions, engine_options, open_connection
from imagetool.units import format_size


@click.group()
def backup() -> None:
    """VM backups: full then incremental restore points in a directory.

    \b
    Each VM has a chain of points; each point holds the VM's OVF, one qcow2
    file per disk (an incremental's backing file is the previous point's
    file, by relative name: qemu-img reads the chain) and manifest.json.
    Incrementals use the engine's VM backup API with checkpoints (oVirt 4.4+)
    or snapshots on older engines (--method).
    """


@backup.command("create")
@click.argument("vms", nargs=-1, required=True)
@click.argument("directory", type=click.Path(file_okay=False))
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@engine_options
def create(vms: tuple[str, ...], directory: str, full: bool, method: str, jobs: int,
           workers: int, inactivity_timeout: int, as_json: bool,
           engine: EngineOptions) -> None:
    """Make one new restore point of each VM (name or id) in DIRECTORY."""
    from imagetool.backup import backup_vm
    from imagetool.cli.progress import Bars, run_jobs

    def log(text: str) -> None:
        click.echo(f"imagetool: {text}", err=True)

    with open_connection(engine) as conn:
        bars = Bars([(v, 0) for v in vms], enabled=False)
        tasks = [(lambda v=v: backup_vm(conn, v, directory, full=full, method=method,
                                        workers=workers, inactivity_timeout=inactivity_timeout,
                                        log=log))
                 for v in vms]
        results = run_jobs(jobs, tasks, bars)
    errors = [(v, r) for v, r in zip(vms, results) if isinstance(r, BaseException)]
    if as_json:
        emit_json([{"vm": v, "error": str(r)} if isinstance(r, BaseException) else r
                   for v, r in zip(vms, results)])
    else:
        for r in results:
            if isinstance(r, BaseException):
                continue
            why = f" ({r['reason']})" if r["mode"] == "full" and r.get("reason") else ""
            click.echo(f"VM {r['vm_name']}: {r['mode']} point {r['point']} by {r['method']}"
                       f"{why}: {format_size(r['bytes'])} moved in {r['seconds']:.1f} s")
            for d in r["disks"]:
                why = f" ({d['reason']})" if d.get("reason") and r["mode"] != "full" else ""
                click.echo(f"  disk {d['name']}: {d['mode']}{why}")
    for v, e in errors:
        click.echo(f"imagetool: error: VM {v}: {e}", err=True)
    if errors:
        if any(isinstance(e, KeyboardInterrupt) for _, e in errors):
            raise KeyboardInterrupt
        sys.exit(max(getattr(e, "exit_code", 1) for _, e in errors))


@backup.command("list")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--vm", metavar="VM", help="Only this VM (name or id).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(directory: str, vm: str | None, as_json: bool) -> None:
    """The VMs of DIRECTORY, their points, size on disk and data held."""
    from imagetool.backup import list_points

    out = list_points(directory, vm)
    if as_json:
        emit_json(out)
        return
    for v in out:
        click.echo(f"VM {v['vm_name']} ({v['vm_id']}): {len(v['points'])} points")
        for p in v["points"]:
            click.echo(f"  {p['point']}  {p['mode']:<11} {p['method']:<10} "
                       f"size {format_size(p['size']):>9}  data {format_size(p['data']):>9}"
                       + (f"  <- {p['parent']}" if p["parent"] else ""))


@backup.command("verify")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--vm", metavar="VM", help="Only this VM (name or id).")
@click.option("--point", metavar="P", help="Only this point (and the points it builds on).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify_cmd(directory: str, vm: str | None, point: str | None, as_json: bool) -> None:
    """Check every file's SHA-256 and every point's guest-data checksum.

    \b
    Every bad file is named, one line each, and the exit code is 1; so is
    a directory that is not a backup repository. With --json the report
    (ok, points, files, errors) is printed whatever the outcome.
    """
    import os

    from imagetool.backup import verify
    from imagetool.errors import ImagetoolError

    try:
        out = verify(directory, vm=vm, point=point, strict=False)
    except ImagetoolError as e:
        if as_json:
            emit_json({"ok": False, "points": 0, "files": 0,
                       "errors": [{"path": os.path.abspath(directory), "error": str(e)}]})
        raise
    if as_json:
        emit_json(out)
    elif out["ok"]:
        click.echo(f"verified {out['points']} points, {out['files']} files: ok")
    for e in out["errors"]:
        click.echo(f"imagetool: error: {e['path']}: {e['error']}", err=True)
    if not out["ok"]:
        if not as_json:
            click.echo(f"verified {out['points']} points, {out['files']} files: "
                       f"{len(out['errors'])} errors")
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@engine_options
def restore_cmd(directory: str, vm: str, point: str | None, storage_domain: str,
                name: str | None, cluster: str | None, workers: int, as_json: bool,
                engine: EngineOptions) -> None:
    """Create a new VM from a point of VM (name or id) in DIRECTORY."""
    from imagetool.backup import restore_vm

    with open_connection(engine) as conn:
        out = restore_vm(conn, directory, vm, storage_domain=storage_domain, point=point,
                         name=name, cluster=cluster, workers=workers)
    if as_json:
        emit_json(out)
    else:
        click.echo(f"restored point {out['point']} as VM {out['vm_name']} ({out['vm_id']}): "
                   f"{len(out['disks'])} disks, {format_size(out['bytes'])} in "
                   f"{out['seconds']:.1f} s, checksums match the manifest")


@backup.command("prune")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--keep", type=click.IntRange(1), required=True, help="Points kept per VM.")
@click.option("--vm", metavar="VM", help="Only this VM (name or id).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def prune_cmd(directory: str, keep: int, vm: str | None, as_json: bool) -> None:
    """Keep the newest N points per VM; older ones a kept point needs are merged into it."""
    from imagetool.backup import prune

    out = prune(directory, keep, vm=vm)
    if as_json:
        emit_json(out)
    else:
        for v in out:
            click.echo(f"VM {v['vm_name']} ({v['vm_id']}): removed {len(v['removed'])} points, "
                       f"merged into {', '.join(v['merged']) or 'none'}, kept {len(v['kept'])}")
