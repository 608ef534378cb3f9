"""Backup repository v2: deduplicated, compressed, optionally encrypted chunks
on a local directory or S3-compatible object storage.

::

    from imagetool.backup import store
    st = store.open_storage("s3://backups/site1", endpoint="http://rgw:7480")
    repo = store.ChunkStore.init(st)                       # or .open(st, secret)
    ix = store.write_point(repo, vm_id, [store.DiskSource(disk_id, backend)])
    store.export_point(repo, ix, "/tmp/out", "qcow2")
    store.prune(repo, keep_daily=7) ; store.collect(repo) ; store.verify(repo)

Modules: ``storage`` (the interface), ``local`` and ``s3`` (its two
implementations), ``keys`` (encryption), ``chunkstore`` (config, chunks),
``points`` (indexes), ``write`` (making points), ``reader`` (a point's disk
as a Backend, export), ``retention`` (prune), ``gc``, ``verify``.
"""

from imagetool.backup.store.chunkstore import ChunkDamaged, ChunkStore
from imagetool.backup.store.gc import collect
from imagetool.backup.store.keys import BadKey, new_key_file, read_key_file
from imagetool.backup.store.points import Index, latest, list_points, load_index
from imagetool.backup.store.reader import PointBackend, export_point, open_disk
from imagetool.backup.store.retention import prune
from imagetool.backup.store.opener import open_storage
from imagetool.backup.store.storage import ObjectMissing, Storage, StoreError
from imagetool.backup.store.verify import verify
from imagetool.backup.store.write import DiskSource, write_point

__all__ = ["BadKey", "ChunkDamaged", "ChunkStore", "DiskSource", "Index", "ObjectMissing",
           "PointBackend", "Storage", "StoreError", "collect", "export_point", "latest",
           "list_points", "load_index", "new_key_file", "open_disk", "open_storage", "prune",
           "read_key_file", "verify", "write_point"]
