"""Export storage domains (oVirt REST API guide: Vm ``export``,
StorageDomainVms, StorageDomainVm ``import``/remove).

An export domain holds VMs as files, laid out as vdsm lays out one
(``master/vms/<vm-id>/<vm-id>.ovf``, ``images/<disk-id>/<volume-id>`` with a
vdsm ``.meta`` beside each volume; see ``storage_files.py``), not as
inventory rows: what is on it is what its directory says, so a VM exported
here can be read by other tools and a domain written by them can be read
here. Every id read back from its files is checked to be a UUID, and a
chain is read through the parents the OVF records, never through the
backing file names in the volumes' headers. Nothing on the domain is
trusted (``storage_files.open_checked``): a link anywhere below it is
refused, volumes are read through descriptors opened without following
links, and each volume's header and the sizes its metadata claim are
checked before anything is created.

Each copy goes to a staging directory first and is renamed into place only
when complete, so a failed export or import leaves nothing half-done.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack, contextmanager, suppress
from typing import Iterator

from imagetool.errors import FormatError
from imagetool.fsutil import write_atomic
from imagetool.server import storage_files
from imagetool.server.domain import disks as disk_ops
from imagetool.server.domain import vmsettings
from imagetool.server.domain.inventory import get
from imagetool.server.domain.ovf import build_export_ovf, parse_export_ovf
from imagetool.server.domain.snapshots import not_in_preview
from imagetool.server.jobs import record_job
from imagetool.server.faults import conflict, not_found
from imagetool.server.files import create_private, make_private_dirs, os_reason
from imagetool.server.layers import copy_guest_data
from imagetool.server.storage import new_id
from imagetool.server.validate import MAX_PROVISIONED_SIZE


def check_export_domain(engine, sd: dict, action: str) -> None:
    """409 unless ``sd`` is an export domain attached to the data center and
    active, its directories real ones (no link to elsewhere)."""
    if sd["type"] != "export":
        raise conflict(action, f"Storage Domain {sd['name']} is not an export domain.")
    if not sd.get("attached", True):
        raise conflict(action, f"Export domain {sd['name']} is not attached to the data "
                               "center: attach it first.")
    if sd.get("status", "active") != "active":
        raise conflict(action, f"Export domain {sd['name']} is in maintenance: activate it "
                               "first.")
    try:
        storage_files.check_layout(engine.storage, sd["id"])
    except storage_files.Untrusted as e:
        raise _untrusted(sd, e, action) from None
    except OSError as e:
        raise conflict(action, f"Export domain {sd['name']} cannot be read: "
                               f"{os_reason(e)}.") from None


def _untrusted(sd: dict, e: storage_files.Untrusted, action: str):
    """The 409 for a link or hard link found on an export domain."""
    return conflict(action, f"Export domain {sd['name']}: {e}. The engine follows no links "
                            "and reads no hard-linked volumes on an export domain: replace "
                            "it with a plain file or directory.")


def read(engine, sd: dict, vm_id: str) -> dict:
    """The parsed OVF of a VM on the domain; 404 when there is none, 409 when broken."""
    try:
        text = storage_files.read_ovf(engine.storage, sd["id"], vm_id)
    except ValueError as e:
        raise conflict("read VM", f"The OVF of VM {vm_id} is unusable: {e}.") from None
    if text is None:
        raise not_found(f"VM '{vm_id}' on storage domain '{sd['name']}'")
    try:
        parsed = parse_export_ovf(text)
    except Exception as e:   # ValueError, or an ApiError from an id check
        raise conflict("read VM", f"The OVF of VM {vm_id} is unusable: "
                                  f"{getattr(e, 'detail', None) or e}.") from None
    if parsed["id"] != vm_id:
        raise conflict("read VM", f"The OVF in the directory of VM {vm_id} describes VM "
                                  f"{parsed['id']}.")
    return parsed


def exported(engine, sd: dict) -> list[dict]:
    """Every readable VM on the domain (a broken OVF is left out)."""
    out = []
    for vm_id in storage_files.exported_vm_ids(engine.storage, sd["id"]):
        with suppress(Exception):
            out.append(read(engine, sd, vm_id))
    return out


def _claimed_size(engine, sd: dict, disk_id: str, d: dict) -> int:
    """The disk's size as its top volume's ``.meta`` (else the OVF) says;
    Untrusted when the ``.meta`` is a link."""
    meta = storage_files.read_volume_meta(engine.storage, sd["id"], disk_id,
                                         d["volumes"][-1]["id"])
    cap = meta.get("CAP", "")
    return int(cap) if cap.isascii() and cap.isdigit() else d["capacity"]


def _allocated(path: str) -> int:
    """Bytes allocated to the file itself (a link is not followed)."""
    try:
        return os.lstat(path).st_blocks * 512
    except OSError:
        return 0


def disk_sizes(engine, sd: dict, disk_id: str, d: dict) -> tuple[int, int]:
    """(provisioned, allocated) bytes of a disk on the domain, as its files say."""
    try:
        size = _claimed_size(engine, sd, disk_id, d)
    except storage_files.Untrusted:
        size = d["capacity"]     # listed as the OVF says; an import refuses it
    actual = sum(_allocated(engine.storage.volume_path(sd["id"], disk_id, v["id"]))
                 for v in d["volumes"])
    return size, actual


def domain(engine, sd_id: str, action: str) -> dict:
    sd = get(engine, "storage_domain", sd_id, "storage domain")
    if sd["type"] == "export":
        check_export_domain(engine, sd, action)
    return sd


def sd_vm(engine, sd_id: str, vm_id: str, action: str) -> tuple[dict, dict]:
    sd = domain(engine, sd_id, action)
    if sd["type"] != "export":
        raise not_found(f"VM '{vm_id}' on storage domain '{sd['name']}'")
    return sd, read(engine, sd, vm_id)


def _remove_exported(engine, sd: dict, p: dict) -> None:
    st = engine.storage
    for disk_id in p["disks"]:
        shutil.rmtree(st.disk_dir(sd["id"], disk_id), ignore_errors=True)
    shutil.rmtree(os.path.dirname(storage_files.ovf_path(st, sd["id"], p["id"])),
                  ignore_errors=True)


def remove_vm(engine, sd_id: str, vm_id: str) -> None:
    """The VM's OVF and disks leave the export domain."""
    sd, p = sd_vm(engine, sd_id, vm_id, "remove VM")
    with engine.store.transaction():
        _remove_exported(engine, sd, p)
    record_job(engine.store, f"Removing VM {p['name']} from Export Domain {sd['name']}",
               ["Removing files"])


