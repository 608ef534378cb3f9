"""The ``imagetool`` command: a thin click layer over the library.

Each command family lives in its own module and registers itself on the
``cli`` group; this module only loads them and maps errors to exit codes:
0 ok, 1 operation failed, 2 usage, 3 authentication or connection,
130 interrupted.
"""

from __future__ import annotations

import importlib
import sys

import click

from imagetool import __version__
from imagetool.errors import ImagetoolError

# Modules that add commands to ``cli`` when imported.
COMMAND_MODULES = (
    "imagetool.cli.formats_cmds",    # info, checksum, measure, convert
    "imagetool.cli.serve_cmd",       # serve
    "imagetool.cli.transfer_cmds",   # upload, download
    "imagetool.cli.inventory_cmds",  # disks, sds, transfers
    "imagetool.cli.url_cmds",        # url upload/download/checksum/info
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imagetool")
def cli() -> None:
    """Move VM disk images in and out of oVirt through the ImageTransfer API.

    With no engine configured, engine commands use the embedded local engine
    (see `imagetool serve --help`), so everything works on a bare machine.

    Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 authentication or
    connection failure, 130 interrupted.
    """


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            # A command family not written yet; anything else is a real bug.
            if e.name != name:
                raise


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    _load_commands()
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
