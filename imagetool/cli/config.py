"""Which engine a command talks to: options, environment, config file.

Every engine command takes the same options through ``@engine_options``,
which hands the command one ``engine: EngineOptions`` argument; the command
then calls ``with open_connection(engine) as conn: ...``.

Precedence, per setting: command-line flag > ``IMAGETOOL_*`` environment
variable > the ``-c/--config SECTION`` of ``~/.config/imagetool.conf``
(path overridden by ``$IMAGETOOL_CONFIG``; a section missing there is also
looked up in ovirt-img's ``~/.config/ovirt-img.conf``, whose keys
``engine_url``, ``username``, ``password``, ``cafile``, ``secure`` are
understood). With no engine URL from anywhere, the embedded local engine is
used: a running ``imagetool serve`` (``paths.locate_engine`` says which),
else one started in-process for the duration of the command.
"""

from __future__ import annotations

import configparser
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import click

from imagetool.cli.common import JSON, option_group
from imagetool.cli.serve_cmd import in_process_engine
from imagetool.engine import Connection
from imagetool.engine.connection import normalize_url
from imagetool.errors import Conflict, ImagetoolError, UsageError
from imagetool.phases import ACTIVE
from imagetool.paths import locate_engine

ENV_PREFIX = "IMAGETOOL_"


@dataclass
class EngineOptions:
    """What the user gave on the command line (None: not given)."""

    engine_url: str | None = None
    username: str | None = None
    password_file: str | None = None
    cafile: str | None = None
    insecure: bool = False
    config: str | None = None


@dataclass
class ResolvedEngine:
    """Connection settings after merging flags, environment and config."""

    url: str
    username: str | None
    password: str | None = field(repr=False)       # never shown
    cafile: str | None
    insecure: bool


def config_paths(env: Mapping[str, str] | None = None) -> list[str]:
    """Config files searched for a section, in order."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    own = env.get("IMAGETOOL_CONFIG") or os.path.join(base, "imagetool.conf")
    return [own, os.path.join(base, "ovirt-img.conf")]


def _parse_bool(value: str, what: str) -> bool:
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise click.UsageError(f"{what}: expected true or false, not {value!r}")


def _config_error(path: str, e: configparser.Error) -> str:
    """One line for a config file configparser cannot read (its own message
    spans lines): the file, the first bad line, what is expected."""
    if isinstance(e, configparser.MissingSectionHeaderError):
        where = f"line {e.lineno}: {e.line.strip()!r} comes before any [section]"
    elif isinstance(e, configparser.ParsingError) and e.errors:
        lineno, line = e.errors[0]          # the line as repr() already
        where = f"line {lineno}: " + line.replace("\\n", "")
    elif isinstance(e, configparser.DuplicateOptionError):
        where = f"line {e.lineno}: {e.option!r} appears twice in [{e.section}]"
    elif isinstance(e, configparser.DuplicateSectionError):
        where = f"line {e.lineno}: [{e.section}] appears twice"
    else:
        where = (e.message or type(e).__name__).splitlines()[0]
    return (f"cannot read config file {path}, {where}: expected [section] headers and "
            f"key = value lines; fix or remove the file")


def read_config_section(section: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The keys of ``[section]`` from the first config file that has it."""
    paths = config_paths(env)
    for path in paths:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except configparser.Error as e:
            raise UsageError(_config_error(path, e)) from None
        if parser.has_section(section):
            values = dict(parser.items(section))
            values["__file__"] = path
            return values
    raise click.UsageError(
        f"no section [{section}] in {' or '.join(paths)}")


def _read_password_file(path: str) -> str:
    try:
        with open(os.path.expanduser(path)) as f:
            return f.read().rstrip("\r\n")
    except OSError as e:
        raise click.UsageError(f"cannot read password file: {e}") from None


def resolve(opts: EngineOptions, env: Mapping[str, str] | None = None) -> ResolvedEngine | None:
    """Merge flags > environment > config section; None when no engine is set.

    Raises click.UsageError (exit 2) for a missing section, an unreadable
    password file or an engine URL without a username.
    """
    env = os.environ if env is None else env
    conf: dict[str, str] = read_config_section(opts.config, env) if opts.config else {}

    def pick(flag: Any, env_name: str, conf_key: str) -> Any:
        if flag not in (None, ""):
            return flag
        if env.get(ENV_PREFIX + env_name):
            return env[ENV_PREFIX + env_name]
        return conf.get(conf_key) or None

    url = pick(opts.engine_url, "ENGINE_URL", "engine_url")
    if not url:
        return None
    normalize_url(url)      # a malformed URL: a usage error before anything else
    username = pick(opts.username, "USERNAME", "username")
    cafile = pick(opts.cafile, "CAFILE", "cafile")

    insecure = opts.insecure
    if not insecure and env.get("IMAGETOOL_INSECURE"):
        insecure = _parse_bool(env["IMAGETOOL_INSECURE"], "IMAGETOOL_INSECURE")
    elif not insecure and "insecure" in conf:
        insecure = _parse_bool(conf["insecure"], "insecure")
    elif not insecure and "secure" in conf:     # ovirt-img's spelling
        insecure = not _parse_bool(conf["secure"], "secure")

    password = None
    for value, is_file in ((opts.password_file, True), (env.get("IMAGETOOL_PASSWORD"), False),
                           (env.get("IMAGETOOL_PASSWORD_FILE"), True),
                           (conf.get("password"), False), (conf.get("password_file"), True)):
        if value:       # the first one given, a file read only then
            password = _read_password_file(value) if is_file else value
            break

    if not username:
        raise click.UsageError(
            "an engine URL is set but no username: pass --username "
            "(e.g. admin@internal), IMAGETOOL_USERNAME or a config section")
    return ResolvedEngine(url=url, username=username, password=password,
                          cafile=os.path.expanduser(cafile) if cafile else None,
                          insecure=insecure)


