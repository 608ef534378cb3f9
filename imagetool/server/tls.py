"""A private CA and a server certificate for the local engine.

Generated once into ``<data-dir>/pki`` with ``cryptography``: ``ca.pem`` (what
clients verify against, also served at the engine's pki-resource URL),
``server.pem`` and ``server.key`` (SAN: 127.0.0.1, ::1, localhost, the host
name and any extra name asked for). EC P-256 keys keep generation instant.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650


@dataclass(frozen=True)
class Pki:
    ca_file: str
    cert_file: str
    key_file: str


def _names(extra: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in ["localhost", socket.gethostname(), "127.0.0.1", "::1", *extra]:
        if not name or name in seen or name in ("0.0.0.0", "::"):
            continue
        seen.add(name)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return names


def _write_private(path: str, data: bytes) -> None:
    """Write ``path`` owner-only (0600 whatever the umask, an existing file too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_pki(data_dir: str, extra_names: list[str] | None = None) -> Pki:
    """Create the CA and server certificate unless they exist; return paths.

    The server certificate is re-issued (same CA) when a requested name is
    not in its SAN, e.g. when serving on a new address.
    """
    pki_dir = os.path.join(data_dir, "pki")
    os.makedirs(pki_dir, mode=0o700, exist_ok=True)
    os.chmod(pki_dir, 0o700)
    pki = Pki(os.path.join(pki_dir, "ca.pem"), os.path.join(pki_dir, "server.pem"),
              os.path.join(pki_dir, "server.key"))
    extra = [n for n in (extra_names or []) if n]
    now = datetime.datetime.now(datetime.timezone.utc)
    if os.path.exists(pki.ca_file) and os.path.exists(pki.key_file + ".ca"):
        with open(pki.ca_file, "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
        with open(pki.key_file + ".ca", "rb") as f:
            ca_key = serialization.load_pem_private_key(f.read(), None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imagetool"),
                             x509.NameAttribute(NameOID.COMMON_NAME,
                                                f"imagetool local CA {socket.gethostname()}")])
        ca_cert = (x509.CertificateBuilder()
                   .subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                False, False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
        _write_private(pki.key_file + ".ca", ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        _write_private(pki.ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
        for stale in (pki.cert_file, pki.key_file):
            if os.path.exists(stale):
                os.unlink(stale)
    if os.path.exists(pki.cert_file) and os.path.exists(pki.key_file):
        with open(pki.cert_file, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if all(n in san for n in _names(extra)):
            return pki
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imagetool"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS - 1))
            .add_extension(x509.SubjectAlternativeName(_names(extra)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(pki.key_file, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    _write_private(pki.cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return pki


def server_context(pki: Pki) -> ssl.SSLContext:
    """A TLS server context with the generated certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(pki.cert_file, pki.key_file)
    return ctx
