"""A VM's hardware and texts: memory (and its policy), CPU topology, OS,
BIOS, comment, custom properties, NICs, per-disk boot flags.

One place applies them to the stored VM, whether they come from an OVF
(POST /vms with a configuration, OVA import, export-domain import) or a
request body (POST /vms, PUT /vms/{id}); one place shows them
(``rest/vmsettings.py``) and one hands them to the OVF writers, so what goes into
an OVF comes back out of it (imagetool.ova.ovfvm reads and writes it).

Stored VM fields: ``memory``, ``memory_guaranteed``, ``memory_max``
(bytes), ``cpu`` (``sockets``, ``cores``, ``threads``), ``os_type``,
``bios_type``, ``comment``, ``custom_properties`` (``[name, value]``
pairs), ``nics`` (see ``vms.py``); each attachment may carry ``boot_order``.
"""

from __future__ import annotations

from imagetool.ova.ovfvm import OvfNic, OvfVm
from imagetool.server.domain import networks
from imagetool.server.faults import bad_request
from imagetool.server.storage import new_id
from imagetool.server.validate import MAX_DESCRIPTION, check_text

DEFAULT_MEMORY = 1 << 30


def attachment_for(s: OvfVm | None, disk_id: str, index: int) -> dict:
    """The attachment of an OVF's disk: its interface, boot flag, plug state
    and boot order as the OVF says (without one: the first disk boots)."""
    d = s.disks.get(disk_id) if s is not None else None
    if d is None:
        return {"disk_id": disk_id, "interface": "virtio_scsi", "bootable": index == 0,
                "active": True}
    return {"disk_id": disk_id, "interface": d.interface, "bootable": d.bootable,
            "active": d.active, "boot_order": d.boot_order}


def apply(engine, vm: dict, s: OvfVm) -> list[str]:
    """Put what ``s`` says into ``vm`` (fields it leaves None stay); NICs are
    added with their networks and vNIC profiles, created when missing.
    Returns the notes naming what was not kept."""
    notes = list(s.notes)
    if s.description is not None:
        vm["description"] = check_text(s.description, "description", MAX_DESCRIPTION)
    for key in ("comment", "memory", "memory_guaranteed", "memory_max", "os_type",
                "bios_type"):
        value = getattr(s, key)
        if value is not None:
            vm[key] = value
    if s.custom_properties is not None:
        vm["custom_properties"] = [list(p) for p in s.custom_properties]
    if s.sockets or s.cores or s.threads:
        vm["cpu"] = {"sockets": s.sockets or 1, "cores": s.cores or 1,
                     "threads": s.threads or 1}
    for n in s.nics:
        vm.setdefault("nics", []).append(nic_from(engine, vm, n))
    return notes


def nic_from(engine, vm: dict, n: OvfNic) -> dict:
    """A stored NIC from an OVF's, its profile found or created; its MAC
    refused (400) when another NIC already has it."""
    profile_id = None
    if n.network:
        profile_id = networks.ensure_profile(engine, n.network, n.profile or n.network)["id"]
    mac = n.mac or networks.new_mac(engine)
    networks.check_mac_free(engine, mac, vm)
    if any(x["name"] == n.name for x in vm.get("nics", [])):
        raise bad_request(f"Cannot add VM: two NICs are named {n.name}")
    return {"id": new_id(), "name": n.name, "interface": n.interface, "mac": mac,
            "vnic_profile_id": profile_id, "linked": n.linked, "plugged": n.plugged}


def merge(base: OvfVm, over: OvfVm) -> OvfVm:
    """``base`` with every field ``over`` sets (a request's body over its OVF)."""
    for key in ("description", "comment", "memory", "memory_guaranteed", "memory_max",
                "sockets", "cores", "threads", "os_type", "bios_type", "custom_properties"):
        value = getattr(over, key)
        if value is not None:
            setattr(base, key, value)
    return base


def check_memory(vm: dict) -> None:
    """400 unless guaranteed <= memory <= max, as the engine requires."""
    memory = vm.get("memory", DEFAULT_MEMORY)
    if vm.get("memory_guaranteed") and vm["memory_guaranteed"] > memory:
        raise bad_request("The guaranteed memory is larger than the memory of the VM")
    if vm.get("memory_max") and vm["memory_max"] < memory:
        raise bad_request("The maximum memory is smaller than the memory of the VM")


def cpu_of(vm: dict) -> dict:
    """The VM's CPU topology (one socket, core and thread when unset)."""
    return vm.get("cpu") or {"sockets": vm.get("cpus", 1), "cores": 1, "threads": 1}


def memory_policy(vm: dict) -> tuple[int, int, int]:
    """(memory, guaranteed, max): unset, the engine's defaults (all of the
    memory guaranteed, four times it at most)."""
    memory = vm.get("memory", DEFAULT_MEMORY)
    return memory, vm.get("memory_guaranteed") or memory, vm.get("memory_max") or memory * 4


def settings_of(store, vm: dict) -> OvfVm:
    """The stored VM's settings, as the OVF writers take them."""
    cpu = cpu_of(vm)
    memory, guaranteed, most = memory_policy(vm)
    s = OvfVm(name=vm["name"], description=vm.get("description") or "",
              comment=vm.get("comment") or "", memory=memory,
              memory_guaranteed=guaranteed, memory_max=most,
              sockets=cpu["sockets"], cores=cpu["cores"], threads=cpu["threads"],
              os_type=vm.get("os_type", "other"), bios_type=vm.get("bios_type"),
              custom_properties=[tuple(p) for p in vm.get("custom_properties", [])])
    for n in vm.get("nics", []):
        net, profile = networks.names_of(store, n.get("vnic_profile_id"))
        s.nics.append(OvfNic(name=n["name"], interface=n["interface"], mac=n["mac"],
                             network=net, profile=profile, linked=n.get("linked", True),
                             plugged=n.get("plugged", True)))
    return s


# The stored fields a copy of a VM keeps (its NICs get new MACs: not copied).
FIELDS = ("memory", "memory_guaranteed", "memory_max", "cpu", "cpus", "os_type", "bios_type",
          "comment", "custom_properties")


def copied(source: dict) -> dict:
    """The settings of ``source`` for a VM made from it (clone from a snapshot)."""
    out = {k: source[k] for k in FIELDS if k in source}
    out.setdefault("memory", DEFAULT_MEMORY)
    out.setdefault("os_type", "other")
    return out


def boot_order(att: dict, index: int) -> int:
    """A disk's place in the boot order (0: not a boot device)."""
    if att.get("boot_order") is not None:
        return att["boot_order"]
    return index + 1 if att.get("bootable") else 0
