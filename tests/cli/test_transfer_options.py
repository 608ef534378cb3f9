"""CLI options an audit found untested: --disk-id, --use-proxy, url TLS
options, a 4.1-style signed_ticket, and progress bars on a terminal.

The engine is a TLS LocalEngine in this process. Its transfers are rendered
with ``transfer_url`` and ``proxy_url`` pointing at two different counting
proxies in front of the same data plane (the local engine gives both the
same URL), so a test can tell which URL the client used; a test can also
add a ``signed_ticket`` the way a 4.1 engine does, and the proxy standing
for the engine's proxy records the headers it sees.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

from fault_proxy import FaultProxy, ProxyTls
from helpers import MiB, engine_cli_env, images_equal, make_raw, qemu_img, use_cli_env
from imagetool.engine import Connection
from imagetool.server.local import LocalEngine
from imagetool.server.rest import imagetransfers

PASSWORD = "options-secret-0815"


class HeaderProxy(FaultProxy):
    """A FaultProxy that also keeps each request's headers (lower-case names)."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    def _on_request(self, req: Any):  # the proxy's per-request hook
        self.seen.append((req.first[0], req.first[1], dict(req.headers)))
        return super()._on_request(req)


class Env:
    """The engine, the two proxies and what the rendered transfers carry."""

    def __init__(self, engine: LocalEngine, direct: FaultProxy, proxy: HeaderProxy):
        self.engine = engine
        self.direct = direct            # stands for the host: transfer_url
        self.proxy = proxy              # stands for the engine's proxy: proxy_url
        self.signed_ticket: str | None = None

    def connect(self) -> Connection:
        return Connection(self.engine.url, username=LocalEngine.username,
                          password=PASSWORD, cafile=self.engine.cafile)

    def reset(self) -> None:
        self.signed_ticket = None
        for p in (self.direct, self.proxy):
            p.reset_stats()
        self.proxy.seen.clear()


@pytest.fixture(scope="module")
def env_module(tmp_path_factory) -> Iterator[Env]:
    data = str(tmp_path_factory.mktemp("options-engine"))
    eng = LocalEngine(data, password=PASSWORD, finished_ttl=120.0).start()
    pki = eng.server.pki
    upstream = ("127.0.0.1", eng.server.dataplane_port)

    def tls() -> ProxyTls:
        return ProxyTls(cert_file=pki.cert_file, key_file=pki.key_file,
                        upstream_tls=True, upstream_cafile=pki.ca_file)
    direct = FaultProxy(upstream, tls()).start()
    proxy = HeaderProxy(upstream, tls()).start()
    env = Env(eng, direct, proxy)
    original = imagetransfers.transfer_repr

    def transfer_repr(req: Any, t: dict) -> dict:
        r = original(req, t)
        if r.get("transfer_url"):
            path = urlsplit(r["transfer_url"]).path
            r["transfer_url"] = direct.url_for(path)
            r["proxy_url"] = proxy.url_for(path)
            if env.signed_ticket:
                r["signed_ticket"] = env.signed_ticket
        return r
    mp = pytest.MonkeyPatch()
    mp.setattr(imagetransfers, "transfer_repr", transfer_repr)
    try:
        yield env
    finally:
        mp.undo()
        proxy.stop()
        direct.stop()
        eng.stop()


@pytest.fixture
def env(env_module: Env, monkeypatch, tmp_path) -> Env:
    e = env_module
    e.reset()
    use_cli_env(monkeypatch, engine_cli_env(e.engine, PASSWORD, tmp_path / "client-home"))
    return e


def transfer_ids(cli) -> set[str]:
    code, out, err = cli("transfers", "list", "--json")
    assert code == 0, err
    return {t["id"] for t in json.loads(out)}


def disks_json(cli) -> list[dict]:
    code, out, err = cli("disks", "list", "--json")
    assert code == 0, err
    return json.loads(out)


def upload_json(cli, path: str, *opts: Any) -> dict:
    """The one object of `upload --json` (always a list) for one file."""
    code, out, err = cli("upload", path, "--sd", "data", "--json", *opts)
    assert code == 0, err
    return json.loads(out)[0]


