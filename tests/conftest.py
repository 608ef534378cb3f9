"""Pytest fixtures shared by the tests, each defined once.

Plain helper functions and constants are in ``support/helpers.py``; the
larger test doubles in their own modules of ``support/`` (``fake_engine``,
``fake_transfer_engine``, ``fake_backends``, ``fault_proxy``,
``imageio_daemon``...). ``support/`` is on the import path (pyproject's
``pythonpath``), so a test imports them by their plain names: ``from
helpers import MiB``. A test module uses a fixture by naming it as an
argument, without importing it; a fixture used by one folder alone lives in
that folder's conftest.py.

Tests that are slow to run (kills, timeouts, most end-to-end transfers)
are marked ``slow``: ``pytest -m "not slow"`` is the quick loop, and every
folder keeps fast tests in it.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from helpers import (ENGINE_PASSWORD, engine_cli_env, missing_qemu_tools, sdk_examples_dir,
                     start_faulty_engine, stop_faulty_engine, transfers_of, use_cli_env)
from imageio_daemon import ImageioDaemon, make_tls_files, scratch_dir

# --- the assertion rewrite cache --------------------------------------------------

# pytest rewrites every test module's asserts and caches the result only
# where Python may write bytecode. With PYTHONDONTWRITEBYTECODE set, every
# xdist worker rewrote every module on every run: 83 s of quick loop where
# 58 s do with the cache, on 2 cores. The cache then goes under
# .pytest_cache (pytest's own folder), so no __pycache__ appears beside the
# sources, as the setting asks; programs the tests start keep the setting.
if sys.dont_write_bytecode:
    sys.dont_write_bytecode = False
    sys.pycache_prefix = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), ".pytest_cache", "pycache")


# --- peers every run needs -------------------------------------------------------


def pytest_configure(config):
    """Stop at once, in one line, when qemu-utils is missing: nearly every
    image test runs qemu-img, and without it the run would end in hundreds
    of FileNotFoundErrors that do not say what to install. ``pytest
    --collect-only`` and ``--help`` need no peer and are let through."""
    if config.option.collectonly or config.option.help:
        return
    missing = missing_qemu_tools()
    if missing:
        raise pytest.UsageError(
            f"{', '.join(missing)} not found: install Debian's qemu-utils "
            "(apt-get install -y qemu-utils), as the README's test command does")


# --- the SDK's example scripts ---------------------------------------------------


@pytest.fixture(scope="session")
def sdk_examples():
    """The ovirt-engine-sdk-python sdist's examples/ directory (see
    helpers.sdk_examples_dir); tests copy what they run out of it."""
    pytest.importorskip("ovirtsdk4")
    found = sdk_examples_dir()
    if found is None:
        pytest.skip(sdk_examples_dir.why)
    return found


# --- scratch space and the reference imageio daemon ----------------------------


@pytest.fixture
def scratch():
    """A per-test directory under /var/tmp (a disk file system: the reference
    daemon opens images with O_DIRECT), removed afterwards."""
    d = scratch_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_files():
    """A throwaway CA and a server certificate for 127.0.0.1/localhost."""
    d = scratch_dir("imagetool-tls-")
    yield make_tls_files(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def imageio_daemon():
    """The reference daemon serving plain HTTP, shared by a module's tests."""
    with ImageioDaemon() as daemon:
        yield daemon


@pytest.fixture(scope="module")
def imageio_daemon_tls(tls_files):
    """The reference daemon serving HTTPS with the module's throwaway CA."""
    with ImageioDaemon(tls=tls_files) as daemon:
        yield daemon


@pytest.fixture
def transfer_engine(imageio_daemon, scratch):
    """The small in-process engine of fake_transfer_engine.py, its data plane
    the module's reference imageio daemon."""
    from fake_transfer_engine import FakeEngine

    d = os.path.join(scratch, "sd")
    os.mkdir(d)
    eng = FakeEngine(d, imageio_daemon)
    yield eng
    eng.close()


# --- the local engine ------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A TLS LocalEngine on ephemeral loopback ports for the whole module."""
    from imagetool.server.local import LocalEngine

    data_dir = tmp_path_factory.mktemp("engine")
    # Tests add storage domains in their own tmp_path: all below the base.
    eng = LocalEngine(str(data_dir), password=ENGINE_PASSWORD, finished_ttl=60.0,
                      storage_dirs=[str(tmp_path_factory.getbasetemp())])
    eng.start()
    try:
        yield eng
    finally:
        eng.stop()


