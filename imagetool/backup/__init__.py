"""VM backups: a repository of restore points, full then incremental.

::

    from imagetool import backup
    backup.backup_vm(conn, "web1", "/backups")          # one new point
    backup.list_points("/backups")
    backup.verify("/backups")                           # SHA-256 + guest checksums
    backup.restore_vm(conn, "/backups", "web1", storage_domain="data")
    backup.prune("/backups", keep=7)

The repository format is described in ``imagetool.backup.repo``; the two
methods (engine VM backups with checkpoints, or snapshots) in
``imagetool.backup.create``.
"""

from imagetool.backup.create import backup_vm
from imagetool.backup.maintain import VerifyError, list_points, prune, verify
from imagetool.backup.repo import Repository, RepositoryError
from imagetool.backup.restore import restore_vm

__all__ = ["backup_vm", "restore_vm", "verify", "prune", "list_points", "Repository",
           "RepositoryError", "VerifyError"]