# --- 1. an image larger than the existing --disk-id disk -----------------------

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_upload_larger_image_onto_existing_disk_id(env, cli, tmp_path, fmt):
    """--disk-id names the NEW disk: an existing disk's id is refused before
    any transfer starts; the existing disk stays ok with its bytes."""
    small = str(tmp_path / "small.raw")
    make_raw(small, 2 * MiB, [(0, MiB)], seed=11)
    disk = upload_json(cli, small, "--name", f"keep-{fmt}")["disk_id"]
    before_transfers = transfer_ids(cli)
    before_disks = disks_json(cli)

    big_raw = str(tmp_path / "big.raw")
    make_raw(big_raw, 4 * MiB, [(0, 4 * MiB)], seed=12)
    big = big_raw
    if fmt == "qcow2":
        big = str(tmp_path / "big.qcow2")
        qemu_img("convert", "-f", "raw", "-O", "qcow2", big_raw, big)
    code, out, err = cli("upload", big, "--sd", "data", "--disk-id", disk)
    assert code == 1
    assert out == ""
    assert err == (f"imagetool: error: {big}: conflict: POST disks: Cannot add Virtual "
                   f"Disk. A disk with id {disk} already exists.\n")

    assert transfer_ids(cli) == before_transfers       # no transfer was even created
    after = disks_json(cli)
    assert after == before_disks                        # same disks, same sizes
    assert [d["status"] for d in after if d["id"] == disk] == ["ok"]
    back = str(tmp_path / "back.raw")
    code, _, err = cli("download", disk, back)
    assert code == 0, err
    assert images_equal(small, back, "raw", "raw")


# --- 2. --disk-id into an existing empty disk ------------------------------------

@pytest.mark.slow
def test_upload_disk_id_new_disk_gets_that_id(env, cli, tmp_path):
    """A fresh --disk-id: the bytes land in a disk with exactly that id."""
    import uuid
    src = str(tmp_path / "data.raw")
    make_raw(src, 3 * MiB, [(MiB, MiB + 4096)], seed=21)
    want = str(uuid.uuid4())
    before = {d["id"] for d in disks_json(cli)}
    r = upload_json(cli, src, "--disk-id", want, "--name", "by-id")
    assert r["disk_id"] == want
    assert {d["id"] for d in disks_json(cli)} - before == {want}
    back = str(tmp_path / "back.qcow2")
    code, _, err = cli("download", want, back, "--format", "qcow2")
    assert code == 0, err
    qemu_img("compare", "-f", "raw", "-F", "qcow2", src, back)


@pytest.mark.slow
def test_upload_disk_id_of_existing_empty_disk(env, cli, tmp_path):
    """An existing empty disk's id: the upload is refused (the option creates
    a disk, it does not fill one); nothing is written there and no disk is
    added."""
    empty = str(tmp_path / "empty.raw")
    make_raw(empty, 3 * MiB, [], seed=0)
    disk = upload_json(cli, empty, "--name", "empty-target")["disk_id"]
    before = disks_json(cli)
    src = str(tmp_path / "data.raw")
    make_raw(src, 3 * MiB, [(0, 3 * MiB)], seed=22)
    code, out, err = cli("upload", src, "--sd", "data", "--disk-id", disk)
    assert code == 1 and "already exists" in err
    assert disks_json(cli) == before
    back = str(tmp_path / "back.raw")
    code, _, err = cli("download", disk, back)
    assert code == 0, err
    assert images_equal(empty, back, "raw", "raw")
    assert not images_equal(src, back, "raw", "raw")


# --- 3. --use-proxy --------------------------------------------------------------

@pytest.mark.slow
def test_use_proxy_sends_data_to_proxy_url_only(env, cli, tmp_path):
    src = str(tmp_path / "p.raw")
    make_raw(src, 3 * MiB, [(0, 2 * MiB)], seed=31)
    r = upload_json(cli, src, "--use-proxy", "--name", "via-proxy")
    assert env.direct.stats.requests == {}
    assert env.proxy.stats.requests["PUT"] >= 1
    assert env.proxy.stats.body_bytes_up >= 2 * MiB
    back = str(tmp_path / "back.raw")
    env.reset()
    code, _, err = cli("download", r["disk_id"], back, "--use-proxy")
    assert code == 0, err
    assert images_equal(src, back, "raw", "raw")
    assert env.direct.stats.requests == {}
    assert env.proxy.stats.body_bytes_down >= 2 * MiB


def test_without_use_proxy_data_goes_to_transfer_url(env, cli, tmp_path):
    """The other side of the test above: the two URLs are really told apart."""
    src = str(tmp_path / "d.raw")
    make_raw(src, 3 * MiB, [(0, 2 * MiB)], seed=32)
    upload_json(cli, src, "--name", "direct")
    assert env.proxy.stats.requests == {}
    assert env.direct.stats.requests["PUT"] >= 1
    assert env.direct.stats.body_bytes_up >= 2 * MiB


# --- 5. signed_ticket --------------------------------------------------------------

