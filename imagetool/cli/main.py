"""The ``imagetool`` command: a thin click layer over the library.

Each command family lives in its own module; this module names every
command in one table (:data:`COMMANDS`) and maps errors to exit codes:
0 ok, 1 operation failed, 2 usage, 3 authentication or connection,
130 interrupted. A command's module is imported when that command runs
(or when ``imagetool --help`` lists them all), and a command imports the
workflow it runs inside its function, so that every command starts
without loading them all (benchmarks/README.md, "CLI start-up").
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading

import click

from imagetool import __version__
from imagetool.errors import ImagetoolError

#: Every command: its name, and the module (under ``imagetool.cli``) and
#: attribute that define it.
COMMANDS = {
    "info": ("formats_cmds", "info"), "checksum": ("formats_cmds", "checksum_cmd"),
    "measure": ("formats_cmds", "measure"), "convert": ("formats_cmds", "convert"),
    "serve": ("serve_cmd", "serve"),
    "upload": ("transfer_cmds", "upload"), "download": ("transfer_cmds", "download"),
    "disks": ("inventory_cmds", "disks"), "sds": ("inventory_cmds", "sds"),
    "transfers": ("inventory_cmds", "transfers"),
    "vms": ("vm_cmds", "vms"), "snapshots": ("vm_cmds", "snapshots"),
    "url": ("url_cmds", "url"), "backup": ("backup_cmds", "backup"),
    "ova": ("ova_cmds", "ova"), "templates": ("template_cmds", "templates"),
}


class _CommandTable(click.Group):
    """A click group whose commands are :data:`COMMANDS`, each imported on
    first use: importing every command family up front (httpx, the engine
    client, formats, checksums, backups, OVA) cost each run about 50 ms."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name]
        from imagetool.cli.examples import attach

        return attach(name, getattr(importlib.import_module(f"imagetool.cli.{module}"),
                                    attribute))


@click.group(cls=_CommandTable, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imagetool")
def cli() -> None:
    """Move VM disk images in and out of oVirt through the ImageTransfer API.

    With no engine configured, engine commands use the embedded local engine
    (see `imagetool serve --help`), so everything works on a bare machine.

    Exit codes: 0 ok, 1 operation failed, 2 usage error, 3 authentication or
    connection failure, 130 interrupted.
    """


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    # A command whose work is done ignores Ctrl-C from then on
    # (threads.interrupts_ignored); the caller's handler comes back after it.
    handler = signal.getsignal(signal.SIGINT) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        _main(argv)
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def _main(argv: list[str] | None) -> None:
    try:
        cli.main(args=argv, prog_name="imagetool", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt, RuntimeError) as e:
        # Ctrl-C while a command's module is imported: Python wraps the
        # KeyboardInterrupt raised in a class's __set_name__ in a RuntimeError.
        if isinstance(e, RuntimeError) and not isinstance(e.__cause__, KeyboardInterrupt):
            raise
        click.echo("imagetool: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (ImagetoolError, OSError) as e:
        click.echo(f"imagetool: error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 1))


def entry(argv: list[str] | None = None) -> None:
    """The console script and ``python -m imagetool``: :func:`main`, after
    which Ctrl-C is ignored. The command is over and its exit code says
    how; Python dying by SIGINT while it shuts down would tell the shell
    that a command that succeeded (or failed) was interrupted instead."""
    try:
        main(argv)
    except KeyboardInterrupt:       # at main's first line, before its own handling
        click.echo("imagetool: interrupted", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    entry()
