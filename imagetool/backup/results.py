"""What ``backup.verify`` and ``backup.restore_vm`` report: typed values
whose ``to_json`` is the document ``imagetool backup verify|restore
--json`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from imagetool.checksum import GuestChecksum


@dataclass(frozen=True)
class Problem:
    """One bad file of a repository and what is wrong with it."""

    path: str
    error: str

    def to_json(self) -> dict:
        return {"path": self.path, "error": self.error}


@dataclass
class VerifyResult:
    """Points and files checked, and every problem found (none: ``ok``)."""

    points: int = 0
    files: int = 0
    errors: list[Problem] = field(default_factory=list)

    def add(self, path: str, error: str) -> None:
        """Report ``path`` bad, once for each distinct error."""
        problem = Problem(path, error)
        if problem not in self.errors:
            self.errors.append(problem)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {"points": self.points, "files": self.files, "ok": self.ok,
                "errors": [e.to_json() for e in self.errors]}


@dataclass
class RestoredDisk:
    """A new disk made from a point's disk, its checksum the manifest's and
    the engine's (they matched)."""

    disk_id: str
    source_disk_id: str
    name: str
    source_name: str | None
    checksum: GuestChecksum

    def to_json(self) -> dict:
        return {"disk_id": self.disk_id, "source_disk_id": self.source_disk_id,
                "name": self.name, "source_name": self.source_name,
                "checksum": self.checksum.to_json()}


@dataclass
class Restored:
    """``restore_vm``'s result: the new VM, the point it came from, its disks."""

    vm_id: str
    vm_name: str
    point: str
    bytes: int
    seconds: float
    disks: list[RestoredDisk]

    def to_json(self) -> dict:
        return {"vm_id": self.vm_id, "vm_name": self.vm_name, "point": self.point,
                "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "disks": [d.to_json() for d in self.disks]}
