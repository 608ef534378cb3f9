"""``imagetool info|checksum|measure|convert``: local image files."""

from __future__ import annotations

import time

import click

from imagetool.checksum import (ALGORITHMS, DEFAULT_ALGORITHM, DEFAULT_BLOCK_SIZE,
                                checksum, validate_block_size)
from imagetool.cli.common import SIZE, emit, emit_json
from imagetool.cli.config import EngineOptions, engine_options, open_connection
from imagetool.cli.progress import progress_bar
from imagetool.formats import WRITABLE, inspect, open_image
from imagetool.units import format_size

_FILE = click.Path(dir_okay=False, path_type=str)


def _human_size(n: int | None) -> str:
    return "-" if n is None else f"{format_size(n)} ({n} bytes)"


def _yes_no(v: bool | None) -> str:
    return "-" if v is None else ("true" if v else "false")


@click.command()
@click.argument("file", type=_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (keys as qemu-img info, snake_case).")
def info(file: str, as_json: bool) -> None:
    """Describe an image FILE: format, sizes and qcow2 details.

    \b
    Examples:
      imagetool info disk.qcow2
      imagetool info --json disk.raw | jq .virtual_size
    """
    meta = inspect(file)
    fields = meta.to_dict()     # a format's own fields: only those it has
    if as_json:
        emit_json(fields)
        return
    lines = [
        f"image: {file}",
        f"file format: {meta.format}",
        f"content type: {meta.content_type}",
        f"virtual size: {_human_size(meta.virtual_size)}",
        f"disk size: {format_size(meta.actual_size)}",
    ]
    if "subformat" in fields:
        lines.append(f"subformat: {meta.subformat}")
    if "cluster_size" in fields:
        lines += [
            f"cluster size: {meta.cluster_size}",
            f"compat: {meta.compat}",
            f"compression type: {meta.compression_type}",
            f"refcount bits: {meta.refcount_bits}",
            f"extended l2: {_yes_no(meta.extended_l2)}",
            f"lazy refcounts: {_yes_no(meta.lazy_refcounts)}",
            f"encrypted: {_yes_no(meta.encrypted)}",
            f"dirty: {_yes_no(meta.dirty)}",
            f"corrupt: {_yes_no(meta.corrupt)}",
            f"snapshots: {meta.snapshots}",
            f"bitmaps: {', '.join(meta.bitmaps) or '-'}",
        ]
        if meta.data_file:
            lines.append(f"data file: {meta.data_file}")
        if meta.backing_file:
            lines.append(f"backing file: {meta.backing_file}")
            lines.append(f"backing file format: {meta.backing_file_format or '-'}")
    click.echo("\n".join(lines))


def _cluster_size(ctx, param, value: int) -> int:
    from imagetool.formats.qcow2_writer import MAX_CLUSTER_SIZE, MIN_CLUSTER_SIZE

    if not MIN_CLUSTER_SIZE <= value <= MAX_CLUSTER_SIZE or value & (value - 1):
        raise click.BadParameter(f"{value}: must be a power of two from 512 to 2M")
    return value


def _block_size(ctx, param, value: int) -> int:
    try:
        validate_block_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


@click.command("checksum")
@click.argument("file", type=_FILE, required=False)
@click.option("--algorithm", "-a", default=DEFAULT_ALGORITHM, show_default=True,
              type=click.Choice(sorted(ALGORITHMS), case_sensitive=False),
              help="Hash algorithm (blake2b/blake2s use 32-byte digests, as imageio).")
@click.option("--block-size", "-b", type=SIZE, default=str(DEFAULT_BLOCK_SIZE),
              callback=_block_size, show_default="4M",
              help="Block size: a multiple of 4K from 1M to 16M; must match the "
                   "other side when comparing.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Hashing threads (default: 2 to 4, by CPU count).")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON with keys checksum, algorithm, block_size "
                   "(and disk_id with --disk).")
@click.option("--disk", metavar="DISK",
              help="Instead of FILE: the server-side checksum of this engine disk "
                   "(name or id), through a short download transfer.")
