"""Repository objects in S3-compatible object storage (``s3://bucket/prefix``).

Through boto3, which finds credentials the way every AWS tool does
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``~/.aws/credentials`` and ``~/.aws/config``), takes an
endpoint URL for Ceph RGW, MinIO and other S3-compatible servers, and
whose client is safe to share between threads (boto3 documentation,
"Multithreading or multiprocessing with clients").

A single PUT replaces an object atomically (Amazon S3 User Guide, "Amazon
S3 data consistency model"), which is all a repository needs: chunks are a
few MiB and indexes are written whole. ``touch`` copies an object onto
itself with new metadata, which sets its LastModified time.
"""

from __future__ import annotations

import time
from typing import Iterator

from imagetool.backup.store.storage import (ObjectInfo, ObjectMissing, Storage, StoreError,
                                            check_name, check_prefix)

_MISSING = ("404", "NoSuchKey", "NotFound")


def parse_url(url: str) -> tuple[str, str]:
    """``(bucket, key prefix)`` of ``s3://bucket[/prefix]``; prefix '' or ending '/'."""
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not (3 <= len(bucket) <= 63) or not all(c.isalnum() or c in "-." for c in bucket) \
            or not bucket[0].isalnum():
        raise StoreError(f"{url}: invalid bucket name {bucket!r}")
    if prefix:
        check_name(prefix)
        prefix += "/"
    return bucket, prefix


class S3Storage(Storage):
    """A repository under one bucket and key prefix."""

    # 4 MiB, as Proxmox Backup Server's: with 1 MiB chunks a full point into
    # Ceph RGW ran at 0.48x of plain parallel PUTs of 4 MiB pieces, with
    # 4 MiB ones at 1.09x (benchmarks/bench_chunk_store.py, same machine).
    default_chunk_size = 4 << 20

    def __init__(self, url: str, *, endpoint: str | None = None, profile: str | None = None,
                 pool: int = 12) -> None:
        import boto3
        import botocore.config
        import botocore.exceptions
        self._errors = botocore.exceptions
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        try:
            session = boto3.session.Session(profile_name=profile)
            self._s3 = session.client(
                "s3", endpoint_url=endpoint,
                config=botocore.config.Config(max_pool_connections=pool,
                                              retries={"mode": "standard", "max_attempts": 5}))
        except (self._errors.BotoCoreError, ValueError) as e:
            raise StoreError(f"{url}: {e}") from None

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def _fail(self, what: str, e: Exception) -> StoreError:
        if isinstance(e, self._errors.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code in _MISSING:
                return ObjectMissing(f"{self.url}: {what}: missing")
            if code == "NoSuchBucket":
                return StoreError(f"{self.url}: bucket {self.bucket} does not exist "
                                  "(create it first)")
            return StoreError(f"{self.url}: {what}: {code} {err.get('Message', '')}".rstrip())
        if isinstance(e, self._errors.NoCredentialsError):
            return StoreError(f"{self.url}: no S3 credentials (set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials)")
        return StoreError(f"{self.url}: {what}: {e}")

    def _call(self, what: str, fn, **kw):
        try:
            return fn(Bucket=self.bucket, **kw)
        except (self._errors.BotoCoreError, self._errors.ClientError) as e:
            raise self._fail(what, e) from None

    def put(self, name: str, data: bytes, durable: bool = True) -> None:
        self._call(name, self._s3.put_object, Key=self._key(name), Body=bytes(data))

    def get(self, name: str) -> bytes:
        resp = self._call(name, self._s3.get_object, Key=self._key(name))
        try:
            return resp["Body"].read()
        except (self._errors.BotoCoreError, OSError) as e:
            raise self._fail(name, e) from None

    def stat(self, name: str) -> ObjectInfo | None:
        try:
            resp = self._call(name, self._s3.head_object, Key=self._key(name))
        except ObjectMissing:
            return None
        return ObjectInfo(name, int(resp["ContentLength"]), resp["LastModified"].timestamp())

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", ()):
                    name = obj["Key"][len(self.prefix):]
                    try:
                        check_name(name)
                    except StoreError:
                        continue        # not an object a repository writes
                    yield ObjectInfo(name, int(obj["Size"]), obj["LastModified"].timestamp())
        except (self._errors.BotoCoreError, self._errors.ClientError) as e:
            raise self._fail(f"list {prefix or '/'}", e) from None

    def touch(self, name: str) -> bool:
        key = self._key(name)
        try:
            self._call(name, self._s3.copy_object, Key=key,
                       CopySource={"Bucket": self.bucket, "Key": key},
                       Metadata={"touched": str(int(time.time()))},
                       MetadataDirective="REPLACE")
        except ObjectMissing:
            return False
        return True

    def delete(self, name: str) -> None:
        self._call(name, self._s3.delete_object, Key=self._key(name))

    def close(self) -> None:
        self._s3.close()
