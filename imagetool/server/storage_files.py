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

An export domain's directory is written by other tools and other hosts, so
nothing below it is trusted: it is walked one component at a time without
following symbolic links (``open_checked``), and a volume must be a regular
file with one link. Otherwise a volume linked to a host file (the engine's
own TLS key, say) would be imported as a guest's disk, and an ``images``
directory linked elsewhere would make an export write outside the domain.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import time

from imagetool.fsutil import write_atomic
from imagetool.ids import is_uuid
from imagetool.server.files import make_private_dirs

BLANK = "00000000-0000-0000-0000-000000000000"
_CLASS = {"data": "Data", "export": "Backup", "iso": "Iso"}
# The whole of a volume's .meta must fit one 512-byte block (vdsm METADATA_SIZE).
META_SIZE = 512
# The directories every operation on an export domain reads or writes below.
LAYOUT = (("images",), ("master",), ("master", "vms"))


class Untrusted(ValueError):
    """A path below a domain that is a symbolic link, a hard link to another
    file, or not the kind of file it should be: never read or written."""

    def __init__(self, rel: str, why: str) -> None:
        self.rel = rel
        super().__init__(f"{rel} {why}")


def open_checked(storage, sd_id: str, parts: list[str] | tuple[str, ...],
                 directory: bool = False) -> int:
    """A read-only descriptor of ``<domain>/<parts...>``, walked without
    following any symbolic link below the domain's base directory.

    Each directory on the way must be a real directory; the last part a
    real directory when ``directory``, else a regular file with one link.
    Untrusted otherwise; FileNotFoundError/NotADirectoryError when missing.
    Every component is opened relative to its parent's descriptor and with
    ``O_NOFOLLOW``, then compared with what ``lstat`` saw, so a link put in
    place between the check and the open is refused as well.
    """
    base, top = os.path.split(storage.domain_dir(sd_id))
    names = [top, *parts]
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, name in enumerate(names):
            rel = "/".join(names[1:i + 1]) or "the domain directory"
            want_dir = directory or i < len(names) - 1
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            _check_kind(st, rel, want_dir)
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            try:
                nfd = os.open(name, flags | (os.O_DIRECTORY if want_dir else 0), dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Untrusted(rel, "changed into a symbolic link while being opened")
                raise
            os.close(fd)
            fd = nfd
            now = os.fstat(fd)
            _check_kind(now, rel, want_dir)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise Untrusted(rel, "changed while being opened")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_kind(st: os.stat_result, rel: str, want_dir: bool) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise Untrusted(rel, "is a symbolic link")
    if want_dir:
        if not stat.S_ISDIR(st.st_mode):
            raise Untrusted(rel, "is not a directory")
    elif not stat.S_ISREG(st.st_mode):
        raise Untrusted(rel, "is not a regular file")
    elif st.st_nlink != 1:
        raise Untrusted(rel, f"is a hard link ({st.st_nlink} names for one file)")


def check_layout(storage, sd_id: str) -> None:
    """Untrusted unless the domain directory and its ``images``, ``master``
    and ``master/vms`` (those that exist) are real directories, not links."""
    for parts in (("",), *LAYOUT):
        try:
            os.close(open_checked(storage, sd_id, [p for p in parts if p], directory=True))
        except FileNotFoundError:
            if parts == ("",):
                raise


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


def read_volume_meta(storage, sd_id: str, disk_id: str, vol_id: str) -> dict[str, str]:
    """The KEY=VALUE pairs of a volume's vdsm ``.meta``, up to ``EOF`` ({}
    when there is none); Untrusted when it is a link (see ``open_checked``)."""
    try:
        fd = open_checked(storage, sd_id, ["images", disk_id, f"{vol_id}.meta"])
    except (FileNotFoundError, NotADirectoryError):
        return {}
    with os.fdopen(fd, "rb") as f:
        data = f.read(META_SIZE)
    out = {}
    for line in data.decode("utf-8", "replace").splitlines():
        if line == "EOF":
            break
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def ovf_path(storage, sd_id: str, vm_id: str) -> str:
    """``master/vms/<vm-id>/<vm-id>.ovf`` of an export domain."""
    if not is_uuid(vm_id):
        raise ValueError(f"invalid VM id {vm_id!a}")
    return os.path.join(storage.domain_dir(sd_id), "master", "vms", vm_id, f"{vm_id}.ovf")


def exported_vm_ids(storage, sd_id: str) -> list[str]:
    """The UUID-named entries of an export domain's ``master/vms`` (each
    read through ``read_ovf``, which refuses links)."""
    try:
        fd = open_checked(storage, sd_id, ["master", "vms"], directory=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        names = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    return [n.lower() for n in names if is_uuid(n)]


def read_ovf(storage, sd_id: str, vm_id: str, limit: int = 16 << 20) -> str | None:
    """The OVF text of an exported VM, or None when there is none;
    Untrusted when a link is on the way (see ``open_checked``)."""
    ovf_path(storage, sd_id, vm_id)    # checks the id
    try:
        fd = open_checked(storage, sd_id, ["master", "vms", vm_id, f"{vm_id}.ovf"])
    except (FileNotFoundError, NotADirectoryError):
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError("OVF too large")
    return data.decode("utf-8", "replace")
