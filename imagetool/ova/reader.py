"""Open an OVA: its members, its OVF, its manifest, each disk's image.

Everything here is checked before anything is created on an engine, so a
bad OVA is refused with nothing left behind: the tar's headers
(imagetool.formats.tar), the OVF (imagetool.ova.ovf), every disk's member
(present, of the size the OVF declares, a qcow2, VMDK or raw image that
fits the declared capacity) and the manifest's digests when there is one.

Manifest lines are ``SHA1(name)= hex`` or ``SHA256(name)= hex`` (the format
virt-v2v and VMware's ovftool accept, DSP0243 section "Package").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from imagetool.errors import FormatError
from imagetool.formats import FORMATS, inspect
from imagetool.formats.tar import Member, members as tar_members
from imagetool.ova.layout import digest_range
from imagetool.ova.ovf import Ovf, OvfDisk, OvfError, parse_ovf

_MF_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\((.+)\)\s?=\s*([0-9a-fA-F]+)\r?$")
MAX_MANIFEST = 1 << 20


class OvaError(FormatError):
    """The OVA is not usable; the message says which part and why."""


@dataclass
class OvaDisk:
    """One disk: what the OVF says, the member holding it, its image."""

    ovf: OvfDisk
    member: Member
    format: str
    virtual_size: int


@dataclass
class Ova:
    path: str
    members: list[Member]
    ovf_member: Member
    ovf: Ovf
    disks: list[OvaDisk]
    manifest: dict[str, tuple[str, str]] = field(default_factory=dict)
    manifest_member: Member | None = None


def _read(path: str, m: Member) -> bytes:
    with open(path, "rb") as f:
        f.seek(m.offset)
        data = f.read(m.size)
    if len(data) != m.size:
        raise OvaError(f"member {m.name!r} is truncated", path)
    return data


def _parse_manifest(path: str, m: Member) -> dict[str, tuple[str, str]]:
    if m.size > MAX_MANIFEST:
        raise OvaError(f"manifest {m.name!r} is larger than 1 MiB", path)
    try:
        text = _read(path, m).decode("utf-8")
    except UnicodeDecodeError:
        raise OvaError(f"manifest {m.name!r} is not text", path) from None
    out: dict[str, tuple[str, str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _MF_LINE.match(line.strip())
        if not match:
            raise OvaError(f"manifest {m.name!r} line {n} is not "
                           f"'SHA256(name)= digest': {line[:80]!r}", path)
        algo, name, digest = match.groups()
        out[name] = (algo.lower(), digest.lower())
    return out


def open_ova(path: str | os.PathLike) -> Ova:
    """Read and check an OVA's structure (not the manifest's digests: see ``verify_manifest``)."""
    path = os.fspath(path)
    members = tar_members(path)
    by_name = {m.name: m for m in members}
    ovfs = [m for m in members if m.name.lower().endswith(".ovf")]
    if not ovfs:
        raise OvaError("no .ovf member: not an OVA", path)
    if len(ovfs) > 1:
        raise OvaError(f"{len(ovfs)} .ovf members ({', '.join(m.name for m in ovfs)}); "
                       "an OVA has one", path)
    ovf_member = ovfs[0]
    try:
        ovf = parse_ovf(_read(path, ovf_member))
    except OvfError as e:
        raise OvaError(f"{ovf_member.name}: {e}", path) from None
    if ovf_member.name.lower() == "template.ovf":
        ovf.template = True
    mfs = [m for m in members if m.name.lower().endswith(".mf")]
    if len(mfs) > 1:
        raise OvaError("more than one manifest member", path)
    manifest = _parse_manifest(path, mfs[0]) if mfs else {}
    for name in manifest:
        if name not in by_name:
            raise OvaError(f"the manifest lists {name!r}, which is not in the OVA", path)
    if not ovf.disks:
        raise OvaError(f"{ovf_member.name} describes no disks", path)
    disks = []
    for d in ovf.disks:
        m = by_name.get(d.href)
        if m is None:
            raise OvaError(f"{ovf_member.name} names member {d.href!r} for disk "
                           f"{d.disk_id}, which is not in the OVA", path)
        if d.file_size is not None and d.file_size != m.size:
            raise OvaError(f"member {d.href!r} is {m.size} bytes but the OVF declares "
                           f"{d.file_size}", path)
        try:
            info = inspect(path, offset=m.offset, length=m.size)
        except FormatError as e:
            msg = str(e)
            if msg.startswith(path + ": "):
                msg = msg[len(path) + 2:]
            raise OvaError(f"member {d.href!r}: {msg}", path) from None
        if info.format not in FORMATS:
            raise OvaError(f"member {d.href!r} is {info.format}; refused", path)
        if getattr(info, "backing_file", None) or getattr(info, "encrypted", None) \
                or getattr(info, "data_file", None):
            raise OvaError(f"member {d.href!r} is a qcow2 image with a backing file, "
                           "encryption or an external data file; refused", path)
        if info.virtual_size > d.capacity:
            raise OvaError(f"member {d.href!r} holds {info.virtual_size} bytes of guest "
                           f"data, more than the capacity the OVF declares "
                           f"({d.capacity})", path)
        disks.append(OvaDisk(d, m, info.format, info.virtual_size))
    return Ova(path, members, ovf_member, ovf, disks, manifest,
               mfs[0] if mfs else None)


def verify_manifest(ova: Ova) -> list[dict]:
    """Hash every member the manifest lists; OvaError on a difference."""
    out = []
    by_name = {m.name: m for m in ova.members}
    for name, (algo, want) in ova.manifest.items():
        m = by_name[name]
        got = digest_range(ova.path, m.offset, m.size, algo,
                           OvaError(f"member {name!r} is truncated", ova.path))
        if got != want:
            raise OvaError(f"member {name!r}: its {algo.upper()} digest {got} differs "
                           f"from the manifest's {want}", ova.path)
        out.append({"name": name, "algorithm": algo, "digest": got})
    return out


def open_disk(ova: Ova, disk: OvaDisk):
    """The disk's guest data, read in place from the tar."""
    from imagetool.formats import open_image
    return open_image(ova.path, offset=disk.member.offset, length=disk.member.size,
                      format=disk.format)
