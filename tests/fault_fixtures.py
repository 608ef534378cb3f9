"""Fixtures for the fault tests (tests/test_faults_*.py).

``faulty_engine``: a TLS LocalEngine on loopback whose transfers hand out
the URL of a FaultProxy standing in front of the data plane (through
``EngineServer.advertised_dataplane_url``), so every data-plane request of
the client passes the proxy's rules. The engine lives for a module; each
test gets the proxy with no rules and zeroed counters.

``cli(*argv)`` runs ``imagetool`` in this process against that engine and
returns (exit code, stdout, stderr); ``cli_process`` starts it as a child
process (for kill -9). ``engine_state`` tells what the engine holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from fault_proxy import FaultProxy, ProxyTls
from imagetool.engine import Connection
from imagetool.server.local import LocalEngine

PASSWORD = "fault-secret-4711"
MiB = 1 << 20
TERMINAL = ("finished_success", "finished_failure", "cancelled")



@dataclass
class FaultyEngine:
    """The engine, the proxy in front of its data plane, and the env for the CLI."""
    engine: LocalEngine
    proxy: FaultProxy
    env: dict[str, str]
    known: set[str] = field(default_factory=set)   # transfers from before this test

    def connect(self) -> Connection:
        """A fresh API connection (close it)."""
        return Connection(self.engine.url, username=LocalEngine.username,
                          password=PASSWORD, cafile=self.engine.cafile)


def start_faulty_engine(data_dir: str, **options: Any) -> FaultyEngine:
    """Start a LocalEngine and a TLS FaultProxy in front of its data plane."""
    eng = LocalEngine(data_dir, password=PASSWORD, finished_ttl=120.0, **options).start()
    pki = eng.server.pki
    proxy = FaultProxy(("127.0.0.1", eng.server.dataplane_port),
                       ProxyTls(cert_file=pki.cert_file, key_file=pki.key_file,
                                upstream_tls=True, upstream_cafile=pki.ca_file)).start()
    eng.server.advertised_dataplane_url = proxy.url_for()
    env = {"IMAGETOOL_ENGINE_URL": eng.url, "IMAGETOOL_USERNAME": LocalEngine.username,
           "IMAGETOOL_PASSWORD": PASSWORD, "IMAGETOOL_CAFILE": eng.cafile,
           "IMAGETOOL_HOME": os.path.join(data_dir, "client-home")}
    return FaultyEngine(eng, proxy, env)


def stop_faulty_engine(fe: FaultyEngine) -> None:
    """Stop the proxy, then the engine."""
    fe.proxy.stop()
    fe.engine.stop()


@pytest.fixture(scope="module")
def faulty_engine_module(tmp_path_factory):
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
    for name in ("IMAGETOOL_CONFIG", "IMAGETOOL_PASSWORD_FILE", "IMAGETOOL_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    for k, v in fe.env.items():
        monkeypatch.setenv(k, v)
    yield fe
    fe.proxy.clear_rules()


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


def cli_process(env: dict[str, str], *argv: str, **kw: Any) -> subprocess.Popen:
    """``python -m imagetool argv`` as a child process with ``env`` added."""
    full = dict(os.environ)
    full.update(env)
    return subprocess.Popen([sys.executable, "-m", "imagetool", *map(str, argv)],
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


# --- what the engine holds ---------------------------------------------------

def disks_named(fe: FaultyEngine, name: str) -> list[Any]:
    """The engine's disks called ``name``."""
    with fe.connect() as conn:
        return [d for d in conn.disks.list() if d.name == name]


def transfers_of(fe: FaultyEngine, disk_id: str | None = None) -> list[Any]:
    """The engine's transfers (of ``disk_id`` when given)."""
    with fe.connect() as conn:
        return [t for t in conn.transfers.list() if disk_id is None or t.disk_id == disk_id]


def wait_settled(fe: FaultyEngine, timeout: float = 20.0) -> list[Any]:
    """Wait until no transfer is in a non-terminal phase and no disk is locked;
    return the transfers. Fails the test if that does not happen."""
    deadline = time.monotonic() + timeout
    while True:
        with fe.connect() as conn:
            ts = conn.transfers.list()
            locked = [d.name for d in conn.disks.list() if d.status == "locked"]
        busy = [t.phase for t in ts if t.phase not in TERMINAL]
        if not busy and not locked:
            return ts
        if time.monotonic() > deadline:
            raise AssertionError(f"engine not settled: phases {busy}, locked disks {locked}")
        time.sleep(0.1)


def new_phases(fe: FaultyEngine, timeout: float = 20.0) -> list[str]:
    """Once the engine settled: the sorted phases of this test's transfers."""
    return sorted(t.phase for t in wait_settled(fe, timeout) if t.id not in fe.known)


def no_partial_files(directory: str, final: str) -> list[str]:
    """Files in ``directory`` that look like the final name or a temporary of it."""
    base = os.path.basename(final)
    return [n for n in os.listdir(directory) if n == base or n.startswith(base)
            or n.startswith("." + base)]


def make_raw(path: str, size: int, seed: int = 1, every: int = 1) -> str:
    """A raw image with random data in every ``every``-th MiB (the rest holes)."""
    import random
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, every * MiB):
            f.seek(off)
            f.write(rnd.randbytes(min(MiB, size - off)))
    return path


def qemu_img(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run qemu-img; fail the test on error when ``check``."""
    p = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def same_image(a: str, b: str, fmt_a: str = "raw", fmt_b: str = "raw") -> bool:
    """qemu-img compare (strict sizes): True when guest data is identical."""
    p = qemu_img("compare", "-s", "-f", fmt_a, "-F", fmt_b, a, b, check=False)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode == 0
