"""The CLI's command table: every name resolves to the command of that
name, and starting the CLI imports only the command that runs."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import click
import pytest

from imagetool.cli.main import COMMANDS, cli


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_name_gives_the_command_of_that_name(name):
    command = cli.get_command(click.Context(cli), name)
    assert isinstance(command, click.Command) and command.name == name


def test_an_unknown_command_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "imagetool", "uplod"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "No such command 'uplod'" in result.stderr


def _modules_after(argv: list[str]) -> set[str]:
    code = ("import sys; from imagetool.cli.main import cli\n"
            f"try:\n    cli.main({argv!r}, prog_name='imagetool')\n"
            "except SystemExit:\n    pass\n"
            "print(' '.join(m for m in sys.modules if m.startswith('imagetool')),"
            " file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return set(result.stderr.split())


@pytest.mark.slow
def test_a_command_loads_its_own_module_only():
    loaded = _modules_after(["upload", "--help"])
    assert "imagetool.cli.transfer_cmds" in loaded
    others = {f"imagetool.cli.{m}" for m, _ in COMMANDS.values()} - {
        "imagetool.cli.transfer_cmds", "imagetool.cli.serve_cmd"}   # config uses serve_cmd
    assert loaded & others == set()
    assert "imagetool.cli.backup_cmds" not in _modules_after(["--version"])


def _every_command():
    """(path, command) of every command of the table, groups and leaves."""
    ctx = click.Context(cli)
    out = []

    def walk(cmd, path):
        out.append((path, cmd))
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), path + [name])

    for name in sorted(COMMANDS):
        walk(cli.get_command(ctx, name), [name])
    return out


@pytest.mark.parametrize("path,command", _every_command(),
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_help_has_examples_of_options_it_has(path, command):
    """The README promises examples in every --help; each example must
    name this command and only options it takes, below a description
    indented as click indents it."""
    ctx = click.Context(command, info_name=" ".join(path))
    text = command.get_help(ctx)
    assert "Examples:" in text
    # The description as written, not indented as in the source file.
    description = text.split("\n\n", 1)[1].split("Examples:", 1)[0]
    assert [line for line in description.splitlines() if line.startswith(" " * 6)] == []
    examples = [line.strip() for line in text.split("Examples:", 1)[1].splitlines()
                if line.strip().startswith("imagetool ")]
    assert examples
    prefix = "imagetool " + " ".join(path)
    for example in examples:
        assert example.startswith(prefix), example
        if isinstance(command, click.Group):
            continue
        args = shlex.split(example.split("|")[0])[1 + len(path):]
        # Parse only: option names and arity, not files or engines.
        command.make_parser(click.Context(command)).parse_args(
            [a for a in args if a != "..."])


@pytest.mark.slow
def test_shell_completion_as_the_readme_documents():
    env = {**os.environ, "_IMAGETOOL_COMPLETE": "bash_source"}
    script = subprocess.run([sys.executable, "-m", "imagetool"], env=env,
                            capture_output=True, text=True)
    assert script.returncode == 0 and "_imagetool_completion()" in script.stdout
    env.update(_IMAGETOOL_COMPLETE="bash_complete", COMP_WORDS="imagetool vms cr",
               COMP_CWORD="2")
    done = subprocess.run([sys.executable, "-m", "imagetool"], env=env,
                          capture_output=True, text=True)
    assert done.stdout.split() == ["plain,create"]


def test_ctrl_c_while_the_cli_loads_is_exit_130_without_traceback():
    code = ("import runpy, sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'imagetool.cli.main':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "runpy.run_module('imagetool', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (130, "imagetool: interrupted\n")


def test_ctrl_c_after_the_command_ended_keeps_its_exit_code():
    """A Ctrl-C once the command is over (while Python shuts down) does
    not turn its exit code into death by SIGINT."""
    code = ("import os, signal, sys\n"
            "from imagetool.cli.main import entry\n"
            "try:\n"
            "    entry(['--version'])\n"
            "finally:\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
