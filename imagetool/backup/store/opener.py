"""Open a repository's storage from what a user types: a directory or
``s3://bucket/prefix``."""

from __future__ import annotations

from imagetool.backup.store.local import LocalStorage
from imagetool.backup.store.s3 import S3Storage
from imagetool.backup.store.storage import Storage, StoreError


def open_storage(url: str, *, endpoint: str | None = None, profile: str | None = None,
                 create: bool = False, workers: int = 8) -> Storage:
    """The storage ``url`` names: ``s3://bucket/prefix`` or a directory path.

    ``endpoint`` and ``profile`` apply to S3 only (an endpoint URL for
    Ceph RGW, MinIO or another S3-compatible server; a profile of
    ``~/.aws/credentials``). ``create`` makes a missing directory (owner-only).
    ``workers`` sizes the S3 connection pool.
    """
    if url.startswith("s3://"):
        return S3Storage(url, endpoint=endpoint, profile=profile, pool=workers + 4)
    if "://" in url:
        raise StoreError(f"{url}: unsupported repository URL (use a directory or s3://bucket/prefix)")
    if endpoint or profile:
        raise StoreError(f"{url}: --endpoint and --profile apply to s3:// repositories only")
    return LocalStorage(url, create=create)