@pytest.fixture
def conn(engine):
    """imagetool's own engine Connection to ``engine`` (TLS verified)."""
    from imagetool.engine import Connection
    from imagetool.server.local import LocalEngine

    with Connection(engine.url, username=LocalEngine.username, password=ENGINE_PASSWORD,
                    cafile=engine.cafile) as c:
        yield c


@pytest.fixture(scope="module")
def connection(engine):
    """A real ovirtsdk4 connection to the engine, verifying TLS with its CA."""
    sdk = pytest.importorskip("ovirtsdk4")
    con = sdk.Connection(url=engine.url, username="admin@internal",
                         password=ENGINE_PASSWORD, ca_file=engine.cafile)
    try:
        yield con
    finally:
        con.close()


# --- the local engine behind a fault proxy -----------------------------------------


@pytest.fixture(scope="module")
def faulty_engine_module(tmp_path_factory):
    """A local engine whose data plane is reached through a FaultProxy
    (helpers.FaultyEngine), shared by a module's tests."""
    fe = start_faulty_engine(str(tmp_path_factory.mktemp("fault-engine")))
    try:
        yield fe
    finally:
        stop_faulty_engine(fe)


@pytest.fixture
def faulty_engine(faulty_engine_module, monkeypatch):
    """The module's engine, with a clean proxy and the CLI's env pointing at it."""
    fe = faulty_engine_module
    fe.proxy.clear_rules()
    fe.proxy.set_down(False)
    fe.proxy.reset_stats()
    fe.known = {t.id for t in transfers_of(fe)}
    use_cli_env(monkeypatch, fe.env)
    yield fe
    fe.proxy.clear_rules()


@pytest.fixture
def fast_backoff(monkeypatch):
    """Retries wait 20 ms instead of their real backoff, so a fault that
    never stops exhausts them quickly."""
    from imagetool.iocore import backends as retry
    monkeypatch.setattr(retry.RetryPolicy, "delay", lambda self, attempt: 0.02)


# --- the CLI -----------------------------------------------------------------------


@pytest.fixture
def cli(capsys):
    """Run ``imagetool argv`` in-process; return (exit code, stdout, stderr)."""
    from imagetool.cli.main import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = 0
        try:
            main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _without_engine(monkeypatch, base) -> None:
    """No engine settings from the machine running the tests: the client
    home is ``base/home``, the config dir ``base/xdg`` (empty), so the CLI
    uses its in-process local engine."""
    use_cli_env(monkeypatch, {"IMAGETOOL_HOME": os.path.join(base, "home")})
    xdg = os.path.join(base, "xdg")
    os.makedirs(xdg, exist_ok=True)
    monkeypatch.setenv("XDG_CONFIG_HOME", xdg)


@pytest.fixture
def home(scratch, monkeypatch):
    """No engine configured, the client home under ``scratch`` (a disk
    file system, for O_DIRECT); returns ``scratch``."""
    _without_engine(monkeypatch, scratch)
    return scratch


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No engine configured, the client home under ``tmp_path`` (returned):
    ``tmp_path/home``, config dir ``tmp_path/xdg``."""
    _without_engine(monkeypatch, str(tmp_path))
    return tmp_path


@pytest.fixture
def engine_env(engine, tmp_path, monkeypatch):
    """The CLI's environment pointed at the module's local ``engine``
    (returned), with the client home ``tmp_path/home``."""
    use_cli_env(monkeypatch, engine_cli_env(engine, ENGINE_PASSWORD, tmp_path / "home"))
    return engine


# --- a module's own local engine -----------------------------------------------

@pytest.fixture(scope="module")
def module_dir():
    """A scratch directory that lives as long as the test module."""
    d = scratch_dir("imagetool-module-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def own_conn(module_dir):
    """imagetool's Connection to a LocalEngine of the module's own (in
    ``module_dir/engine``, with the password it generated), for tests that
    count what one engine holds."""
    from imagetool.engine import Connection
    from imagetool.server.local import LocalEngine

    with LocalEngine(os.path.join(module_dir, "engine")) as eng:
        with Connection(eng.url, username=eng.username, password=eng.password,
                        cafile=eng.cafile) as c:
            yield c
