"""Options and opening shared by every command on a chunk repository
(backup repository v2, ``imagetool.backup.store``): a directory or
``s3://bucket/prefix``, ``--endpoint``/``--profile`` for S3 and
``--key-file`` (or ``IMAGETOOL_PASSPHRASE``) for an encrypted one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import click

from imagetool.cli.common import option_group

PASSPHRASE_ENV = "IMAGETOOL_PASSPHRASE"


@dataclass(frozen=True)
class RepoOptions:
    """``--endpoint``, ``--profile`` and ``--key-file`` (None: not given)."""

    endpoint: str | None = None
    profile: str | None = None
    key_file: str | None = None

    def open(self, location: str, workers: int = 8) -> Any:
        """The chunk repository at ``location``, open."""
        from imagetool.backup.store import ChunkStore, open_storage
        storage = open_storage(location, endpoint=self.endpoint, profile=self.profile,
                               workers=workers)
        return ChunkStore.open(storage, repo_secret(self.key_file)[0])


#: Click decorator: the options every repository command takes, passed as
#: ``repo: RepoOptions``.
repo_options = option_group(RepoOptions, "repo", [
    click.option("--endpoint", metavar="URL",
                 help="S3 endpoint URL (Ceph RGW, MinIO...); AWS when not given."),
    click.option("--profile", metavar="NAME",
                 help="S3 credentials profile of ~/.aws/credentials."),
    click.option("--key-file", type=click.Path(dir_okay=False),
                 help="Key of an encrypted repository (or set "
                      f"{PASSPHRASE_ENV} for a passphrase)."),
])


def repo_secret(key_file: str | None) -> tuple[bytes | None, bool]:
    from imagetool.backup.store import read_key_file
    if key_file:
        return read_key_file(key_file), False
    phrase = os.environ.get(PASSPHRASE_ENV)
    return (phrase.encode(), True) if phrase else (None, False)


def is_chunk_repository(location: str) -> bool:
    """Whether ``location`` names a chunk repository rather than a qcow2-chain
    one: any ``s3://`` URL, or a directory holding the chunk store's config."""
    from imagetool.backup.store.chunkstore import CONFIG
    return location.startswith("s3://") or os.path.isfile(os.path.join(location, CONFIG))
