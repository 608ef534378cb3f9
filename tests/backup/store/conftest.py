"""Fixtures of the chunk repository tests: the same tests run against a
local directory and against S3 on a real Ceph RGW (``rgw.py``), the S3
ones marked slow."""

from __future__ import annotations

import os
import uuid

import pytest
import rgw as rgw_cluster

from imagetool.backup.store import ChunkStore, open_storage


@pytest.fixture(scope="session")
def rgw_server(tmp_path_factory):
    """A one-node Ceph cluster with RGW, for the whole session (about 15 s)."""
    missing = rgw_cluster.missing_binaries()
    if missing:
        pytest.skip("Ceph RGW is not installed (apt-get install radosgw ceph-mon ceph-osd)")
    server = rgw_cluster.start(str(tmp_path_factory.mktemp("rgw")))
    yield server
    server.stop()


class Target:
    """Where a test repository lives: ``open()`` gives a new Storage on it."""

    def __init__(self, url: str, endpoint: str | None = None) -> None:
        self.url = url
        self.endpoint = endpoint

    def open(self, **kw):
        return open_storage(self.url, endpoint=self.endpoint, create=True, **kw)


# Every S3 test goes to one xdist worker (``--dist loadgroup`` in
# pyproject.toml): one Ceph cluster for the run, not one per worker on a
# two-core machine.
@pytest.fixture(params=["dir", pytest.param("s3", marks=[pytest.mark.slow,
                                                       pytest.mark.xdist_group("rgw")])])
def target(request, tmp_path, monkeypatch):
    if request.param == "dir":
        return Target(str(tmp_path / "repo"))
    server = request.getfixturevalue("rgw_server")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rgw_cluster.ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rgw_cluster.SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    import boto3
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=bucket)
    return Target(f"s3://{bucket}/repo", server.endpoint)


@pytest.fixture
def store(target):
    """A new unencrypted repository with 64 KiB chunks (small, so small
    images have many)."""
    return ChunkStore.init(target.open(), chunk_size=64 * 1024)
