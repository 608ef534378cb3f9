"""The OVA's tar layout, written around disks someone else fills in.

Shared by ``imagetool ova export`` (disks downloaded from an engine) and
the local engine's Vm ``export`` to a directory of the host (disks read
from its own storage), so both write the same file. Nothing here talks to
an engine: the caller passes ``write_disk``, which writes one disk's qcow2
at a given offset of the file and says how long it came out.

Layout (ovirt-engine ``CreateOvaCommand`` and ``pack_ova.py``): GNU tar
headers; ``vm.ovf`` first; one qcow2 member per disk named by the image
(volume) id the OVF's ``File/@ovf:href`` gives; two zero blocks at the end.
The engine's importer treats every member it does not know as a disk, so a
manifest is only added when asked, as the last member.

The OVF's sizes are only known at the end, so room for it is reserved
first (sized with 20-digit placeholders) and the final OVF is padded with
blanks to fill it; each disk's header is written once its qcow2's length
is known.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable

from imagetool.errors import ImagetoolError
from imagetool.formats import tar
from imagetool.ova.ovf import build_ovirt_ovf
from imagetool.ova.ovfvm import ENGINE_INTERFACES, OvfVm

_PLACEHOLDER = 10 ** 19          # 20 digits: no real size is longer

# write_disk(disk, data_offset) -> {"length": bytes of qcow2 written, "sha256": optional,
# anything else is passed back in the report}
WriteDisk = Callable[[dict, int], dict]


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """``os.pwrite`` until every byte is written."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def digest_range(path: str, offset: int, length: int, algo: str = "sha256",
                 truncated: Exception | None = None) -> str:
    """The ``algo`` digest (hex) of ``length`` bytes of ``path`` from
    ``offset``; ``truncated`` is raised if the file ends before them."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(left, 4 << 20))
            if not chunk:
                raise truncated or ImagetoolError(f"{path}: short read while hashing")
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def disk_entry(*, disk_id: str, image_id: str, virtual_size: int, alias: str | None,
               interface: str | None, boot: bool, sparse: bool,
               boot_order: int | None = None, active: bool = True) -> dict:
    """One disk as ``write_ova`` takes it; ``interface`` in the API's spelling."""
    out = {"disk_id": disk_id, "image_id": image_id, "virtual_size": virtual_size or 0,
           "alias": alias or disk_id,
           "interface": ENGINE_INTERFACES.get(interface or "virtio_scsi", "VirtIO_SCSI"),
           "boot": bool(boot), "sparse": sparse is not False, "active": active is not False}
    if boot_order is not None:
        out["boot_order"] = boot_order
    return out


def write_ova(fd: int, *, vm_id: str, name: str, description: str, memory: int,
              disks: list[dict], write_disk: WriteDisk, manifest: bool = False,
              settings: OvfVm | None = None) -> dict:
    """Lay out the OVA in ``fd`` (an empty file open for reading and writing).

    ``disks``: ``disk_entry`` dicts, in member order. ``write_disk`` fills
    each disk's member data; its result (less ``length``) is the disk's
    entry of the report. ``manifest`` needs each result's ``sha256``.
    ``settings``: the VM's hardware and texts for the OVF (imagetool.ova.ovfvm).
    Returns ``{"disks": [...], "members": [{"name", "size", "sha256"}],
    "size"}``; the file is cut to its final length, not synced.
    """
    ovf_name = "vm.ovf"

    def ovf_text(sizes: dict[str, int]) -> bytes:
        described = [dict(d, member_size=sizes.get(d["disk_id"], _PLACEHOLDER),
                          virtual_size=d["virtual_size"] if d["disk_id"] in sizes
                          else _PLACEHOLDER)
                     for d in disks]
        return build_ovirt_ovf(vm_id=vm_id, name=name or vm_id, description=description or "",
                               memory=memory or (1 << 30), disks=described,
                               settings=settings).encode()

    reserved = tar.round_up(len(ovf_text({})))
    pos = tar.BLOCK + reserved            # first disk header
    sizes: dict[str, int] = {}
    report = []
    members = []
    for d in disks:
        data_off = pos + tar.BLOCK
        done = dict(write_disk(d, data_off))
        length = done.pop("length")
        pwrite_all(fd, tar.header(d["image_id"], length), pos)
        sizes[d["disk_id"]] = length
        members.append({"name": d["image_id"], "size": length, "sha256": done.get("sha256")})
        report.append(done)
        pos = data_off + tar.round_up(length)
    text = ovf_text(sizes)
    if len(text) > reserved:       # cannot happen: placeholders are longest
        raise ImagetoolError("internal error: the OVF outgrew its reserved room")
    text = text + b" " * (reserved - len(text))
    pwrite_all(fd, tar.header(ovf_name, len(text)), 0)
    pwrite_all(fd, text, tar.BLOCK)
    members.insert(0, {"name": ovf_name, "size": len(text),
                       "sha256": hashlib.sha256(text).hexdigest()})
    if manifest:
        if any(m["sha256"] is None for m in members):
            raise ImagetoolError("internal error: a manifest needs every member's SHA-256")
        mf = "".join(f"SHA256({m['name']})= {m['sha256']}\n" for m in members).encode()
        mf_name = (name or vm_id).replace("/", "_")[:80] + ".mf"
        pwrite_all(fd, tar.header(mf_name, len(mf)), pos)
        pwrite_all(fd, mf + bytes(tar.round_up(len(mf)) - len(mf)), pos + tar.BLOCK)
        members.append({"name": mf_name, "size": len(mf),
                        "sha256": hashlib.sha256(mf).hexdigest()})
        pos += tar.BLOCK + tar.round_up(len(mf))
    pwrite_all(fd, tar.end_of_archive(), pos)
    os.ftruncate(fd, pos + 2 * tar.BLOCK)
    return {"disks": report, "members": members, "size": pos + 2 * tar.BLOCK}


def cut_member(fd: int, data_off: int) -> int:
    """After a disk's qcow2 was written at ``data_off``: its length, with the
    file cut to the member's data padded to whole blocks (the next header
    follows)."""
    length = os.fstat(fd).st_size - data_off
    os.ftruncate(fd, data_off + tar.round_up(length))
    return length

