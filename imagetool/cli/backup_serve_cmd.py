"""``imagetool backup serve``: a backup point's disks over NBD, read-only.

File-level restore without restoring: qemu-nbd, nbdfuse, guestfish or
``qemu-img convert`` read the point's disks through the NBD server of
``imagetool.nbd``, which reads the chunks (or the qcow2 chain) on
demand, nothing written anywhere.
"""

from __future__ import annotations

import signal

import click

from imagetool.cli.backup_repo_cmds import open_point
from imagetool.cli.store_options import RepoOptions, repo_options
from imagetool.units import format_size


@click.command("serve")
@click.argument("repository")
@click.argument("vm")
@click.option("--point", metavar="P", help="The point (default: the newest).")
@click.option("--nbd", "socket_path", required=True, type=click.Path(dir_okay=False),
              metavar="SOCKET", help="Unix socket to listen on (made owner-only).")
@repo_options
def serve(repository: str, vm: str, point: str | None, socket_path: str,
          repo: RepoOptions) -> None:
    """Serve a point's disks read-only over NBD on a unix socket, until Ctrl-C.

    \b
    One export per disk, named by the disk id; the default export (the
    empty name, nbd+unix:///?socket=SOCKET) is the point's first disk.
    Each export's name, size and URL are printed once the socket listens.
    Reads fetch the chunks they need (checked against their ids); zero
    chunks are holes. Ctrl-C (or SIGTERM) stops the server and removes the
    socket. A qcow2-chain repository is served the same way.
    """
    from imagetool.nbd import Export, NbdServer

    with open_point(repository, vm, point, repo) as pt:
        exports = [Export(disk_id, b, f"VM {pt.vm_id} point {pt.name} disk {disk_id}")
                   for disk_id, b in pt.disks]
        with NbdServer(socket_path, exports,
                       log=lambda text: click.echo(f"imagetool: {text}", err=True)) as server:
            click.echo(f"serving VM {pt.vm_id} point {pt.name} on {socket_path} "
                       "(read-only; Ctrl-C stops)")
            for i, e in enumerate(exports):
                default = " (default export)" if i == 0 else ""
                click.echo(f"  {e.name}  {format_size(e.size)}  "
                           f"nbd+unix:///{e.name}?socket={socket_path}{default}")
            click.get_text_stream("stdout").flush()
            # SIGTERM (systemctl stop, kill) stops as Ctrl-C does: socket removed.
            old = signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                signal.signal(signal.SIGTERM, old)
            click.echo("imagetool: stopped", err=True)