# --- copies ------------------------------------------------------------------------

def _staged_copy(engine, sd_id: str, stage: str, vols: list[dict], dst_id: str,
                 fmt: str, size: int, collapse: bool,
                 paths: dict[str, str] | None = None) -> None:
    """Copy a chain into ``images/<stage>/`` of ``sd_id``.

    ``collapse``: one volume ``dst_id`` with the chain's guest data;
    otherwise every volume as it is, same ids (a qcow2 layer names its
    parent by bare volume id, so the copied chain links up as the source's).
    ``paths``: the files to read instead of the volumes' own paths
    (``_checked_sources``).
    """
    st = engine.storage
    paths = paths or {}
    make_private_dirs(st.disk_dir(sd_id, stage))
    if collapse:
        dst = st.volume_path(sd_id, stage, dst_id)
        create_private(dst)
        copy_guest_data(st.open_chain(vols, paths), dst, fmt, size)
        return
    for v in vols:
        st.flatten([v], v["format"], size, sd_id, stage, v["id"], source=paths.get(v["id"]))


@contextmanager
def _checked_sources(engine, sd: dict, disk_id: str,
                     vols: list[dict]) -> Iterator[dict[str, str]]:
    """Volume id -> a path reading that volume of an export domain through a
    descriptor ``storage_files.open_checked`` opened (``/proc/self/fd/N``:
    opening it again opens that very file, whatever is renamed meanwhile);
    409 for a missing or linked volume or ``.meta``. The descriptors close
    when the block ends."""
    st = engine.storage
    with ExitStack() as stack:
        paths = {}
        for v in vols:
            try:
                fd = storage_files.open_checked(st, sd["id"], ["images", disk_id, v["id"]])
                storage_files.read_volume_meta(st, sd["id"], disk_id, v["id"])
            except (FileNotFoundError, NotADirectoryError):
                raise conflict("import VM", f"Volume {v['id']} of disk {disk_id} is "
                                            "missing on the export domain.") from None
            except storage_files.Untrusted as e:
                raise _untrusted(sd, e, "import VM") from None
            stack.callback(os.close, fd)
            paths[v["id"]] = f"/proc/self/fd/{fd}"
        yield paths