@contextmanager
def open_connection(opts: EngineOptions) -> Iterator[Connection]:
    """A checked Connection to the configured engine, or to the local engine.

    The connection is tested (API root + login) before it is yielded, so
    bad credentials or TLS problems fail here with exit code 3.
    """
    resolved = resolve(opts)
    if resolved is None:
        tested = _local_engine_connection()
    else:
        password = resolved.password
        if password is None:
            if not sys.stdin.isatty():
                raise click.UsageError(
                    "no engine password: pass --password-file, IMAGETOOL_PASSWORD(_FILE) "
                    "or a config section with password")
            password = click.prompt(f"Password for {resolved.username}", hide_input=True,
                                    err=True)
        tested = _tested(resolved.url, username=resolved.username, password=password,
                         cafile=resolved.cafile, insecure=resolved.insecure)
    with tested as conn, naming_lock_holders(conn):
        yield conn


@contextmanager
def naming_lock_holders(conn: Connection) -> Iterator[None]:
    """A "disk is locked" conflict names the transfer holding the disk and
    the command that ends it: the engine says only "try again later"."""
    try:
        yield
    except Conflict as e:
        text = str(e)
        if "locked" not in text.lower():
            raise
        holders = []
        try:
            for t in conn.transfers.list():
                if t.phase not in ACTIVE or not t.disk_id:
                    continue
                names = {t.disk_id, conn.disks.get(t.disk_id).name}
                if any(n and re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w.-])", text)
                       for n in names):
                    holders.append(t)
        except ImagetoolError:
            raise e from None       # the lookup is a help; the conflict is the error
        if holders:
            e.args = (text + "; " + "; ".join(
                f"image transfer {t.id} ({t.direction}, {t.phase}) holds disk "
                f"{t.disk_id}: end it with 'imagetool transfers cancel {t.id}'"
                for t in holders),)
        raise


@contextmanager
def _tested(url: str, **kwargs: Any) -> Iterator[Connection]:
    with Connection(url, **kwargs) as conn:
        conn.test()
        yield conn


@contextmanager
def _local_engine_connection() -> Iterator[Connection]:
    """Use ``imagetool serve`` if it runs on the data dir, else start one here."""
    data_dir, info = locate_engine()
    if info:
        password = info.get("password")
        if password is None and info.get("password_file"):
            password = _read_password_file(info["password_file"])
        with _tested(info["url"], username=info.get("username", "admin@internal"),
                     password=password, cafile=info.get("cafile")) as conn:
            yield conn
        return
    with in_process_engine(data_dir) as engine, \
            _tested(engine.url, username=engine.username, password=engine.password,
                    cafile=engine.cafile) as conn:
        yield conn


#: Click decorator: the engine options, passed as ``engine: EngineOptions``.
engine_options = option_group(EngineOptions, "engine", [
    click.option("--engine-url", metavar="URL",
                 help="Engine URL (https://HOST or .../ovirt-engine/api) "
                      "[env IMAGETOOL_ENGINE_URL]. Without it: the local engine."),
    click.option("--username", metavar="USER",
                 help="Engine user, e.g. admin@internal [env IMAGETOOL_USERNAME]."),
    click.option("--password-file", metavar="FILE",
                 help="Read the password from FILE [env IMAGETOOL_PASSWORD_FILE, "
                      "or IMAGETOOL_PASSWORD]."),
    click.option("--cafile", metavar="FILE",
                 help="Engine CA certificate (PEM) [env IMAGETOOL_CAFILE]."),
    click.option("--insecure", is_flag=True, default=False,
                 help="Do not verify the engine's TLS certificate "
                      "[env IMAGETOOL_INSECURE]."),
    click.option("-c", "--config", metavar="SECTION",
                 help="Read settings from SECTION of ~/.config/imagetool.conf "
                      "($IMAGETOOL_CONFIG) or ovirt-img.conf."),
])


def json_engine_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` and the engine options, which most engine commands take."""
    return JSON(engine_options(func))


def engine_view(group: click.Group, name: str, argument: str,
                metavar: str | None = None) -> Callable[..., Any]:
    """Click decorator of a command on one thing of the engine: ``GROUP
    NAME ARGUMENT [--json]`` and the engine options; the function takes
    (ARGUMENT, as_json, engine)."""
    def decorate(func: Callable[..., Any]) -> Any:
        func = click.argument(argument, metavar=metavar)(json_engine_options(func))
        return group.command(name)(func)
    return decorate
