"""A repository of deduplicated, compressed, optionally encrypted chunks.

Layout (object names in a ``Storage``):

- ``config``: JSON written once by ``init``: format, version, chunk size,
  compression, and for an encrypted repository the key derivation and a
  key check. Plain text, so a repository can be recognised without a key.
- ``chunks/XXXX/ID``: one chunk, ``ID`` the SHA-256 of its plaintext (an
  HMAC-SHA256 under the repository's id key when encrypted), ``XXXX`` its
  first four hex digits (as Proxmox Backup Server's ``.chunks/XXXX/``).
  All-zero chunks are never stored; an index names them ``null``.
- ``points/VM/NAME``: a point's index (``imagetool.backup.store.points``).
- ``leases/TOKEN``: a running backup's lease (``imagetool.backup.store.gc``).
- ``runs/VM/POINT``: a running ``backup create``'s engine state (its
  snapshot, VM backup, checkpoint), so the next run of the VM cleans up
  after a killed one (``imagetool.backup.destination``).

Every chunk and index is a blob: one flag byte (``1``: zstd, level 1 as
Proxmox Backup Server uses, kept only when smaller) then the payload; in
an encrypted repository the payload is AES-256-GCM sealed with the flag
byte and the object's name as associated data. Reading a chunk checks its
id against its content, so nothing read from storage is trusted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import zstandard

from imagetool.backup.store import keys as keymod
from imagetool.backup.store.storage import ObjectMissing, Storage, StoreError

FORMAT = "imagetool-chunks"
VERSION = 1
CONFIG = "config"
MIN_CHUNK_SIZE = 64 << 10
MAX_CHUNK_SIZE = 16 << 20
MAX_INDEX = 256 << 20
ZSTD_LEVEL = 1
# A reused chunk older than this is touched so gc's grace period spares it
# (see imagetool.backup.store.gc); younger ones are not, to save requests.
TOUCH_AGE = 3600.0
F_ZSTD = 1
_ZEROS: dict[int, bytes] = {}


class ChunkDamaged(StoreError):
    """A chunk's content does not match its id, or does not decode."""


def chunk_name(chunk_id: str) -> str:
    return f"chunks/{chunk_id[:4]}/{chunk_id}"


def is_chunk_id(value) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def is_zero(data) -> bool:
    """True if ``data`` (bytes-like) is all zeros; data fails on its first or last byte."""
    n = len(data)
    if n == 0:
        return True
    if data[0] or data[-1]:
        return False
    zeros = _ZEROS.get(n)
    if zeros is None:
        zeros = _ZEROS[n] = bytes(n) if len(_ZEROS) < 8 else None
    return bytes(data) == (zeros if zeros is not None else bytes(n))


