"""Import an OVA as a VM or a template, uploading its disks in place.

As the SDK example ``upload_ova_as_vm_or_template.py`` does: each disk is
created (same disk id as in an oVirt OVF, provisioned size = the image's
virtual size, initial size = what a qcow2 of its data needs), its guest data
is uploaded straight from the member's offset in the tar (no extraction),
then the VM or template is added from the OVF with a configuration of type
``ova`` (oVirt REST API guide: Vms/add, Templates/add,
``initialization.configuration``), which attaches the disks by id. A DMTF
OVF (VMware, VirtualBox) is first rewritten in the oVirt dialect with the
new disks' ids, since that is the dialect the engine reads.

Nothing is created before the whole OVA is checked (imagetool.ova.reader).
On any failure, Ctrl-C included, every disk and the VM or template created
so far are removed, and transfers are cancelled so no disk stays locked.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any, Callable

from imagetool import xmlsafe
from imagetool.checksum import GuestChecksum
from imagetool.engine.wait import found_or_none
from imagetool.errors import Conflict, ImagetoolError
from imagetool.formats import FORMATS
from imagetool.formats.measure import measure
from imagetool.ids import is_uuid
from imagetool.ova.ovf import build_ovirt_ovf, local_name
from imagetool.ova.ovfvm import OvfVm
from imagetool.ova.ovfvm_read import parse_vm_settings
from imagetool.ova.reader import Ova, OvaDisk, open_disk, open_ova, verify_manifest
from imagetool.ova.results import ImportedDisk, OvaImported
from imagetool.iocore.copier import DEFAULT_REQUEST_SIZE
from imagetool.threads import shielded
from imagetool.transfer.disk import DiskOptions, Sent, add_disk, send
from imagetool.vms import remove_made

Progress = Callable[[int], None]


def _disk_name(d: OvaDisk) -> str:
    if d.ovf.alias:
        return d.ovf.alias
    base = os.path.basename(d.member.name)
    return base.rsplit(".", 1)[0] if "." in base else base


def import_ova(conn: Any, path: str | os.PathLike, storage_domain: str, *,
               cluster: str = "Default", name: str | None = None,
               template: bool | None = None, workers: int = 4,
               buffer_size: int = DEFAULT_REQUEST_SIZE, inactivity_timeout: int = 60,
               use_proxy: bool = False, progress: Progress | None = None,
               clone: bool = False,
               committed: Callable[[], None] | None = None) -> OvaImported:
    """Import the OVA at ``path``; see the module docstring.

    ``template`` True adds a template, None follows the OVA (a
    ``template.ovf`` member). ``name`` overrides the OVF's name. An oVirt
    OVA keeps its disk ids unless ``clone``: then the disks get new ids and
    the OVF sent to the engine names them and a new VM id (as ``vms import
    --clone`` does), so an OVA exported from the same engine can come back
    beside the VM it was made from (give a ``name`` then). ``committed()``
    is called once the VM or template is complete, before this returns: a
    Ctrl-C before it removes everything, after it nothing.
    """
    start = time.monotonic()
    ova = open_ova(path)
    verify_manifest(ova)
    # The VM settings are checked before anything is created, as the disks are.
    settings = parse_vm_settings(ova.ovf.text, "ova")
    as_template = ova.ovf.template if template is None else template
    kind = "template" if as_template else "vm"
    name = name or ova.ovf.name
    if not name:
        raise ImagetoolError(f"{ova.path}: the OVF names no VM; give a name")
    keep_ids = ova.ovf.dialect == "ovirt" and not clone
    if keep_ids:
        _check_ids_free(conn, ova)
    created: list[str] = []
    entity_id = None
    adding = None
    try:
        result = OvaImported(kind=kind, name=name)
        report = result.disks
        for d in ova.disks:
            disk_id = d.ovf.disk_id if keep_ids and is_uuid(d.ovf.disk_id) else None
            disk, sent = _import_disk(conn, ova, d, storage_domain, disk_id, created,
                                      workers=workers, buffer_size=buffer_size,
                                      inactivity_timeout=inactivity_timeout,
                                      use_proxy=use_proxy, progress=progress)
            v = sent.verification
            report.append(ImportedDisk(disk_id=disk.id, member=d.member.name,
                                       checksum=GuestChecksum(v.value, v.algorithm,
                                                              v.block_size)))
            result.bytes += sent.stats.bytes_total
        ovf_text = _configuration(conn, ova, report, name, as_template, settings,
                                  clone)
        _check_own_disks(ovf_text, [r.disk_id for r in report], ova.path)
        adding = name
        entity_id = _add_entity(conn, kind, name, cluster, ovf_text)
        _check_attached(conn, kind, entity_id, created, ova.path)
        result.id = entity_id
        result.seconds = time.monotonic() - start
        if committed is not None:
            committed()
    except BaseException:
        shielded(lambda: remove_made(conn, kind, entity_id, created, adding))
        raise
    return result


def _already_there(path: str, disk_id: str) -> ImagetoolError:
    return ImagetoolError(f"{path}: disk {disk_id} of the OVA already exists on the "
                          "engine (was the OVA exported from it?); import it with "
                          "--clone (clone=True) to give the VM and its disks new ids")


def _check_ids_free(conn: Any, ova: Ova) -> None:
    """Refuse before uploading anything when a disk id of the OVA is taken."""
    for d in ova.disks:
        if is_uuid(d.ovf.disk_id) and found_or_none(lambda: conn.disks.get(d.ovf.disk_id)):
            raise _already_there(ova.path, d.ovf.disk_id)


def _check_own_disks(ovf_text: str, created: list[str], path: str) -> None:
    """ImagetoolError unless the OVF sent names exactly the disks created.

    The engine attaches every disk the configuration names, by id; a name
    of any other disk (another VM's) must never reach it. ``parse_ovf``
    already refuses disks outside the DiskSection; this checks the text
    actually sent, after any rewriting, the way the engine reads it.
    """
    root = xmlsafe.parse(ovf_text)
    named = set()
    for el in root.iter():
        tag = local_name(el.tag)
        if tag == "Disk":
            attrs = {local_name(k): v for k, v in el.attrib.items()}
            named.add((attrs.get("diskId") or "").lower())
        elif tag == "HostResource":
            m = re.match(r"^(?:ovf:)?/disk/(.+)$", (el.text or "").strip())
            if m:
                named.add(m.group(1).lower())
    foreign = named - {c.lower() for c in created}
    if foreign:
        raise ImagetoolError(f"{path}: the OVF names disks this import did not create "
                             f"({', '.join(sorted(foreign))}); refused")


def _check_attached(conn: Any, kind: str, entity_id: str, created: list[str],
                    path: str) -> None:
    """ImagetoolError when the new VM or template holds a disk the import
    did not create (an engine that read more into the OVF than we sent);
    the clean-up then detaches it rather than deleting it."""
    atts = (conn.vms if kind == "vm" else conn.templates).disk_attachments(entity_id)
    foreign = {a.disk_id for a in atts} - set(created)
    if foreign:
        raise ImagetoolError(f"{path}: the engine attached disks this import did not "
                             f"create ({', '.join(sorted(foreign))}); the {kind} is "
                             "removed again, those disks are left as they were")


def _cloned_text(ova: Ova, report: list[ImportedDisk], conn: Any) -> str:
    """The OVA's oVirt OVF with its VM id and disk and image ids replaced by
    new ones (the disks' as the engine created them). Ids are UUIDs, so a
    case-insensitive replacement of each one is exact."""
    mapping: dict[str, str] = {}
    if ova.ovf.vm_id and is_uuid(ova.ovf.vm_id):
        mapping[ova.ovf.vm_id.lower()] = str(uuid.uuid4())
    for d, r in zip(ova.disks, report):
        disk = conn.disks.get(r.disk_id)
        for old, new in ((d.ovf.disk_id, disk.id), (d.ovf.file_id, disk.image_id),
                         (d.ovf.href, disk.image_id)):
            if old and new and is_uuid(old):
                mapping[old.lower()] = new
    if not mapping:
        return ova.ovf.text
    pattern = re.compile("|".join(re.escape(k) for k in mapping), re.IGNORECASE)
    return pattern.sub(lambda m: mapping[m.group(0).lower()], ova.ovf.text)


def _configuration(conn: Any, ova: Ova, report: list[ImportedDisk], name: str,
                   template: bool, settings: OvfVm, clone: bool = False) -> str:
    """The OVF sent to the engine: the OVA's own if oVirt's (with new ids
    when cloning), else rewritten with the VM settings read from it
    (memory, CPUs, NICs...)."""
    if ova.ovf.dialect == "ovirt":
        return _cloned_text(ova, report, conn) if clone else ova.ovf.text
    disks = []
    for i, (d, r) in enumerate(zip(ova.disks, report)):
        disk = conn.disks.get(r.disk_id)
        disks.append({"disk_id": disk.id, "image_id": disk.image_id or disk.id,
                      "member_size": d.member.size, "virtual_size": d.virtual_size,
                      "alias": disk.name, "boot": i == 0, "sparse": True})
    return build_ovirt_ovf(vm_id=str(uuid.uuid4()), name=name, cpus=ova.ovf.cpus or 1,
                           memory=ova.ovf.memory or (1 << 30), disks=disks,
                           template=template, settings=settings)


def _add_entity(conn: Any, kind: str, name: str, cluster: str, ovf_text: str) -> str:
    service = conn.templates if kind == "template" else conn.vms
    entity = service.add_from_ova(name=name, cluster=cluster, ovf=ovf_text)
    if not entity.id:
        raise ImagetoolError(f"the engine did not return the new {kind}'s id")
    return entity.id


def _import_disk(conn: Any, ova: Ova, d: OvaDisk, storage_domain: str,
                 disk_id: str | None, created: list[str], *, workers: int,
                 buffer_size: int, inactivity_timeout: int, use_proxy: bool,
                 progress: Progress | None) -> tuple[Any, Sent]:
    """Add one disk for member ``d`` and send its guest data: (the disk, what was sent)."""
    fmt = FORMATS[d.format].disk_format or "cow"     # vmdk goes up as qcow2
    sparse = (d.ovf.volume_type or "Sparse") != "Preallocated"
    with open_disk(ova, d) as src:
        initial = None
        if fmt == "cow" and sparse:
            initial = int(measure(src, out_format="qcow2")["required"])
        try:
            disk = add_disk(conn, created, name=_disk_name(d), provisioned_size=d.virtual_size,
                            storage_domain=storage_domain, format=fmt,
                            sparse=sparse, initial_size=initial, disk_id=disk_id)
        except Conflict:
            if disk_id is None:
                raise
            raise _already_there(ova.path, disk_id) from None
        sent = send(conn, src, disk, DiskOptions(
            workers=workers, buffer_size=buffer_size, timeout_policy="cancel",
            inactivity_timeout=inactivity_timeout, use_proxy=use_proxy,
            dst_is_zero=sparse, what=f"member {d.member.name}"), progress=progress)
    return disk, sent