def _check_source(engine, sd: dict, disk_id: str, d: dict) -> int:
    """The size of a disk to import, once its files on the export domain are
    known to be usable: no links, a size the engine serves, every volume
    readable as the format the OVF gives it (a qcow2 naming an external
    data file is refused) and no larger than the size its metadata claims.
    409 naming the disk and the volume otherwise."""
    try:
        size = _claimed_size(engine, sd, disk_id, d)
    except storage_files.Untrusted as e:
        raise _untrusted(sd, e, "import VM") from None
    if not 0 < size <= MAX_PROVISIONED_SIZE:
        raise conflict("import VM", f"Disk {disk_id} on export domain {sd['name']} claims a "
                                    f"size of {size} bytes: a disk holds 1 byte to 8 TiB "
                                    f"({MAX_PROVISIONED_SIZE} bytes).")
    src = [dict(v, sd_id=sd["id"], disk_id=disk_id) for v in d["volumes"]]
    with _checked_sources(engine, sd, disk_id, src) as paths:
        for v in src:
            try:
                with engine.storage.open_chain([v], paths) as reader:
                    held = reader.size
            except (FormatError, ValueError, OSError) as e:
                why = str(e)
                if isinstance(e, FormatError) and e.path:
                    why = why[len(e.path) + 2:]    # the /proc path names nothing
                raise conflict("import VM", f"Volume {v['id']} of disk {disk_id} on export "
                                            f"domain {sd['name']} is not a usable "
                                            f"{'qcow2' if v['format'] == 'cow' else 'raw'} "
                                            f"image: {why}.") from None
            if held > size:
                raise conflict("import VM", f"Volume {v['id']} of disk {disk_id} on export "
                                            f"domain {sd['name']} holds {held} bytes, more "
                                            f"than the {size} its metadata claims.")
    return size


def _install(engine, sd_id: str, staged: list, installed: list[str]) -> None:
    """Rename each staged disk directory into place (none may exist yet),
    moving it from ``staged`` to ``installed`` (see ``_undo_copies``)."""
    st = engine.storage
    for stage, disk_id in list(staged):
        dst = st.disk_dir(sd_id, disk_id)
        if os.path.lexists(dst):
            raise FileExistsError(f"disk directory {disk_id} already exists")
        os.rename(st.disk_dir(sd_id, stage), dst)
        staged.remove((stage, disk_id))
        installed.append(disk_id)


def _undo_copies(st, sd_id: str, staged: list, installed: list[str], e: BaseException,
                 verb: str) -> None:
    """After a failed export or import: remove the staged disk directories and
    those renamed into place by a transaction that then failed. OS and data
    errors become a 409 fault; the caller re-raises anything else."""
    for stage, _ in staged:
        shutil.rmtree(st.disk_dir(sd_id, stage), ignore_errors=True)
    for disk_id in installed:
        shutil.rmtree(st.disk_dir(sd_id, disk_id), ignore_errors=True)
    if isinstance(e, storage_files.Untrusted):
        raise conflict(f"{verb} VM", f"Cannot {verb}: {e}: the engine follows no links on "
                                     "an export domain.") from None
    if isinstance(e, (OSError, ValueError, FormatError)):
        raise conflict(f"{verb} VM", f"Cannot {verb}: {os_reason(e)}.") from None


