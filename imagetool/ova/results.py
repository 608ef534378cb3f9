"""What ``export_ova`` and ``import_ova`` report: typed values whose
``to_json`` is the document ``imagetool ova export|import --json`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagetool.checksum import GuestChecksum


@dataclass
class ExportedDisk:
    """One disk written into the OVA: its member (named after its image
    id, as the engine's own OVAs are) and the guest data's checksum, taken
    as the bytes were written."""

    disk_id: str
    member: str
    virtual_size: int | None
    checksum: GuestChecksum
    sha256: str | None          # of the member's bytes (for a manifest)

    def to_json(self) -> dict:
        return {"disk_id": self.disk_id, "member": self.member,
                "virtual_size": self.virtual_size, "checksum": self.checksum.to_json(),
                "sha256": self.sha256}


@dataclass
class ImportedDisk:
    """One new disk made from an OVA member, its checksum the engine's."""

    disk_id: str
    member: str
    checksum: GuestChecksum

    def to_json(self) -> dict:
        return {"disk_id": self.disk_id, "member": self.member,
                "checksum": self.checksum.to_json()}


@dataclass
class _Moved:
    """The disks a workflow moved, the guest bytes and the time it took."""

    disks: list = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def _moved_json(self) -> dict:
        return {"disks": [d.to_json() for d in self.disks], "bytes": self.bytes,
                "seconds": round(self.seconds, 3)}


@dataclass
class OvaExported(_Moved):
    """``export_ova``'s result: the OVA written, the VM, every member
    (``name``, ``size``, ``sha256``) in file order."""

    path: str = ""
    vm_id: str = ""
    members: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"path": self.path, "vm_id": self.vm_id, "members": self.members,
                **self._moved_json()}


@dataclass
class OvaImported(_Moved):
    """``import_ova``'s result: the new VM or template (``kind``) and its disks."""

    kind: str = "vm"            # vm | template
    id: str = ""
    name: str = ""

    def to_json(self) -> dict:
        return {f"{self.kind}_id": self.id, "name": self.name, **self._moved_json()}
