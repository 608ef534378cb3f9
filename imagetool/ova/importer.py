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
import time
from typing import Any, Callable

from imagetool.backends import FlushingBackend
from imagetool.engine import codec
from imagetool.engine.entities import Vm
from imagetool.errors import ChecksumMismatch, ImagetoolError, NotFound
from imagetool.formats.measure import measure
from imagetool.ids import is_uuid, ref
from imagetool.ova.ovf import build_ovirt_ovf
from imagetool.ova.reader import Ova, OvaDisk, open_disk, open_ova, verify_manifest
from imagetool.transfer import resume as resume_mod
from imagetool.copier import DEFAULT_REQUEST_SIZE, CopyCancelled, CopyOptions, copy
from imagetool.transfer.journal import flush_bytes_for
from imagetool.backends import SharedBackend
from imagetool.transfer.session import TransferSession
from imagetool.transfer.verify import (LocalHash, announce_upload_checksum,
                                       pick_algorithm, remote_checksum)

Progress = Callable[[int], None]


def _disk_name(d: OvaDisk) -> str:
    if d.ovf.alias:
        return d.ovf.alias
    base = os.path.basename(d.member.name)
    return base.rsplit(".", 1)[0] if "." in base else base


def _cleanup(conn: Any, kind: str | None, entity_id: str | None,
             disk_ids: list[str]) -> None:
    """Remove what an import created; each step on its own, errors ignored."""
    from imagetool.engine.wait import wait_for_disk_unlocked
    if entity_id:
        try:
            conn.request("DELETE", f"{kind}s/{entity_id}")
        except Exception:
            pass
    for disk_id in disk_ids:
        try:
            wait_for_disk_unlocked(conn, disk_id, timeout=120)
            conn.disks.remove(disk_id)
        except NotFound:
            pass
        except Exception:
            pass


def import_ova(conn: Any, path: str | os.PathLike, storage_domain: str, *,
               cluster: str = "Default", name: str | None = None,
               template: bool | None = None, workers: int = 4,
               buffer_size: int = DEFAULT_REQUEST_SIZE, inactivity_timeout: int = 60,
               use_proxy: bool = False, progress: Progress | None = None) -> dict:
    """Import the OVA at ``path``; see the module docstring.

    ``template`` True adds a template, None follows the OVA (a
    ``template.ovf`` member). ``name`` overrides the OVF's name. Returns
    ``{"vm_id"|"template_id", "name", "disks": [{"disk_id", "member",
    "checksum", "algorithm"}], "bytes", "seconds"}``.
    """
    start = time.monotonic()
    ova = open_ova(path)
    verify_manifest(ova)
    as_template = ova.ovf.template if template is None else template
    kind = "template" if as_template else "vm"
    name = name or ova.ovf.name
    if not name:
        raise ImagetoolError(f"{ova.path}: the OVF names no VM; give a name")
    created: list[str] = []
    entity_id = None
    try:
        report = []
        moved = 0
        for d in ova.disks:
            disk_id = d.ovf.disk_id if ova.ovf.dialect == "ovirt" and \
                is_uuid(d.ovf.disk_id) else None
            res = _import_disk(conn, ova, d, storage_domain, disk_id, created,
                               workers=workers, buffer_size=buffer_size,
                               inactivity_timeout=inactivity_timeout,
                               use_proxy=use_proxy, progress=progress)
            moved += res.pop("bytes")
            report.append(res)
        ovf_text = _configuration(conn, ova, report, name, as_template)
        entity_id = _add_entity(conn, kind, name, cluster, ovf_text)
    except BaseException:
        _cleanup(conn, kind, entity_id, created)
        raise
    out: dict[str, Any] = {f"{kind}_id": entity_id, "name": name, "disks": report,
                           "bytes": moved, "seconds": time.monotonic() - start}
    return out