def export_vm(engine, vm_id: str, sd: dict, *, exclusive: bool, discard: bool) -> None:
    """The VM's disks and OVF onto export domain ``sd``.

    ``discard``: each disk's chain collapsed into one volume (the format of
    its base); otherwise the whole chain and the snapshots go.
    ``exclusive``: replace the same VM already on the domain (else 409).
    """
    store, st = engine.store, engine.storage
    check_export_domain(engine, sd, "export VM")
    with store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        not_in_preview(vm, "export VM")
        disks = [get(engine, "disk", a["disk_id"], "disk") for a in vm["attachments"]]
        for d in disks:
            disk_ops.check_usable(d, "export VM")
        present = exported(engine, sd)
        old = next((p for p in present if p["id"] == vm_id), None)
        if old is not None and not exclusive:
            raise conflict("export VM", f"VM {vm['name']} already exists on export domain "
                                        f"{sd['name']}: export with exclusive=true to "
                                        "replace it.")
        if any(p["name"] == vm["name"] and p["id"] != vm_id for p in present):
            raise conflict("export VM", f"Another VM named {vm['name']} exists on export "
                                        f"domain {sd['name']}.")
        # Never write over files this export does not replace: an unreadable
        # VM directory, or disk directories of something else.
        if old is None and os.path.lexists(
                os.path.dirname(storage_files.ovf_path(st, sd["id"], vm_id))):
            raise conflict("export VM", f"Export domain {sd['name']} already has a directory "
                                        f"for VM {vm_id} that it cannot read: remove it "
                                        "first.")
        replaced = set(old["disks"]) if old is not None else set()
        for d in disks:
            if d["id"] not in replaced and os.path.lexists(st.disk_dir(sd["id"], d["id"])):
                raise conflict("export VM", f"Export domain {sd['name']} already holds files "
                                            f"of disk {d['id']}.")
        for d in disks:
            store.update("disk", d["id"], status="locked")
    staged: list[tuple[str, str]] = []
    installed: list[str] = []
    try:
        entries = []
        for d in disks:
            vols = disk_ops.chain(store, d)
            att = next(a for a in vm["attachments"] if a["disk_id"] == d["id"])
            stage = new_id()
            staged.append((stage, d["id"]))
            top = vols[-1]
            out = ([dict(top, parent_id=None, format=vols[0]["format"], snapshot_id=None)]
                   if discard else vols)
            _staged_copy(engine, sd["id"], stage, vols, top["id"], out[0]["format"],
                         d["provisioned_size"], collapse=discard)
            for i, v in enumerate(out):
                write_atomic(
                    st.volume_path(sd["id"], stage, v["id"]) + ".meta",
                    storage_files.volume_meta(
                        sd_id=sd["id"], disk_id=d["id"], fmt=v["format"],
                        size=d["provisioned_size"], parent=v.get("parent_id"),
                        sparse=d.get("sparse", True), leaf=i == len(out) - 1,
                        description=d["name"]))
            kept = [] if discard else [store.get("snapshot", v.get("snapshot_id") or "")
                                       for v in vols]
            snaps = [{"id": s["id"], "description": s["description"], "date": s.get("date")}
                     for s in kept if s is not None]
            entries.append({"disk": d, "attachment": att, "volumes": out, "snapshots": snaps})
        ovf = build_export_ovf(vm, entries, vmsettings.settings_of(store, vm))
        with store.transaction():
            # Again: a link put in place during the copy must not be written through.
            storage_files.check_layout(st, sd["id"])
            if old is not None:
                _remove_exported(engine, sd, old)
            _install(engine, sd["id"], staged, installed)
            path = storage_files.ovf_path(st, sd["id"], vm_id)
            make_private_dirs(os.path.dirname(path))
            write_atomic(path, ovf)
    except BaseException as e:
        _undo_copies(st, sd["id"], staged, installed, e, "export")
        raise
    finally:
        for d in disks:
            store.update("disk", d["id"], status="ok")
    record_job(engine.store, f"Exporting VM {vm['name']} To Export Domain {sd['name']}",
               [f"Copying disk {d['name']}" for d in disks])


def check_import_target(dst_sd: dict) -> None:
    """409 unless VMs may be imported into ``dst_sd``: an active data domain."""
    if dst_sd["type"] != "data":
        raise conflict("import VM", f"Storage Domain {dst_sd['name']} is not a data domain.")
    disk_ops.check_active(dst_sd, "import VM")


