"""OVA files: export a VM to one, import one as a VM or template, describe one.

``export_ova`` (imagetool.ova.export) writes the layout the oVirt engine
writes for its own OVA exports; ``import_ova`` (imagetool.ova.importer)
reads that and the DMTF OVAs of VMware and VirtualBox; ``ova_info``
describes an OVA without an engine.

``export_ova`` and ``import_ova`` are loaded on first use: the local
engine imports ``imagetool.ova.layout`` to write its own OVAs, and must
not load the client's transfer code with it.
"""

from __future__ import annotations

import os
from typing import Any

from imagetool.ova.reader import OvaError, open_ova

__all__ = ["OvaError", "export_ova", "import_ova", "ova_info"]


def __getattr__(name: str) -> Any:
    if name == "export_ova":
        from imagetool.ova.export import export_ova
        return export_ova
    if name == "import_ova":
        from imagetool.ova.importer import import_ova
        return import_ova
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def ova_info(path: str | os.PathLike, *, verify: bool = False,
             algorithm: str | None = None) -> dict[str, Any]:
    """What an OVA holds: the VM's name, CPUs, memory, and each disk.

    Each disk: ``member``, ``format``, ``virtual_size``, ``allocated_size``
    (guest bytes that hold data). ``verify`` also checks the manifest
    (``manifest``: each member's digest) and gives every disk's block
    checksum (``checksum``, ``algorithm``: imageio's default unless given).
    """
    from imagetool.checksum import DEFAULT_ALGORITHM, checksum
    from imagetool.ova.reader import open_disk, verify_manifest

    ova = open_ova(path)
    o = ova.ovf
    out: dict[str, Any] = {
        "path": ova.path, "ovf": ova.ovf_member.name, "dialect": o.dialect,
        "kind": "template" if o.template else "vm", "name": o.name, "vm_id": o.vm_id,
        "cpus": o.cpus, "memory": o.memory, "nics": o.nics,
        "manifest": ova.manifest_member.name if ova.manifest_member else None,
        "disks": []}
    for d in ova.disks:
        with open_disk(ova, d) as b:
            allocated = sum(e.length for e in b.extents() if not e.zero)
            entry = {"disk_id": d.ovf.disk_id, "member": d.member.name,
                     "format": d.format, "virtual_size": d.virtual_size,
                     "allocated_size": allocated, "member_size": d.member.size}
            if verify:
                algo = algorithm or DEFAULT_ALGORITHM
                entry["checksum"] = checksum(b, algorithm=algo)["checksum"]
                entry["algorithm"] = algo
        out["disks"].append(entry)
    if verify:
        out["manifest_digests"] = verify_manifest(ova)
    return out
