"""Vm ``export`` to a directory of a host, as an OVA (oVirt REST API guide:
Vm export, ``host``/``directory``/``filename``; the SDK's
``export_to_path_on_host`` and its example ``export_vm_as_ova.py``).

The same action as the export to an export domain, told apart by its
parameters. The engine writes the OVA in the background: the action
answers at once with a link to its job, and the file appears under its
final name when the job has finished (ovirt-engine ``ExportVmToOvaCommand``
writes ``<name>.tmp`` and renames it at the end). The layout is the one
``imagetool ova export`` writes (imagetool.ova.layout): GNU tar, ``vm.ovf``
first, one qcow2 member per disk named by its volume id.

A client names a path on the engine's own machine, so only directories the
operator listed with ``imagetool serve --export-dir`` (none by default)
are accepted: the directory, symlinks resolved, must be one of them or
inside one; the file name must be a plain name; the file is created 0600
under a temporary name and linked to its final name only when complete,
so an existing file is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import threading

from imagetool.formats.convert import convert_backend
from imagetool.fsutil import opened
from imagetool.ova.layout import cut_member, disk_entry, write_ova
from imagetool.server.jobs import end_job, record_job
from imagetool.server.domain import disks as disk_ops
from imagetool.server import validate
from imagetool.server.domain import vmsettings
from imagetool.server.domain.inventory import get
from imagetool.server.domain.snapshots import not_in_preview
from imagetool.server.faults import bad_request, conflict
from imagetool.server.storage import new_id

ACTION = "export VM"


def check_filename(filename: str) -> None:
    """A plain file name: no directory part, no parent reference, no NUL."""
    if "/" in filename or ".." in filename or "\0" in filename or filename.strip() in ("", "."):
        raise bad_request(f"File name '{filename}' is not a plain file name "
                          "(no '/' or '..').")
    if len(filename.encode()) > 255:
        raise bad_request("The file name is longer than 255 bytes.")


def start(engine, vm_id: str, directory: str, filename: str | None) -> dict:
    """Lock the VM's disks and write its OVA into ``directory`` (as
    ``filename``, default ``<vm name>.ova``) in the background; the job."""
    store = engine.store
    real = validate.allowed_directory(getattr(engine, "export_dirs", []), directory,
                                      action=ACTION, option="--export-dir",
                                      without="This engine writes no files on its host")
    with store.transaction():
        vm = get(engine, "vm", vm_id, "VM")
        filename = filename or f"{vm['name']}.ova"
        check_filename(filename)
        not_in_preview(vm, ACTION)
        disks = []
        for a in vm["attachments"]:
            d = store.get("disk", a["disk_id"])
            if d is not None:
                disk_ops.check_usable(d, ACTION)
                disks.append((a, d))
        if not disks:
            raise conflict(ACTION, f"VM {vm['name']} has no disks to export.")
        if os.path.lexists(os.path.join(real, filename)):
            raise conflict(ACTION, f"File {filename} already exists in {directory}.")
        for _, d in disks:
            store.update("disk", d["id"], status="locked")
        job = record_job(store, f"Exporting VM {vm['name']} As a Virtual Appliance To "
                                f"{os.path.join(directory, filename)}",
                         ["Creating the OVA"], status="started")
    thread = threading.Thread(target=_run, args=(engine, vm, disks, real, filename, job["id"]),
                              name="ova-export", daemon=True)
    engine.background_start(thread)
    return job


def _run(engine, vm: dict, disks: list, real: str, filename: str, job_id: str) -> None:
    store = engine.store
    status = "failed"
    try:
        write_ova_file(engine, vm, disks, real, filename)
        status = "finished"
    except Exception:
        import logging
        logging.getLogger(__name__).exception("OVA export of VM %s failed", vm["id"])
    finally:
        # The store may have closed under us: the disks are settled on restart.
        with contextlib.suppress(Exception), store.transaction():
            for _, d in disks:
                if store.get("disk", d["id"]) is not None:
                    store.update("disk", d["id"], status="ok")
            end_job(store, job_id, status if not engine.stopping.is_set() else "aborted")


def write_ova_file(engine, vm: dict, disks: list, real: str, filename: str) -> None:
    """Write the OVA into ``real`` (already checked) as ``filename``; never overwrite."""
    st, store = engine.storage, engine.store
    with opened(real, os.O_RDONLY | os.O_DIRECTORY) as dfd:
        part = f".{filename[:200]}.{new_id()[:8]}.tmp"
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | getattr(os, "O_CLOEXEC", 0), 0o600, dir_fd=dfd)
        try:
            # The data is written through the descriptor's own path, so a
            # rename of the directory cannot redirect it.
            fd_path = f"/proc/self/fd/{fd}"
            if not os.path.exists(fd_path):
                fd_path = os.path.join(real, part)
            chains = {d["id"]: disk_ops.chain(store, d) for _, d in disks}
            entries = [disk_entry(disk_id=d["id"], image_id=chains[d["id"]][-1]["id"],
                                  virtual_size=d["provisioned_size"],
                                  alias=d.get("name"), interface=a.get("interface"),
                                  boot=a.get("bootable", False), sparse=d.get("sparse", True),
                                  boot_order=vmsettings.boot_order(a, i),
                                  active=a.get("active", True))
                       for i, (a, d) in enumerate(disks)]
            by_id = {d["id"]: d for _, d in disks}

            def write_disk(entry: dict, data_off: int) -> dict:
                d = by_id[entry["disk_id"]]
                with st.open_chain(chains[d["id"]]) as reader:
                    convert_backend(reader, fd_path, "qcow2", size=d["provisioned_size"],
                                    offset=data_off, cancel_event=engine.stopping)
                if engine.stopping.is_set():
                    raise RuntimeError("the engine is stopping")
                return {"disk_id": d["id"], "length": cut_member(fd, data_off)}

            write_ova(fd, vm_id=vm["id"], name=vm["name"],
                      description=vm.get("description") or "",
                      memory=vm.get("memory", 1 << 30), disks=entries, write_disk=write_disk,
                      settings=vmsettings.settings_of(store, vm))
            os.fsync(fd)
            # link() fails when the name exists: a file that appeared meanwhile stays.
            os.link(part, filename, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part, dir_fd=dfd)
        os.fsync(dfd)

