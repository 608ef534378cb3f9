"""``imagetool upload`` and ``imagetool download``: disks to and from an engine.

Several images move ``--jobs`` at a time, each with its own progress bar
plus a total (on a terminal only). Ctrl-C stops every running transfer:
each one is cancelled on the engine (no disk stays locked) before exiting.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import click

from imagetool.cli.common import SIZE, emit_json, moved
from imagetool.cli.config import EngineOptions, json_engine_options, open_connection
from imagetool.cli.progress import run_with_bars
from imagetool.errors import DestinationExists
from imagetool.iocore.copier import DEFAULT_REQUEST_SIZE
from imagetool.ids import is_uuid


def _uuid(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An id option: oVirt ids are UUIDs (a disk id becomes a path on the engine)."""
    if value is None or is_uuid(value):
        return value.lower() if value else value
    raise click.BadParameter(f"{value!a} is not a UUID", ctx=ctx, param=param)


def _snapshot_ref(ctx: click.Context, param: click.Parameter,
                  value: str | None) -> str | None:
    """A disk snapshot id; with --chain a VM snapshot's description too
    (checked once all options are known)."""
    return value.lower() if value and is_uuid(value) else value


def report(results: Sequence[Any], labels: Sequence[str], as_json: bool,
           verb: str) -> None:
    """Print results (text or JSON); exit with the worst error's code.

    ``--json`` is always a list, one object per file in argument order
    (a failed one ``{"path", "error"}``), so a script reads one shape
    whether it passed one file or several."""
    errors = [(label, r) for label, r in zip(labels, results) if isinstance(r, BaseException)]
    if as_json:             # one shape: a list, one object per file, even for one
        emit_json([{"path": label, "error": str(r)} if isinstance(r, BaseException)
                   else r.to_dict() for label, r in zip(labels, results)])
    else:
        for r in results:
            if not isinstance(r, BaseException):
                arrow = "->" if verb == "uploaded" else "<-"
                click.echo(f"{verb} {r.path} {arrow} disk {r.name} ({r.disk_id}): {moved(r)}")
                if getattr(r, "verification", None) is not None and r.verification.verified:
                    v = r.verification
                    # Name the command that gives the same value: `imagetool
                    # checksum` defaults to another algorithm (blake2b).
                    click.echo(f"  verified: {v.algorithm} block checksum {v.value} "
                               f"(imagetool checksum --algorithm {v.algorithm})")
    if errors:
        for label, e in errors:
            # Errors about a file (FormatError) already start with its path.
            text = str(e) if str(e).startswith(f"{label}: ") else f"{label}: {e}"
            click.echo(f"imagetool: error: {text}", err=True)
        sys.exit(max(getattr(e, "exit_code", 1) for _, e in errors))


HOST_OPTION = click.option(
    "--host", metavar="NAME",
    help="Host (name or id) to serve the transfers. Default: this machine when it is "
         "an oVirt host, else the Up hosts of the storage domain's data center in turn.")


# --- upload ------------------------------------------------------------------

@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--sd", "storage_domain", required=True, metavar="NAME",
              help="Storage domain (name or id) for the new disks.")
@click.option("--name", metavar="NAME", help="Disk name (one file only; default: file name).")
@click.option("--disk-format", type=click.Choice(["raw", "qcow2"]),
              help="Format of the new disk (default: the file's).")
@click.option("--sparse/--preallocated", default=True, show_default=True,
              help="Thin or fully allocated disk.")
@click.option("--disk-id", metavar="UUID", callback=_uuid,
              help="Id of the new disk (one file only).")
@click.option("--transfer-format", type=click.Choice(["raw", "cow"]),
              help="raw: guest data (default on 4.2+); cow: volume bytes (4.1 engines).")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Parallel connections per image.")
@click.option("--buffer-size", type=SIZE, default=DEFAULT_REQUEST_SIZE,
              show_default="8M", help="Bytes per request.")
@click.option("--timeout-policy", type=click.Choice(["legacy", "pause", "cancel"]),
              help="What the engine does when the client goes quiet (killed, "
                   "cut off, engine restarted) for --inactivity-timeout. Default: "
                   "'cancel' (the new disk is removed, never left locked), or "
                   "'pause' with --resume. 'pause'/'legacy' keep a locked partial "
                   "disk until --resume or 'imagetool transfers cancel'.")
@click.option("--inactivity-timeout", type=click.IntRange(1), default=60,
              show_default=True, help="Seconds without activity before the timeout policy.")
@click.option("--use-proxy", is_flag=True, help="Send data through the engine's proxy.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted upload of the same file (kill, outage, "
                   "engine restart): only missing ranges are sent. Uses timeout "
                   "policy 'pause' unless --timeout-policy is given, so a quiet "
                   "client does not lose its partial disk.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare the server's block checksum with the source's before "
                   "finalizing; a mismatch cancels the upload (exit 1).")