class ChunkStore:
    """An open repository: its storage, chunk size and keys."""

    def __init__(self, storage: Storage, config: dict, keys: keymod.Keys | None) -> None:
        self.storage = storage
        self.config = config
        self.chunk_size: int = config["chunk_size"]
        self.keys = keys
        self._local = threading.local()
        self._present: set[str] = set()       # stored or touched by this process
        self._writing: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.storage.url

    # --- making and opening -----------------------------------------------

    @classmethod
    def init(cls, storage: Storage, *, chunk_size: int | None = None,
             secret: bytes | None = None, passphrase: bool = False) -> "ChunkStore":
        """Write a new repository's config; ``secret`` encrypts it (a key
        file's bytes, or a passphrase when ``passphrase``). ``chunk_size``
        None: the storage's ``default_chunk_size``."""
        if chunk_size is None:
            chunk_size = storage.default_chunk_size
        _check_chunk_size(chunk_size, storage.url)
        if storage.exists(CONFIG):
            raise StoreError(f"{storage.url}: already a repository (config exists)")
        config: dict = {"format": FORMAT, "version": VERSION, "chunk_size": chunk_size,
                        "compression": "zstd", "encryption": None}
        keys = None
        if secret is not None:
            kdf = keymod.new_kdf(passphrase)
            keys = keymod.Keys(secret, kdf)
            config["encryption"] = {"cipher": "aes-256-gcm", "kdf": kdf,
                                    "check": keys.check_value()}
        storage.put(CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        return cls(storage, config, keys)

    @classmethod
    def open(cls, storage: Storage, secret: bytes | None = None) -> "ChunkStore":
        """An existing repository; BadKey if its key is missing or wrong."""
        where = storage.url
        try:
            raw = storage.get(CONFIG)
        except ObjectMissing:
            raise StoreError(f"{where}: not a repository (no config; make one with "
                             "backup init)") from None
        try:
            config = json.loads(raw)
        except ValueError:
            raise StoreError(f"{where}: config is not JSON") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise StoreError(f"{where}: config is not an imagetool chunk repository's")
        if config.get("version") != VERSION:
            raise StoreError(f"{where}: repository format version {config.get('version')!r} "
                             f"is not supported (this imagetool reads {VERSION})")
        _check_chunk_size(config.get("chunk_size"), where)
        enc = config.get("encryption")
        if enc is None:
            if secret is not None:
                raise keymod.BadKey(f"{where}: the repository is not encrypted; "
                                    "give no key")
            return cls(storage, config, None)
        if not isinstance(enc, dict) or enc.get("cipher") != "aes-256-gcm" \
                or not isinstance(enc.get("check"), str):
            raise StoreError(f"{where}: config has invalid encryption parameters")
        kdf = keymod.check_kdf(enc.get("kdf"), where)
        if secret is None:
            raise keymod.BadKey(f"{where}: the repository is encrypted; give its --key-file")
        keys = keymod.Keys(secret, kdf)
        if not _same(keys.check_value(), enc["check"]):
            raise keymod.BadKey(f"{where}: wrong key for this repository")
        return cls(storage, config, keys)

    # --- blobs --------------------------------------------------------------

    def _zstd(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        pair = getattr(self._local, "zstd", None)
        if pair is None:
            pair = self._local.zstd = (zstandard.ZstdCompressor(level=ZSTD_LEVEL),
                                       zstandard.ZstdDecompressor())
        return pair

    def encode(self, name: str, data) -> bytes:
        """``data`` as the blob stored under ``name``.

        Data whose samples do not compress (already compressed or
        encrypted guest data) is stored as it is without compressing it
        whole, as borg's ``auto`` compression decides: zstd spends as much
        time failing on such a chunk as hashing it twice."""
        packed = None if _incompressible(self._zstd()[0], data) else \
            self._zstd()[0].compress(data)
        # Stored as it is: joined to its flag byte below, copied once.
        flags, payload = ((F_ZSTD, packed) if packed is not None and len(packed) < len(data)
                          else (0, data))
        head = bytes([flags])
        if self.keys is not None:
            payload = self.keys.seal(payload, head + name.encode())
        return head + payload

    def decode(self, name: str, blob: bytes, limit: int) -> bytes:
        """The plaintext of the blob stored under ``name``, at most ``limit`` bytes."""
        if not blob or blob[0] & ~F_ZSTD:
            raise ChunkDamaged(f"{self.url}: {name}: unknown blob header")
        # A view, not a slice: a chunk's payload is not copied on its way to
        # the decryption or decompression that reads it.
        head, payload = bytes(blob[:1]), memoryview(blob)[1:]
        if self.keys is not None:
            try:
                payload = self.keys.open(payload, head + name.encode())
            except keymod.BadKey as e:
                raise ChunkDamaged(f"{self.url}: {name}: {e}") from None
        if head[0] & F_ZSTD:
            try:
                payload = self._zstd()[1].decompress(payload, max_output_size=limit)
            except zstandard.ZstdError as e:
                raise ChunkDamaged(f"{self.url}: {name}: does not decompress: {e}") from None
        if len(payload) > limit:
            raise ChunkDamaged(f"{self.url}: {name}: larger than {limit} bytes")
        return bytes(payload) if isinstance(payload, memoryview) else payload

    # --- chunks -------------------------------------------------------------

    def chunk_id(self, data) -> str:
        if self.keys is not None:
            return self.keys.chunk_id(data)
        return hashlib.sha256(data).hexdigest()

    def put_chunk(self, data) -> tuple[str | None, int]:
        """Store a chunk unless present: ``(id, bytes written)``; ``(None,
        0)`` for an all-zero chunk, which is never stored."""
        if is_zero(data):
            return None, 0
        cid = self.chunk_id(data)
        while True:
            with self._lock:
                if cid in self._present:
                    return cid, 0
                busy = self._writing.get(cid)
                if busy is None:
                    busy = self._writing[cid] = threading.Event()
                    break
            busy.wait()         # another thread stores the same chunk
        try:
            name = chunk_name(cid)
            info = self.storage.stat(name)
            written = 0
            if info is None or (info.mtime < time.time() - TOUCH_AGE
                                and not self.storage.touch(name)):
                blob = self.encode(name, data)
                # Durable at the point's commit (storage.sync), once for
                # all its chunks, as Proxmox Backup Server's default
                # "filesystem" sync level does: an fsync per chunk costs
                # the full backup about as much as hashing its data.
                self.storage.put(name, blob, durable=False)
                written = len(blob)
            with self._lock:
                self._present.add(cid)
            return cid, written
        finally:
            with self._lock:
                del self._writing[cid]
            busy.set()

    def get_chunk(self, chunk_id: str, size: int | None = None) -> bytes:
        """A chunk's plaintext, checked against its id (ChunkDamaged if not),
        and against ``size`` when given."""
        if not is_chunk_id(chunk_id):
            raise ChunkDamaged(f"{self.url}: invalid chunk id {chunk_id!r}")
        name = chunk_name(chunk_id)
        data = self.decode(name, self.storage.get(name), self.chunk_size)
        if not _same(self.chunk_id(data), chunk_id):
            raise ChunkDamaged(f"{self.url}: {name}: content does not match its id")
        if size is not None and len(data) != size:
            raise ChunkDamaged(f"{self.url}: {name}: {len(data)} bytes, expected {size}")
        return data

    # --- JSON documents (indexes) -----------------------------------------

    def put_doc(self, name: str, doc) -> None:
        data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        self.storage.put(name, self.encode(name, data))

    def get_doc(self, name: str):
        data = self.decode(name, self.storage.get(name), MAX_INDEX)
        try:
            return json.loads(data)
        except ValueError:
            raise StoreError(f"{self.url}: {name}: not JSON") from None


SAMPLE = 16 << 10


def _incompressible(zstd: zstandard.ZstdCompressor, data) -> bool:
    """Whether samples of ``data`` (its start, middle and end) gain less than
    2% from compression; small data is always compressed."""
    n = len(data)
    if n < 16 * SAMPLE:
        return False
    view = memoryview(data)
    for start in (0, n // 2 - SAMPLE // 2, n - SAMPLE):
        if len(zstd.compress(view[start:start + SAMPLE])) < SAMPLE * 0.98:
            return False
    return True


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _check_chunk_size(size, where: str) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size & (size - 1) \
            or not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise StoreError(f"{where}: invalid chunk size {size!r} (a power of two from "
                         f"{MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE})")
