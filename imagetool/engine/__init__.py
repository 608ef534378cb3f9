"""REST client of an oVirt engine (httpx): connection, codec, services, waits.

    from imagetool.engine import Connection, wait_for_disk
    with Connection(url, username="admin@internal", password=pw,
                    cafile="ca.pem") as conn:
        disk = conn.disks.find("mydisk")
        sd = conn.storage_domains.find("data")
"""

from imagetool.engine.connection import Connection, normalize_url
from imagetool.engine.entities import (ApiInfo, Disk, DiskAttachment,
                                       DiskSnapshot, Entity, Host,
                                       ImageTransfer, Job, Snapshot,
                                       StorageDomain, Vm)
from imagetool.engine.services import is_uuid
from imagetool.engine.wait import (wait_for_disk, wait_for_disk_unlocked,
                                   wait_for_snapshot, wait_for_transfer_phase)

__all__ = [
    "Connection", "normalize_url", "is_uuid",
    "ApiInfo", "Disk", "DiskAttachment", "DiskSnapshot", "Entity", "Host",
    "ImageTransfer", "Job", "Snapshot", "StorageDomain", "Vm",
    "wait_for_disk", "wait_for_disk_unlocked", "wait_for_snapshot",
    "wait_for_transfer_phase",
]