def _configuration(conn: Any, ova: Ova, report: list[dict], name: str,
                   template: bool) -> str:
    """The OVF sent to the engine: the OVA's own if oVirt's, else rewritten."""
    if ova.ovf.dialect == "ovirt":
        return ova.ovf.text
    disks = []
    for i, (d, r) in enumerate(zip(ova.disks, report)):
        disk = conn.disks.get(r["disk_id"])
        disks.append({"disk_id": disk.id, "image_id": disk.image_id or disk.id,
                      "member_size": d.member.size, "virtual_size": d.virtual_size,
                      "alias": disk.name, "boot": i == 0, "sparse": True})
    return build_ovirt_ovf(vm_id=_new_uuid(), name=name, cpus=ova.ovf.cpus or 1,
                           memory=ova.ovf.memory or (1 << 30), disks=disks,
                           template=template)


def _new_uuid() -> str:
    import uuid
    return str(uuid.uuid4())


def _add_entity(conn: Any, kind: str, name: str, cluster: str, ovf_text: str) -> str:
    body = {"name": name,
            "cluster": ref(cluster),
            "initialization": {"configuration": {"type": "ova", "data": ovf_text}}}
    tree = conn.post_tree(f"{kind}s", codec.to_xml(kind, body))
    entity = codec.entity_from_tree(Vm, tree)
    if not entity.id:
        raise ImagetoolError(f"the engine did not return the new {kind}'s id")
    return entity.id


def _import_disk(conn: Any, ova: Ova, d: OvaDisk, storage_domain: str,
                 disk_id: str | None, created: list[str], *, workers: int,
                 buffer_size: int, inactivity_timeout: int, use_proxy: bool,
                 progress: Progress | None) -> dict:
    from imagetool.engine.wait import wait_for_disk
    fmt = "raw" if d.format == "raw" else "cow"
    sparse = (d.ovf.volume_type or "Sparse") != "Preallocated"
    src = open_disk(ova, d)
    try:
        initial = None
        if fmt == "cow" and sparse:
            initial = int(measure(src, out_format="qcow2")["required"])
        disk = conn.disks.add(name=_disk_name(d), provisioned_size=d.virtual_size,
                              storage_domain=storage_domain, format=fmt, sparse=sparse,
                              initial_size=initial, disk_id=disk_id)
        created.append(disk.id)
        wait_for_disk(conn, disk.id, "ok")
        session = TransferSession(conn, disk_id=disk.id, direction="upload", format="raw",
                                  inactivity_timeout=inactivity_timeout,
                                  timeout_policy="cancel", use_proxy=use_proxy)
        with session:
            dst = session.open_backend()
            n = max(1, min(workers, getattr(dst, "max_writers", None) or workers))
            algorithm = pick_algorithm(dst)
            announce_upload_checksum(dst, algorithm)
            local = LocalHash(lambda: open_disk(ova, d), algorithm=algorithm)
            try:
                shared = SharedBackend(src, owner=False)
                # Flushing as an upload does lets the server hash the
                # blocks for the checksum beside the copy (checksum ahead).
                out = FlushingBackend(resume_mod.retrying(dst, session, shared),
                                      flush_bytes=flush_bytes_for(src.size, buffer_size))
                stats = copy(shared, out, CopyOptions(n, buffer_size, dst_is_zero=sparse),
                             progress=session.progress(progress),
                             cancel_event=session.cancel_event)
                remote, _ = remote_checksum(dst, algorithm=algorithm)
                mine = local.result()
            except CopyCancelled:
                local.cancel()
                raise session.stopped(f"upload of {d.member.name}") from None
            except BaseException:
                local.cancel()
                raise
            if mine["checksum"] != remote["checksum"]:
                raise ChecksumMismatch(mine["checksum"], remote["checksum"],
                                       f"member {d.member.name}")
    finally:
        src.close()
    return {"disk_id": disk.id, "member": d.member.name, "checksum": mine["checksum"],
            "algorithm": algorithm, "bytes": stats.bytes_total}
