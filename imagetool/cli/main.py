"""The ``imagetool`` command: a thin click layer over the library.

Each command family lives in its own module; this module registers the
commands on the ``cli`` group and maps errors to exit codes:
0 ok, 1 operation failed, 2 usage, 3 authentication or connection,
130 interrupted. A command imports the workflow it runs inside its
function, so that every command (``--help`` included) starts without
loading them all (benchmarks/README.md, "CLI start-up").
"""

from __future__ import annotations

import sys

import click

from imagetool import __version__
from imagetool.cli import (backup_cmds, formats_cmds, inventory_cmds, ova_cmds, serve_cmd,
                           template_cmds, transfer_cmds, url_cmds, vm_cmds)
from imagetool.errors import ImagetoolError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imagetool")
def cli() -> None:
    """Move VM disk images in and out of oVirt through the ImageTransfer API.

    With no engine configured, engine commands use the embedded local engine
    (see `imagetool serve --help`), so everything works on a bare machine.

    Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 authentication or
    connection failure, 130 interrupted.
    """


for _command in (
        formats_cmds.info, formats_cmds.checksum_cmd, formats_cmds.measure,
        formats_cmds.convert,
        serve_cmd.serve,
        transfer_cmds.upload, transfer_cmds.download,
        inventory_cmds.disks, inventory_cmds.sds, inventory_cmds.transfers,
        vm_cmds.vms, vm_cmds.snapshots,
        url_cmds.url, backup_cmds.backup,
        ova_cmds.ova, template_cmds.templates):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:
        cli.main(args=argv, prog_name="imagetool", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("imagetool: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except ImagetoolError as e:
        click.echo(f"imagetool: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("imagetool: interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        click.echo(f"imagetool: error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
