"""Keys of an encrypted repository, and the sealing of its objects.

One secret (a key file's bytes, or a passphrase stretched by scrypt, RFC
7914) gives, through HKDF-SHA256 (RFC 5869) with the repository's salt,
three independent 256-bit keys:

- ``enc``: AES-256-GCM (NIST SP 800-38D) for every object's content, with a
  random 96-bit nonce and the object's kind and name as associated data, so
  a chunk moved under another id, or an index swapped for another, fails
  authentication instead of decrypting;
- ``ids``: HMAC-SHA256 of a chunk's plaintext is its id, so the storage
  learns nothing from names (Proxmox Backup Server does the same);
- ``check``: an HMAC stored in the repository's config, so a wrong key is
  one clear error at open, never garbage later.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from imagetool.backup.store.storage import StoreError

KEY_FILE_MIN = 32
KEY_FILE_MAX = 4096
# scrypt cost: about 0.1 s and 32 MiB here; stored per repository so it can grow.
SCRYPT = {"n": 1 << 15, "r": 8, "p": 1}
NONCE = 12
TAG = 16


class BadKey(StoreError):
    """The key is missing, wrong, or not usable (exit code 1)."""


def new_key_file(path: str) -> None:
    """Write 32 random bytes (hex) to a new owner-only key file; refuse an existing one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as e:
        raise BadKey(f"{path}: cannot create key file: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(secrets.token_hex(32) + "\n")
        f.flush()
        os.fsync(fd)


def read_key_file(path: str) -> bytes:
    """A key file's secret bytes (surrounding whitespace ignored)."""
    try:
        with open(path, "rb") as f:
            data = f.read(KEY_FILE_MAX + 1).strip()
    except OSError as e:
        raise BadKey(f"{path}: cannot read key file: {e.strerror}") from None
    if not KEY_FILE_MIN <= len(data) <= KEY_FILE_MAX:
        raise BadKey(f"{path}: a key file holds {KEY_FILE_MIN} to {KEY_FILE_MAX} bytes "
                        f"of secret, not {len(data)}")
    return data


class Keys:
    """The keys derived from one secret for one repository."""

    def __init__(self, secret: bytes, kdf: dict) -> None:
        salt = bytes.fromhex(kdf["salt"])
        if kdf["name"] == "scrypt":
            secret = hashlib.scrypt(secret, salt=salt, n=kdf["n"], r=kdf["r"], p=kdf["p"],
                                    maxmem=256 << 20, dklen=32)
        elif kdf["name"] != "key-file":
            raise BadKey(f"unknown key derivation {kdf['name']!r}")
        okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=salt,
                   info=b"imagetool backup repository v2").derive(secret)
        self._enc = AESGCM(okm[:32])
        self._ids = okm[32:64]
        self._check = okm[64:]

    def check_value(self) -> str:
        """What the config stores to recognise this key."""
        return hmac.new(self._check, b"imagetool key check", hashlib.sha256).hexdigest()

    def chunk_id(self, data) -> str:
        return hmac.new(self._ids, data, hashlib.sha256).hexdigest()

    def seal(self, data: bytes, ad: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._enc.encrypt(nonce, data, ad)

    def open(self, blob: bytes, ad: bytes) -> bytes:
        """The plaintext; BadKey if the blob was changed or sealed otherwise."""
        if len(blob) < NONCE + TAG:
            raise BadKey("truncated")
        try:
            return self._enc.decrypt(blob[:NONCE], blob[NONCE:], ad)
        except InvalidTag:
            raise BadKey("authentication failed") from None


def new_kdf(passphrase: bool) -> dict:
    """Fresh key-derivation parameters for ``init``."""
    kdf = {"name": "scrypt" if passphrase else "key-file", "salt": secrets.token_hex(16)}
    if passphrase:
        kdf.update(SCRYPT)
    return kdf


def check_kdf(kdf, where: str) -> dict:
    """``kdf`` from a config file, validated (bounded scrypt cost)."""
    ok = isinstance(kdf, dict) and kdf.get("name") in ("scrypt", "key-file") \
        and isinstance(kdf.get("salt"), str) and len(kdf["salt"]) == 32
    if ok:
        try:
            bytes.fromhex(kdf["salt"])
        except ValueError:
            ok = False
    if ok and kdf["name"] == "scrypt":
        ok = all(isinstance(kdf.get(k), int) and not isinstance(kdf.get(k), bool)
                 for k in ("n", "r", "p")) and 2 <= kdf["n"] <= 1 << 20 \
            and kdf["n"] & (kdf["n"] - 1) == 0 and 1 <= kdf["r"] <= 32 and 1 <= kdf["p"] <= 16
    if not ok:
        raise StoreError(f"{where}: invalid key derivation parameters")
    return kdf