@engine_options
def checksum_cmd(file: str | None, algorithm: str, block_size: int,
                 workers: int | None, as_json: bool, disk: str | None,
                 engine: EngineOptions) -> None:
    """Block checksum of FILE's guest data, as imageio computes it.

    A raw file and a qcow2 image holding the same guest data have the same
    checksum, equal to `ovirt_imageio.client.checksum` and to the imageio
    server's checksum of a disk uploaded from FILE.

    \b
    Examples:
      imagetool checksum disk.qcow2
      imagetool checksum --json --algorithm sha256 --block-size 8M disk.raw
      imagetool checksum --disk my-disk --engine-url https://engine ...
    """
    if file and disk:
        raise click.UsageError("give FILE or --disk, not both")
    if disk:        # the engine's data plane hashes the disk
        from imagetool.transfer.disk_checksum import disk_checksum

        with open_connection(engine) as conn:
            found = conn.disks.find(disk)
            result = disk_checksum(conn, found.id, algorithm=algorithm.lower(),
                                   block_size=block_size)
        return emit(as_json,
                    {k: result[k] for k in ("algorithm", "block_size", "checksum", "disk_id")},
                    f"{result['checksum']}  disk {found.name or ''} ({found.id})")
    if file is None:
        raise click.UsageError("missing argument FILE")
    with open_image(file, "r") as backend:
        with progress_bar(backend.size, "checksum") as update:
            result = checksum(backend, algorithm=algorithm, block_size=block_size,
                              workers=workers, progress=update)
    emit(as_json, result, f"{result['checksum']}  {file}")


@click.command()
@click.argument("file", type=_FILE)
@click.option("-O", "--output-format", "out_format", default="qcow2", show_default=True,
              type=click.Choice(WRITABLE), help="Format to measure for.")
@click.option("--cluster-size", type=SIZE, default="64K", show_default=True,
              callback=_cluster_size, help="qcow2 cluster size.")
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"required": N, "fully-allocated": N} as qemu-img measure.')
def measure(file: str, out_format: str, cluster_size: int, as_json: bool) -> None:
    """Bytes FILE needs once converted to raw or qcow2.

    "required" is what a sparse copy needs (the initial size to give a
    sparse cow disk); "fully allocated" is with every cluster written.

    \b
    Examples:
      imagetool measure disk.raw
      imagetool measure -O raw --json disk.qcow2
    """
    from imagetool.formats.measure import measure as do_measure

    result = do_measure(file, out_format, cluster_size)
    emit(as_json, result, f"required size: {result['required']}\n"
                          f"fully allocated size: {result['fully-allocated']}")


@click.command()
@click.argument("src", type=_FILE)
@click.argument("dst", type=click.Path(path_type=str))
@click.option("-O", "--output-format", "out_format", required=True,
              type=click.Choice(WRITABLE), help="Format of DST.")
@click.option("-c", "--compress", is_flag=True, help="Compress clusters (zlib; qcow2 only).")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@click.option("--cluster-size", type=SIZE, default="64K", show_default=True,
              callback=_cluster_size, help="qcow2 cluster size.")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="Copy threads.")
@click.option("--json", "as_json", is_flag=True,
              help="Print what was written: source, destination, format, "
                   "virtual_size, data_bytes, seconds.")
def convert(src: str, dst: str, out_format: str, compress: bool, force: bool,
            cluster_size: int, workers: int, as_json: bool) -> None:
    """Convert SRC (raw, qcow2 with its backing chain, or vmdk) to DST.

    Only data is copied: holes and zero ranges stay sparse. DST is written
    under a temporary name next to it and renamed when complete, so it is
    never left half written.

    \b
    Examples:
      imagetool convert disk.raw disk.qcow2 -O qcow2
      imagetool convert -c disk.raw small.qcow2 -O qcow2
      imagetool convert --force snapshot.qcow2 flat.raw -O raw
      imagetool convert disk.vmdk disk.qcow2 -O qcow2
      imagetool convert disk.raw disk.qcow2 -O qcow2 --json
    """
    from imagetool.formats.convert import convert as do_convert

    if compress and out_format != "qcow2":
        raise click.UsageError("--compress needs -O qcow2")

    # The bar needs the size up front; opening also validates SRC early.
    with open_image(src, "r") as probe:
        total = probe.size
    start = time.monotonic()
    with progress_bar(total, "convert") as update:
        result = do_convert(src, dst, out_format, compress=compress, force=force,
                            progress=update, workers=workers, cluster_size=cluster_size)
    if as_json:
        emit_json({"source": src, "destination": dst, "format": out_format,
                   "compressed": compress, "virtual_size": result["virtual_size"],
                   "data_bytes": result["data_bytes"],
                   "seconds": round(time.monotonic() - start, 3)})
