"""The files of a storage domain beside its volumes, laid out as vdsm does on
a file domain (oVirt's vdsm storage sources: ``sd.py``, ``fileSD.py``,
``volumemetadata.py``, ``sp.py``):

    <base>/<sd-id>/dom_md/metadata          KEY=VALUE lines + _SHA_CKSUM
    <base>/<sd-id>/images/<disk-id>/<vol-id>[.meta]
    <base>/<sd-id>/master/vms/<vm-id>/<vm-id>.ovf   (export domains)

so that a VM exported to an export domain can be read by other tools that
know that layout. Every file is created owner-only; a file that is already
there is never overwritten except the domain's own metadata and a VM's OVF
that an ``exclusive`` export replaces.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time

from imagetool.fsutil import write_atomic
from imagetool.ids import is_uuid
from imagetool.server.storage import make_private_dirs

BLANK = "00000000-0000-0000-0000-000000000000"
_CLASS = {"data": "Data", "export": "Backup", "iso": "Iso"}
# The whole of a volume's .meta must fit one 512-byte block (vdsm METADATA_SIZE).
META_SIZE = 512


def domain_metadata(sd: dict, pool_id: str | None) -> str:
    """``dom_md/metadata``: sorted KEY=VALUE lines, then the SHA-1 checksum line.

    The checksum is over the sorted ``KEY=VALUE`` strings joined without
    newlines, as vdsm's ``persistent.py`` computes it.
    """
    remote = sd.get("path") or ""
    if sd.get("address"):
        remote = f"{sd['address']}:{remote}"
    fields = {
        "ALIGNMENT": "1048576", "BLOCK_SIZE": "512", "CLASS": _CLASS.get(sd["type"], "Data"),
        "DESCRIPTION": sd["name"][:50], "IOOPTIMEOUTSEC": "10", "LEASERETRIES": "3",
        "LEASETIMESEC": "60", "LOCKPOLICY": "", "LOCKRENEWALINTERVALSEC": "5",
        "POOL_UUID": pool_id or "", "REMOTE_PATH": remote, "ROLE": "Regular",
        "SDUUID": sd["id"], "TYPE": (sd.get("storage_type") or "localfs").upper(),
        "VERSION": "5",
    }
    lines = [f"{k}={v}" for k, v in sorted(fields.items())]
    digest = hashlib.sha1("".join(lines).encode("ascii", "xmlcharrefreplace")).hexdigest()
    return "\n".join(lines + [f"_SHA_CKSUM={digest}"]) + "\n"


def create_domain(storage, sd: dict) -> None:
    """Create ``<base>/<sd-id>`` and its layout; FileExistsError if it exists."""
    root = storage.domain_dir(sd["id"])
    os.mkdir(root, 0o700)
    os.chmod(root, 0o700)
    try:
        for sub in ("dom_md", "images", "master/vms" if sd["type"] == "export" else None):
            if sub:
                make_private_dirs(os.path.join(root, sub))
        path = os.path.join(root, "dom_md", "metadata")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(domain_metadata(sd, None))
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def update_pool(storage, sd: dict, pool_id: str | None) -> None:
    """Rewrite the domain's metadata with the data center it is attached to."""
    md = os.path.join(storage.domain_dir(sd["id"]), "dom_md")
    make_private_dirs(md)
    write_atomic(os.path.join(md, "metadata"), domain_metadata(sd, pool_id))


def volume_meta(*, sd_id: str, disk_id: str, fmt: str, size: int, parent: str | None,
                sparse: bool, leaf: bool, description: str = "") -> str:
    """A volume's ``.meta`` in vdsm's storage-format-5 form, ending in ``EOF``."""
    desc = "".join(c for c in description if c.isprintable() and c != "=")[:100]
    fields = {
        "CAP": str(size), "CTIME": str(int(time.time())), "DESCRIPTION": desc,
        "DISKTYPE": "DATA", "DOMAIN": sd_id, "FORMAT": "COW" if fmt == "cow" else "RAW",
        "GEN": "0", "IMAGE": disk_id, "LEGALITY": "LEGAL", "PUUID": parent or BLANK,
        "TYPE": "SPARSE" if sparse else "PREALLOCATED",
        "VOLTYPE": "LEAF" if leaf else "INTERNAL",
    }
    text = "".join(f"{k}={v}\n" for k, v in sorted(fields.items())) + "EOF\n"
    return text[:META_SIZE - 4] + "EOF\n" if len(text) > META_SIZE else text


def read_volume_meta(path: str) -> dict[str, str]:
    """The KEY=VALUE pairs of a vdsm ``.meta`` file, up to ``EOF`` ({} if unreadable)."""
    try:
        with open(path, "rb") as f:
            data = f.read(META_SIZE)
    except OSError:
        return {}
    out = {}
    for line in data.decode("utf-8", "replace").splitlines():
        if line == "EOF":
            break
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def vms_dir(storage, sd_id: str) -> str:
    return os.path.join(storage.domain_dir(sd_id), "master", "vms")


def ovf_path(storage, sd_id: str, vm_id: str) -> str:
    """``master/vms/<vm-id>/<vm-id>.ovf`` of an export domain."""
    if not is_uuid(vm_id):
        raise ValueError(f"invalid VM id {vm_id!a}")
    return os.path.join(vms_dir(storage, sd_id), vm_id, f"{vm_id}.ovf")


def exported_vm_ids(storage, sd_id: str) -> list[str]:
    """The UUID-named VM directories holding an OVF on an export domain."""
    try:
        names = sorted(os.listdir(vms_dir(storage, sd_id)))
    except FileNotFoundError:
        return []
    return [n.lower() for n in names
            if is_uuid(n) and os.path.isfile(ovf_path(storage, sd_id, n))]


def read_ovf(storage, sd_id: str, vm_id: str, limit: int = 16 << 20) -> str | None:
    """The OVF text of an exported VM, or None when there is none."""
    try:
        with open(ovf_path(storage, sd_id, vm_id), "rb") as f:
            data = f.read(limit + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if len(data) > limit:
        raise ValueError("OVF too large")
    return data.decode("utf-8", "replace")
