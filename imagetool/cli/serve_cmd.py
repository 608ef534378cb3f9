"""``imagetool serve``: run the local oVirt-compatible engine in the foreground.

Also the one place outside ``imagetool.server`` that starts that engine:
in the foreground here, or in-process for a command run with no engine
configured (``in_process_engine``). The server package is imported only
when an engine starts: it adds about half again to every command's import
time (benchmarks/README.md).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import click

from imagetool.paths import default_data_dir, find_running_engine


def in_process_engine(data_dir: str) -> Any:
    """A ``LocalEngine`` for ``data_dir``: a context manager serving it from
    this process until the block ends."""
    from imagetool.server.local import LocalEngine

    return LocalEngine(data_dir)


@click.command("serve")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Images and inventory (default: $IMAGETOOL_HOME or ~/.local/share/imagetool).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default).")
@click.option("--port", type=int, default=0, show_default=True,
              help="Engine API port (0: any free port).")
@click.option("--imageio-port", type=int, default=0, show_default=True,
              help="Data plane (imageio) port (0: any free port).")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding admin@internal's password (else $IMAGETOOL_ADMIN_PASSWORD, "
                   "else one generated into the data dir).")
@click.option("--no-tls", is_flag=True, help="Serve plain HTTP (for debugging only).")
@click.option("--token-lifetime", type=float, default=3600.0, show_default=True,
              help="Seconds an SSO token stays valid.")
@click.option("--finished-ttl", type=float, default=300.0, show_default=True,
              help="Seconds finished image transfers stay listed.")
@click.option("--hosts", "n_hosts", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Hosts the engine lists, all serving the same data (to spread "
                   "transfers over hosts).")
@click.option("--export-dir", "export_dirs", multiple=True,
              type=click.Path(exists=True, file_okay=False),
              help="A directory (and its subdirectories) where a VM export to a path on "
                   "the host (the SDK's export_to_path_on_host) may write OVA files; "
                   "repeatable. None by default: such exports are refused.")
@click.option("--storage-dir", "storage_dirs", multiple=True,
              type=click.Path(exists=True, file_okay=False),
              help="A directory (and its subdirectories) where a storage domain added "
                   "through the API (POST /storagedomains) may live; repeatable. None by "
                   "default: only the data directory holds storage domains.")
def serve(data_dir: str | None, host: str, port: int, imageio_port: int,
          password_file: str | None, no_tls: bool, token_lifetime: float,
          finished_ttl: float, n_hosts: int, export_dirs: tuple[str, ...],
          storage_dirs: tuple[str, ...]) -> None:
    """Serve a local oVirt engine (REST API + imageio) over a directory.

    Disks live under DATA_DIR/<storage-domain-id>/images, the inventory in
    DATA_DIR/inventory.db. Stop with Ctrl-C or SIGTERM.
    """
    from imagetool.server.app import EngineServer
    from imagetool.server.local import remove_lock_file, write_lock_file

    data_dir = os.path.abspath(data_dir or default_data_dir())
    running = find_running_engine(data_dir)
    if running is not None:
        raise click.ClickException(
            f"an engine already serves {data_dir} (pid {running['pid']}, {running['url']})")
    server = EngineServer(data_dir, host=host, port=port, imageio_port=imageio_port,
                          tls=not no_tls, password_file=password_file,
                          token_lifetime=token_lifetime, finished_ttl=finished_ttl,
                          hosts=n_hosts, export_dirs=export_dirs, storage_dirs=storage_dirs)
    stop = threading.Event()
    old_int = signal.signal(signal.SIGINT, lambda *_: stop.set())
    old_term = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        lock = write_lock_file(server)
        click.echo(f"engine URL: {server.url}")
        click.echo(f"imageio URL: {server.dataplane_url()}")
        if server.cafile:
            click.echo(f"CA file: {server.cafile}")
        click.echo("user: admin@internal")
        if server.password_file:
            click.echo(f"password file: {server.password_file}")
        else:
            click.echo("password: from $IMAGETOOL_ADMIN_PASSWORD")
        click.echo(f"data dir: {data_dir}")
        click.echo(f"other imagetool commands on this machine use this engine "
                   f"(with several serves running: export IMAGETOOL_HOME={data_dir})")
        for d in server.export_dirs:
            click.echo(f"export dir: {d}")
        for d in server.storage_dirs:
            click.echo(f"storage dir: {d}")
        click.echo(f"lock file: {lock}", err=True)
        while not stop.wait(0.5):
            pass
        click.echo("imagetool serve: shutting down", err=True)
    finally:
        remove_lock_file(server)
        server.stop()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