@pytest.mark.slow
def test_signed_ticket_sent_as_authorization_header(env, cli, tmp_path):
    src = str(tmp_path / "s.raw")
    make_raw(src, 2 * MiB, [(0, MiB)], seed=51)
    env.signed_ticket = "signed-ticket-value-Zx9"
    r = upload_json(cli, src, "--use-proxy", "--name", "signed")
    assert env.proxy.seen, "no request reached the proxy"
    auth = {(m, h.get("authorization")) for m, _, h in env.proxy.seen}
    assert {a for _, a in auth} == {"signed-ticket-value-Zx9"}, auth
    assert "PUT" in {m for m, _ in auth}
    # downloads too
    env.reset()
    env.signed_ticket = "signed-ticket-value-Yq1"
    back = str(tmp_path / "back.raw")
    code, _, err = cli("download", r["disk_id"], back, "--use-proxy")
    assert code == 0, err
    assert {h.get("authorization") for _, _, h in env.proxy.seen} == {
        "signed-ticket-value-Yq1"}
    assert "GET" in {m for m, _, _ in env.proxy.seen}
    assert images_equal(src, back, "raw", "raw")


@pytest.mark.slow
def test_no_signed_ticket_no_authorization_header(env, cli, tmp_path):
    src = str(tmp_path / "n.raw")
    make_raw(src, MiB, [(0, MiB)], seed=52)
    upload_json(cli, src, "--use-proxy", "--name", "unsigned")
    assert env.proxy.seen
    assert all("authorization" not in h for _, _, h in env.proxy.seen)


# --- 4. url commands against a TLS data plane -----------------------------------

@pytest.mark.slow
def test_url_commands_tls_options(env, cli, tmp_path, monkeypatch):
    from imagetool.transfer.session import TransferSession
    src = str(tmp_path / "u.raw")
    make_raw(src, 2 * MiB, [(MiB, MiB)], seed=41)
    disk = upload_json(cli, src, "--name", "url-tls")["disk_id"]
    monkeypatch.delenv("IMAGETOOL_CAFILE", raising=False)   # url commands: no engine CA
    conn = env.connect()
    try:
        with TransferSession(conn, disk_id=disk, direction="download") as s:
            # the engine's own TLS data plane, not a proxy
            url = (f"https://127.0.0.1:{env.engine.server.dataplane_port}"
                   f"{urlsplit(s.url).path}")
            ticket = url.rsplit("/", 1)[1]
            for argv in (("url", "info", url), ("url", "download", url,
                                                str(tmp_path / "x.raw"))):
                code, out, err = cli(*argv)
                assert code == 3, (argv, err)
                assert "--cafile" in err and "--insecure" in err, err
                assert ticket not in err
                assert not os.path.exists(tmp_path / "x.raw")
            code, out, err = cli("url", "info", url, "--cafile", env.engine.cafile, "--json")
            assert code == 0, err
            assert json.loads(out)["size"] == 2 * MiB
            code, out, err = cli("url", "info", url, "--insecure", "--json")
            assert code == 0, err
            assert json.loads(out)["size"] == 2 * MiB
            for opt in (["--cafile", env.engine.cafile], ["--insecure"]):
                dst = str(tmp_path / f"dl{len(opt)}.raw")
                code, out, err = cli("url", "download", url, dst, *opt)
                assert code == 0, err
                assert images_equal(src, dst, "raw", "raw")
    finally:
        conn.close()


# --- 6. progress bars on a terminal, none when piped ------------------------------

def _child_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGETOOL_")}
    env["IMAGETOOL_HOME"] = home
    env["XDG_CONFIG_HOME"] = os.path.join(home, "config")
    env["COLUMNS"] = "120"
    return env


def _run_on_pty(argv: list[str], env: dict[str, str], timeout: float = 90.0,
                size: tuple[int, int] = (24, 120)) -> tuple[int, str]:
    master, slave = pty.openpty()
    # A fresh pty is 0x0; give it a size unless the test wants that 0x0.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                                env=env, close_fds=True)
    finally:
        os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    data = os.read(master, 65536)
                except OSError:         # EIO: every slave end is closed
                    data = b""
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
            assert time.monotonic() < deadline, "child did not finish"
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def _two_images(tmp_path) -> list[str]:
    files = []
    for i in range(2):
        p = str(tmp_path / f"bar-image-{i}.raw")
        make_raw(p, 2 * MiB, [(0, MiB)], seed=60 + i)
        files.append(p)
    return files


@pytest.mark.slow
def test_progress_bars_on_a_terminal(tmp_path):
    files = _two_images(tmp_path)
    code, text = _run_on_pty([sys.executable, "-m", "imagetool", "upload", *files,
                              "--sd", "data"], _child_env(str(tmp_path / "home")))
    assert code == 0, text
    bar_lines = [ln for ln in text.replace("\r", "\n").split("\n") if "%|" in ln]
    for name in ("bar-image-0.raw", "bar-image-1.raw", "total"):
        assert any(name in ln for ln in bar_lines), (name, text)
    for name in ("bar-image-0.raw", "bar-image-1.raw", "total"):
        assert any("100%|" in ln and name in ln for ln in bar_lines), (name, text)