def import_vm(engine, src_sd: dict, p: dict, dst_sd: dict, *, clone: bool, collapse: bool,
              name: str) -> dict:
    """VM ``p`` (read by ``sd_vm``) of export domain ``src_sd`` into data
    domain ``dst_sd`` (``check_import_target`` passed); the new VM.

    ``clone``: new VM and disk ids, refused without ``collapse`` when the
    VM has snapshots, as the engine refuses it; ``collapse``: each chain
    becomes one volume.
    """
    store, st = engine.store, engine.storage
    vm_id = p["id"]
    if clone and p["snapshots"] and not collapse:
        raise conflict("import VM", f"VM {p['name']} has snapshots: importing it as a clone "
                                    "needs collapse_snapshots=true.")
    new_vm_id = new_id() if clone else vm_id
    with store.transaction():
        if store.get("vm", new_vm_id):
            raise conflict("import VM", f"VM {p['name']} ({vm_id}) already exists in the data "
                                        "center: import it with clone=true.")
        if any(v["name"] == name for v in store.list("vm")):
            raise conflict("import VM", f"The VM name {name} is already in use.")
        for disk_id in p["disks"]:
            if not clone and store.get("disk", disk_id):
                raise conflict("import VM", f"Disk {disk_id} already exists in the data "
                                            "center: import the VM with clone=true.")
    # Every disk's files checked before anything is created.
    sizes = {disk_id: _check_source(engine, src_sd, disk_id, d)
             for disk_id, d in p["disks"].items()}
    one = collapse or clone
    staged: list[tuple[str, str]] = []
    installed: list[str] = []
    rows_vol, rows_disk, atts = [], [], []
    now = time.time()
    snap_map = {} if one else {
        s["id"]: {"id": s["id"], "vm_id": new_vm_id, "description": s["description"],
                  "type": "regular", "status": "ok", "date": now, "volumes": {}}
        for s in p["snapshots"]}
    try:
        for disk_id, d in p["disks"].items():
            size = sizes[disk_id]
            new_disk = new_id() if clone else disk_id
            src = [dict(v, sd_id=src_sd["id"], disk_id=disk_id) for v in d["volumes"]]
            stage = new_id()
            staged.append((stage, new_disk))
            collapsed = one or len(src) == 1
            top_id = new_id() if clone else src[-1]["id"]
            fmt = src[0]["format"]
            with _checked_sources(engine, src_sd, disk_id, src) as paths:
                _staged_copy(engine, dst_sd["id"], stage, src, top_id, fmt, size,
                             collapse=collapsed, paths=paths)
            if collapsed:
                out = [{"id": top_id, "format": fmt, "parent_id": None, "snapshot_id": None}]
            else:
                out = []
                for i, v in enumerate(src):
                    snap_id = v.get("snapshot_id") if i < len(src) - 1 else None
                    if snap_id in snap_map:
                        snap_map[snap_id]["volumes"][new_disk] = v["id"]
                    else:
                        snap_id = None
                    out.append({"id": v["id"], "format": v["format"],
                                "parent_id": v["parent_id"], "snapshot_id": snap_id})
            for v in out:
                st.write_meta(dst_sd["id"], stage, v["id"], {
                    "format": v["format"], "size": size, "parent": v["parent_id"],
                    "ctime": int(now)})
                rows_vol.append(dict(v, disk_id=new_disk, sd_id=dst_sd["id"], created=now))
            rows_disk.append({"id": new_disk, "name": d["alias"], "description": d["description"],
                              "format": out[-1]["format"],
                              "provisioned_size": size, "initial_size": None,
                              "sparse": d["sparse"], "content_type": "data", "backup": "none",
                              "sd_id": dst_sd["id"], "status": "ok", "image_id": out[-1]["id"],
                              "created": now})
            atts.append(dict(vmsettings.attachment_for(p["settings"], disk_id, len(atts)),
                             disk_id=new_disk))
        vm = {"id": new_vm_id, "name": name, "description": "", "created": now,
              "memory": vmsettings.DEFAULT_MEMORY, "os_type": "other", "attachments": atts,
              "active_snapshot_id": new_id(), "ovf": None}
        with store.transaction():
            if clone:   # a copy's NICs get new MACs, as the engine's clone does
                for n in p["settings"].nics:
                    n.mac = None
            notes = [f"Not kept from the OVF: {n}"
                     for n in vmsettings.apply(engine, vm, p["settings"])]
            if store.get("vm", new_vm_id) or any(v["name"] == name for v in store.list("vm")):
                raise conflict("import VM", f"VM {name} appeared meanwhile.")
            _install(engine, dst_sd["id"], staged, installed)
            for row in rows_vol:
                store.put("volume", row)
            for row in rows_disk:
                store.put("disk", row)
            for s in snap_map.values():
                if s["volumes"]:
                    store.put("snapshot", s)
            store.put("vm", vm)
    except BaseException as e:
        _undo_copies(st, dst_sd["id"], staged, installed, e, "import")
        raise
    record_job(engine.store, f"Importing VM {name} from Export Domain {src_sd['name']}",
               [f"Copying disk {d['alias']}" for d in p["disks"].values()] + notes)
    return vm
