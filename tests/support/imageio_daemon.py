"""Test peers for the imageio data plane: the REAL reference daemon and TLS files.

Reusable by any test module::

    from imageio_daemon import ImageioDaemon, QemuNbd, make_tls_files

    with ImageioDaemon() as daemon:
        url = daemon.add_ticket(path=image, size=size, ops=["read", "write"])

or through the pytest fixtures of tests/conftest.py: ``imageio_daemon``
(module scope, plain HTTP), ``imageio_daemon_tls``, ``tls_files`` and
``scratch``.

The daemon's file backend opens images with O_DIRECT, so images and the run
directory live under /var/tmp (a real file system), never on tmpfs.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import find_tool

SCRATCH_ROOT = "/var/tmp"


def scratch_dir(prefix: str = "imagetool-test-") -> str:
    """A fresh directory on a real file system (O_DIRECT works there)."""
    return tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_ROOT)


# --- TLS -----------------------------------------------------------------

@dataclass(frozen=True)
class TlsFiles:
    ca_file: str       # CA certificate (PEM), give it to clients as cafile
    cert_file: str     # server certificate for 127.0.0.1 / localhost
    key_file: str      # server private key (unencrypted PEM)


def make_tls_files(directory: str) -> TlsFiles:
    """Generate a throwaway CA and a server certificate signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagetool test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    d = Path(directory)
    files = TlsFiles(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"))
    Path(files.ca_file).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    Path(files.cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(files.key_file).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return files


# --- the reference daemon -------------------------------------------------

class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the daemon's unix control socket."""

    def __init__(self, path: str, timeout: float = 10.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class ImageioDaemon:
    """The reference ``ovirt-imageio`` daemon on 127.0.0.1 (ephemeral port).

    ``tls``: serve HTTPS with these files; None serves plain HTTP.
    """

    def __init__(self, tls: TlsFiles | None = None, workdir: str | None = None):
        self.tls = tls
        self._own_workdir = workdir is None
        self.workdir = workdir or scratch_dir("imageio-daemon-")
        self.run_dir = os.path.join(self.workdir, "run")
        self.control_socket = os.path.join(self.run_dir, "control.sock")
        self.log_path = os.path.join(self.workdir, "daemon.log")
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _write_conf(self) -> str:
        conf_dir = os.path.join(self.workdir, "conf")
        os.makedirs(os.path.join(conf_dir, "conf.d"), exist_ok=True)
        os.makedirs(self.run_dir, exist_ok=True)
        if self.tls:
            tls = (f"enable = true\nkey_file = {self.tls.key_file}\n"
                   f"cert_file = {self.tls.cert_file}\nca_file = {self.tls.ca_file}\n")
        else:
            tls = "enable = false\n"
        text = (
            "[daemon]\nsystemd_enable = false\ndrop_privileges = false\n"
            f"run_dir = {self.run_dir}\n"
            f"[tls]\n{tls}"
            f"[remote]\nhost = 127.0.0.1\nport = {self.port}\n"
            "[local]\nenable = false\n"
            f"[control]\ntransport = unix\nsocket = {self.control_socket}\n"
            "[handlers]\nkeys = stderr\n"
            "[logger_root]\nlevel = WARNING\nhandlers = stderr\n"
        )
        Path(conf_dir, "conf.d", "daemon.conf").write_text(text)
        return conf_dir

    def start(self, timeout: float = 20.0, tries: int = 3) -> "ImageioDaemon":
        """Start the daemon and wait until it listens on both sockets.

        The port is picked free before the daemon binds it, so another
        process (a parallel test worker) may take it meanwhile: the daemon
        then exits with EADDRINUSE and is started again on another port."""
        for left in range(tries - 1, -1, -1):
            try:
                return self._start(timeout)
            except RuntimeError as e:
                if left == 0 or "Address already in use" not in str(e):
                    raise
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> "ImageioDaemon":
        exe = find_tool("ovirt-imageio")
        if exe is None:
            pytest.skip("ovirt-imageio daemon not installed")
        # The daemon does not report an ephemeral port when logging only
        # warnings, so pick a free port (a race only with other local binders).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf_dir = self._write_conf()
        self._log = open(self.log_path, "w+b")
        self._proc = subprocess.Popen([exe, "-c", conf_dir], stdout=self._log,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"ovirt-imageio exited: {self.log()}")
            if os.path.exists(self.control_socket) and _listening(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"ovirt-imageio did not start: {self.log()}")

    def log(self) -> str:
        """The daemon's log so far."""
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGKILL the daemon (our own pid only) and remove the work dir.

        The daemon is a peer of the tests, not code under test: its graceful
        shutdown (SIGTERM) takes seconds of polling, and there is nothing of
        it to keep, so it is killed at once.
        """
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ImageioDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Control plane ------------------------------------------------------

    def control(self, method: str, path: str, body: dict | None = None):
        """One request on the control socket: (status, parsed JSON or text)."""
        conn = _UnixConnection(self.control_socket)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                return resp.status, json.loads(raw) if raw else None
            except ValueError:
                return resp.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def add_ticket(self, *, size: int, path: str | None = None,
                   nbd_socket: str | None = None, ops=("read", "write"),
                   timeout: int = 300, ticket_id: str | None = None,
                   **extra) -> str:
        """Add a ticket for a file or a qemu-nbd socket; return its transfer URL."""
        ticket_id = ticket_id or str(uuidlib.uuid4())
        if path is not None:
            url = "file://" + os.path.abspath(path)
        elif nbd_socket is not None:
            url = f"nbd:unix:{nbd_socket}"
        else:
            raise ValueError("need path or nbd_socket")
        ticket = {"uuid": ticket_id, "size": size, "ops": list(ops),
                  "timeout": timeout, "url": url, **extra}
        status, reply = self.control("PUT", f"/tickets/{ticket_id}", ticket)
        if status != 200:
            raise RuntimeError(f"adding ticket failed: {status} {reply}")
        return f"{self.url}/images/{ticket_id}"

    def remove_ticket(self, ticket_id: str) -> None:
        self.control("DELETE", f"/tickets/{ticket_id}")

    def ticket_info(self, ticket_id: str) -> dict:
        status, reply = self.control("GET", f"/tickets/{ticket_id}")
        if status != 200:
            raise RuntimeError(f"ticket info failed: {status} {reply}")
        return reply


class QemuNbd:
    """``qemu-nbd`` serving one image on a unix socket (for nbd: tickets)."""

    def __init__(self, image: str, fmt: str = "qcow2", socket_path: str | None = None,
                 bitmap: str | None = None):
        self.image = image
        self.fmt = fmt
        self.bitmap = bitmap      # exported as meta context qemu:dirty-bitmap:NAME
        self.socket_path = socket_path or os.path.join(
            os.path.dirname(os.path.abspath(image)), f"nbd-{os.getpid()}-{id(self)}.sock")
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "QemuNbd":
        if find_tool("qemu-nbd") is None:
            pytest.skip("qemu-nbd not installed")
        self._proc = subprocess.Popen(
            ["qemu-nbd", f"--socket={self.socket_path}", f"--format={self.fmt}",
             "--persistent", "--shared=8", "--cache=none", "--aio=native",
             "--discard=unmap", "--detect-zeroes=unmap",
             *([f"--bitmap={self.bitmap}"] if self.bitmap else []), self.image],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"qemu-nbd exited: {self._proc.stderr.read()!r}")
            # The socket file exists from bind(); wait until it accepts, or
            # a client racing qemu-nbd's listen() is refused (seen under load).
            if os.path.exists(self.socket_path) and self._accepts():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("qemu-nbd did not start")

    def _accepts(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.socket_path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "QemuNbd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def server_ssl_context(tls: TlsFiles):
    """A server-side SSLContext for a test server using ``tls``'s certificate."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx
