"""``imagetool url``: work straight with one imageio transfer URL.

For URLs from another tool or a ticket added by hand; no engine involved.
Ticket ids are secrets: they are never printed.
"""

from __future__ import annotations

import click

from imagetool.cli.common import JSON, SIZE, emit, emit_json, moved
from imagetool.cli.progress import run_with_bars
from imagetool.iocore.copier import DEFAULT_REQUEST_SIZE
from imagetool.units import format_size


def _tls_options(func):
    func = click.option("--insecure", is_flag=True,
                        help="Do not verify the server's TLS certificate.")(func)
    func = click.option("--cafile", type=click.Path(exists=True, dir_okay=False),
                        help="CA certificate (PEM) of the imageio server.")(func)
    return func


_VERIFY = click.option("--verify/--no-verify", default=True, show_default=True,
                       help="Compare the block checksum of the local data with the "
                            "server's when the server offers checksum.")


def _run_one(size: int, label: str, fn):
    """Run one transfer with a progress bar; Ctrl-C stops it cleanly."""
    result = run_with_bars(1, [(label, size)], lambda i, bars: fn(bars.callback(i)))[0]
    if isinstance(result, BaseException):
        raise result
    return result


@click.group()
def url() -> None:
    """Upload, download, checksum or describe one imageio URL."""


@url.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("url_", metavar="URL")
@click.option("--format", "fmt", type=click.Choice(["raw", "qcow2"]),
              help="Format of FILE (default: detected).")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True)
@click.option("--buffer-size", type=SIZE, default=DEFAULT_REQUEST_SIZE, show_default="8M")
@click.option("--dst-is-zero", is_flag=True,
              help="The target already reads as zeros: skip zero ranges.")
@_VERIFY
@JSON
@_tls_options
def url_upload(file: str, url_: str, fmt: str | None, workers: int, buffer_size: int,
               dst_is_zero: bool, verify: bool, as_json: bool, cafile: str | None,
               insecure: bool) -> None:
    """Write FILE's guest data to URL.

    When the server offers checksum, the upload is verified: the block
    checksum of FILE's guest data must equal the server's (exit 1 printing
    both otherwise).
    """
    from imagetool.formats import inspect
    from imagetool.transfer.urls import upload_url

    r = _run_one(inspect(file).virtual_size, file, lambda cb: upload_url(
        file, url_, cafile=cafile, insecure=insecure, workers=workers,
        request_size=buffer_size, progress=cb, format=fmt, dst_is_zero=dst_is_zero,
        verify=verify))
    emit(as_json, r.to_dict(), f"uploaded {r.path}: {moved(r)}")


@url.command("download")
@click.argument("url_", metavar="URL")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["raw", "qcow2"]), default="raw",
              show_default=True)
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True)
@click.option("--buffer-size", type=SIZE, default=DEFAULT_REQUEST_SIZE, show_default="8M")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@_VERIFY
@JSON
@_tls_options
def url_download(url_: str, file: str, fmt: str, workers: int, buffer_size: int,
                 force: bool, verify: bool, as_json: bool, cafile: str | None,
                 insecure: bool) -> None:
    """Save URL's data to FILE (raw sparse or qcow2).

    When the server offers checksum, FILE appears only if its block
    checksum equals the server's (exit 1 printing both otherwise).
    """
    from imagetool.transfer.output import check_destination
    from imagetool.transfer.urls import download_url, url_info

    check_destination(file, force)
    size = url_info(url_, cafile=cafile, insecure=insecure, extents=False)["size"]
    r = _run_one(size, file, lambda cb: download_url(
        url_, file, format=fmt, cafile=cafile, insecure=insecure, workers=workers,
        request_size=buffer_size, progress=cb, force=force, verify=verify))
    emit(as_json, r.to_dict(), f"downloaded {r.path}: {moved(r)}")


@url.command("checksum")
@click.argument("url_", metavar="URL")
@click.option("--algorithm", default="blake2b", show_default=True)
@click.option("--block-size", type=SIZE, default=4 << 20, show_default="4M")
@JSON
@_tls_options
def url_checksum_cmd(url_: str, algorithm: str, block_size: int, as_json: bool,
                     cafile: str | None, insecure: bool) -> None:
    """Print the server's block checksum of URL's guest data."""
    from imagetool.transfer.urls import url_checksum

    r = url_checksum(url_, algorithm=algorithm, block_size=block_size,
                     cafile=cafile, insecure=insecure)
    emit(as_json, r, f"{r['checksum']}  {r['algorithm']} block_size={r['block_size']}")


@url.command("info")
@click.argument("url_", metavar="URL")
@JSON
@_tls_options
def url_info_cmd(url_: str, as_json: bool, cafile: str | None, insecure: bool) -> None:
    """Show size, features and allocation of URL."""
    from imagetool.transfer.urls import url_info

    info = url_info(url_, cafile=cafile, insecure=insecure)
    if as_json:
        emit_json(info)
        return
    click.echo(f"size         {info['size']} ({format_size(info['size'])})")
    click.echo(f"features     {', '.join(info['features']) or '-'}")
    click.echo(f"max_readers  {info['max_readers']}")
    click.echo(f"max_writers  {info['max_writers']}")
    if "data_bytes" in info:
        click.echo(f"data         {format_size(info['data_bytes'])}")
        click.echo(f"zero         {format_size(info['zero_bytes'])}")