@click.option("--jobs", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Images uploaded at a time.")
@HOST_OPTION
@click.option("--allow-outside-backing", is_flag=True,
              help="Upload a qcow2 chain whose backing files lie outside the "
                   "image's directory (absolute or '..' names).")
@json_engine_options
def upload(files: tuple[str, ...], storage_domain: str, name: str | None,
           disk_format: str | None, sparse: bool, disk_id: str | None,
           transfer_format: str | None, workers: int, buffer_size: int,
           timeout_policy: str | None, inactivity_timeout: int, use_proxy: bool,
           verify: bool, jobs: int, as_json: bool, engine: EngineOptions,
           resume: bool = False, host: str | None = None,
           allow_outside_backing: bool = False) -> None:
    """Upload image files (raw, qcow2, ISO) as new disks.

    Progress is kept in a journal under $IMAGETOOL_HOME/journals; after an
    interruption, run the same command with --resume.
    """
    from imagetool.formats import inspect
    from imagetool.transfer.upload import UploadOptions, upload_disk_result

    if len(files) > 1 and (name or disk_id):
        raise click.UsageError("--name and --disk-id need exactly one file")
    for f in files:
        if not os.path.isfile(f):
            raise click.UsageError(f"{f}: no such file")
    sizes = [inspect(f).virtual_size for f in files]
    options = UploadOptions(
        name=name, disk_format=disk_format, sparse=sparse, disk_id=disk_id,
        transfer_format=transfer_format, workers=workers, buffer_size=buffer_size,
        timeout_policy=timeout_policy, inactivity_timeout=inactivity_timeout,
        use_proxy=use_proxy, verify=verify, resume=resume, host=host,
        allow_outside_backing=allow_outside_backing)
    with open_connection(engine) as conn:
        results = run_with_bars(jobs, list(zip(files, sizes)), lambda i, bars: (
            upload_disk_result(conn, files[i], storage_domain, options,
                               progress=bars.callback(i), host_index=i)))
    report(results, list(files), as_json, "uploaded")


# --- download ----------------------------------------------------------------

@click.command()
@click.argument("disks", nargs=-1, required=True)
@click.argument("dest", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["raw", "qcow2"]), default="raw",
              show_default=True, help="Format of the downloaded files.")
@click.option("--snapshot", "snapshot_id", metavar="UUID", callback=_snapshot_ref,
              help="Download this disk snapshot (one disk only); with --chain also "
                   "a VM snapshot (id or description).")
@click.option("--shallow", is_flag=True,
              help="With --snapshot: only that layer (unallocated areas stay holes).")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Parallel connections per image.")
@click.option("--buffer-size", type=SIZE, default=DEFAULT_REQUEST_SIZE,
              show_default="8M", help="Bytes per request.")
@click.option("--use-proxy", is_flag=True, help="Read data through the engine's proxy.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare the file's block checksum with the server's before "
                   "finalizing; a mismatch leaves no file (exit 1).")
@click.option("--inactivity-timeout", type=click.IntRange(1), default=60,
              show_default=True,
              help="Seconds without activity before the engine cancels the "
                   "download (and unlocks the disk) after the client died.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted raw download from its journal; "
                   "with --resume a failure keeps the partial file and journal "
                   "for the next --resume (a checksum mismatch removes them).")
@click.option("--jobs", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Images downloaded at a time.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option("--chain", is_flag=True,
              help="Download the disk's layers as qcow2 files into the empty or new "
                   "directory DEST, each backed by the previous one (with --snapshot S: "
                   "up to S, a VM snapshot id or description or a layer id).")
@HOST_OPTION
@json_engine_options
def download(disks: tuple[str, ...], dest: str, fmt: str, snapshot_id: str | None,
             shallow: bool, workers: int, buffer_size: int, use_proxy: bool,
             verify: bool, jobs: int, force: bool, as_json: bool, engine: EngineOptions,
             inactivity_timeout: int = 60, resume: bool = False, chain: bool = False,
             host: str | None = None) -> None:
    """Download disks (by name or id) to DEST (a directory when several).

    \b
    A raw download writes DEST.imagetool-part and keeps its progress in
    DEST.imagetool-journal; DEST appears only when complete. If the
    process is killed, both stay: run the same command with --resume to
    continue (a run without --resume reports them, exit 1, deleting
    nothing). A failure that imagetool handles (server error, checksum
    mismatch, Ctrl-C) removes both unless --resume was given.
    --format qcow2 (and 4.1 engines) write a temporary file removed on
    any failure; those downloads cannot be resumed.
    """
    from imagetool.transfer.download import DownloadOptions, download_disk

    if chain:
        from imagetool.cli.chain_cmd import download_chain_command
        download_chain_command(disks, dest, snapshot_id, shallow, fmt, resume, force,
                               workers, verify, inactivity_timeout, host, as_json, engine)
        return
    if snapshot_id is not None and not is_uuid(snapshot_id):
        raise click.BadParameter(f"{snapshot_id!a} is not a UUID",
                                 param_hint="'--snapshot'")
    if len(disks) > 1 and not os.path.isdir(dest):
        raise click.UsageError(f"{dest}: must be an existing directory for several disks")
    if snapshot_id and len(disks) > 1:
        raise click.UsageError("--snapshot needs exactly one disk")
    if shallow and not snapshot_id:
        raise click.UsageError("--shallow needs --snapshot")
    with open_connection(engine) as conn:
        found = [conn.disks.find(d) for d in disks]
        paths = []
        for d in found:
            if os.path.isdir(dest):
                base = d.name or d.id
                stem, ext = os.path.splitext(base)
                if ext.lower() in (".raw", ".img", ".qcow2", ".qcow", ".iso"):
                    base = stem
                paths.append(os.path.join(dest, f"{base}.{fmt}"))
            else:
                paths.append(dest)
        # Fail before any transfer starts rather than after the first one.
        if not force:
            for p in paths:
                if os.path.exists(p):
                    raise DestinationExists(p)
        options = DownloadOptions(
            format=fmt, snapshot_id=snapshot_id, shallow=shallow, force=force,
            workers=workers, buffer_size=buffer_size,
            inactivity_timeout=inactivity_timeout, use_proxy=use_proxy,
            verify=verify, resume=resume, host=host)
        results = run_with_bars(
            jobs, [(d.name or d.id, d.provisioned_size or 0) for d in found],
            lambda i, bars: download_disk(conn, found[i], paths[i], options,
                                          progress=bars.callback(i), host_index=i))
    report(results, paths, as_json, "downloaded")