@pytest.mark.slow
def test_progress_bars_on_a_terminal_without_a_size(tmp_path):
    """A terminal reporting 0x0 (fresh ptys, some consoles) still gets bars."""
    files = _two_images(tmp_path)
    env = _child_env(str(tmp_path / "home"))
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    code, text = _run_on_pty([sys.executable, "-m", "imagetool", "upload", *files,
                              "--sd", "data"], env, size=(0, 0))
    assert code == 0, text
    bar_lines = [ln for ln in text.replace("\r", "\n").split("\n") if "%|" in ln]
    for name in ("bar-image-0.raw", "bar-image-1.raw", "total"):
        assert any("100%|" in ln and name in ln for ln in bar_lines), (name, text)


@pytest.mark.slow
def test_no_progress_bars_when_piped(tmp_path):
    files = _two_images(tmp_path)
    p = subprocess.run([sys.executable, "-m", "imagetool", "upload", *files, "--sd", "data"],
                       env=_child_env(str(tmp_path / "home")), capture_output=True,
                       text=True, timeout=90)
    assert p.returncode == 0, p.stderr
    assert "%|" not in p.stderr and "%|" not in p.stdout
    assert "\r" not in p.stderr
    assert p.stdout.count("uploaded ") == 2


# --- 1b. the same refusal one layer down: a transfer into the existing disk ------

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_transfer_of_larger_image_into_existing_disk(env, cli, tmp_path, fmt):
    """No CLI path fills an existing disk, so the size check is reached through
    a TransferSession on the existing disk: raw guest data (4 MiB into a 2 MiB
    raw disk) is refused before any PUT; qcow2 volume bytes (a 4 MiB image
    into a 2 MiB cow disk) are refused by the data plane past the volume's
    end (or at finalize). Either way the transfer ends finished_failure and
    the disk keeps what it held before: a failed transfer into an existing
    disk never destroys its earlier content, nor leaves it locked/illegal or
    half written."""
    from imagetool.errors import ImagetoolError
    from imagetool.formats import open_image
    from imagetool.formats.raw import RawBackend
    from imagetool.iocore.copier import CopyOptions, copy
    from imagetool.transfer.session import TransferSession
    small = str(tmp_path / "small.raw")
    make_raw(small, 2 * MiB, [(0, MiB)], seed=13)
    disk_format = "raw" if fmt == "raw" else "qcow2"
    disk = upload_json(cli, small, "--name", f"existing-{fmt}",
                       "--disk-format", disk_format)["disk_id"]
    before_disks = disks_json(cli)
    before_transfers = transfer_ids(cli)

    big_raw = str(tmp_path / "big.raw")
    make_raw(big_raw, 4 * MiB, [(0, 4 * MiB)], seed=14)
    if fmt == "raw":
        src, tf, match, opts = open_image(big_raw, "r"), "raw", "smaller than the source", CopyOptions()
    else:
        big = str(tmp_path / "big.qcow2")
        qemu_img("convert", "-f", "raw", "-O", "qcow2", big_raw, big)
        src, tf, opts = RawBackend(big, "r"), "cow", CopyOptions(check_size=False)
        match = "past the image size|finalizing the upload failed"
    try:
        with env.connect() as conn:
            with pytest.raises(ImagetoolError, match=match):
                with TransferSession(conn, disk_id=disk, direction="upload",
                                     format=tf) as s:
                    copy(src, s.open_backend(), opts)
    finally:
        src.close()
    deadline = time.monotonic() + 20
    while True:
        code, out, err = cli("transfers", "list", "--json")
        new = [t for t in json.loads(out) if t["id"] not in before_transfers]
        if all(t["phase"] in ("finished_failure", "cancelled") for t in new):
            break
        assert time.monotonic() < deadline, new
        time.sleep(0.1)
    assert [t["phase"] for t in new] == ["finished_failure"]
    after_disks = disks_json(cli)
    # The same disks, ok; restored content may be stored more sparsely.
    assert [{**d, "actual_size": 0} for d in after_disks] == \
        [{**d, "actual_size": 0} for d in before_disks]
    assert all(a["actual_size"] <= b["actual_size"]
               for a, b in zip(after_disks, before_disks))
    back = str(tmp_path / "back.raw")
    code, _, err = cli("download", disk, back)
    assert code == 0, err
    assert images_equal(back, small)
