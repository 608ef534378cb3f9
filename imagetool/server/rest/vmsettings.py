"""A VM's settings as a request body gives them (POST /vms, PUT /vms/{id})
and as the VM's representation shows them; what they are and how they
are stored and applied is ``server/domain/vmsettings.py``'s."""

from __future__ import annotations

from imagetool.errors import FormatError
from imagetool.ova.ovfvm import (BIOS_TYPES, MAX_CPUS, MAX_MEMORY, OS_BY_NAME, OS_IDS, OS_NAME,
                                 OvfVm, parse_custom_properties)
from imagetool.ova.ovfvm_read import parse_vm_settings
from imagetool.server.domain.vmsettings import cpu_of, memory_policy
from imagetool.server.rest.codec import get_int, get_list, get_obj, get_str
from imagetool.server.rest.router import bad_request
from imagetool.server.validate import MAX_DESCRIPTION, check_text


def read_ovf(text: str, kind: str) -> OvfVm:
    """The settings of an OVF sent to the API; a 400 naming the bad value."""
    try:
        return parse_vm_settings(text, kind)
    except FormatError as e:
        raise bad_request(f"Cannot add VM from OVF: {e}") from None


def from_body(data: dict) -> OvfVm:
    """The settings a VM body gives (POST /vms, PUT /vms/{id}), checked."""
    s = OvfVm()
    s.description = check_text(get_str(data, "description"), "description", MAX_DESCRIPTION)
    s.comment = check_text(get_str(data, "comment"), "comment", MAX_DESCRIPTION)
    s.memory = _memory(data, "memory")
    s.memory_guaranteed = _memory(data, "memory_policy", "guaranteed")
    s.memory_max = _memory(data, "memory_policy", "max")
    topo = get_obj(data, "cpu", "topology") or {}
    for key in ("sockets", "cores", "threads"):
        value = get_int(topo, key)
        if value is not None and not 1 <= value <= MAX_CPUS:
            raise bad_request(f"Invalid value {value} for cpu.topology.{key}: 1 to "
                              f"{MAX_CPUS}")
        setattr(s, key, value)
    os_type = check_text(get_str(data, "os", "type"), "os.type")
    if os_type is not None:
        # The engine's OS names (osinfo): letters, digits, '_' and '.'; names
        # this engine's table lacks (rhel_9x64...) are kept as given.
        if not OS_NAME.fullmatch(os_type):
            raise bad_request(f"Invalid value {os_type!a} for os.type: an OS name such as "
                              "rhel_7x64 or windows_10x64")
        s.os_type = OS_IDS.get(OS_BY_NAME.get(os_type.lower(), -1), os_type)
    bios = get_str(data, "bios", "type")
    if bios is not None:
        if bios.lower() not in BIOS_TYPES:
            raise bad_request(f"Invalid value {bios!a} for bios.type: expected one of "
                              f"{', '.join(BIOS_TYPES)}")
        s.bios_type = bios.lower()
    props = get_list(data, "custom_properties")
    if props:
        try:
            s.custom_properties = parse_custom_properties(
                ";".join(f"{get_str(p, 'name') or ''}={get_str(p, 'value') or ''}"
                         for p in props), "custom_properties")
        except FormatError as e:
            raise bad_request(str(e)) from None
    return s


def _memory(data: dict, *path: str) -> int | None:
    value = get_int(data, *path)
    if value is not None and not 1 << 20 <= value <= MAX_MEMORY:
        raise bad_request(f"Invalid value {value} for {'.'.join(path)}: 1 MiB to "
                          f"{MAX_MEMORY >> 40} TiB in bytes")
    return value


def vm_fields(vm: dict) -> dict:
    """The hardware part of a VM's representation."""
    cpu = cpu_of(vm)
    memory, guaranteed, most = memory_policy(vm)
    devices = ["hd"] if any(a.get("bootable") or a.get("boot_order")
                            for a in vm.get("attachments", [])) else []
    return {
        "memory": memory,
        "memory_policy": {"guaranteed": guaranteed, "max": most},
        "os": {"type": vm.get("os_type", "other"),
               "boot": {"devices": devices} if devices else None},
        "bios": {"type": vm.get("bios_type") or "cluster_default"},
        "cpu": {"architecture": "x86_64",
                "topology": {k: cpu[k] for k in ("cores", "sockets", "threads")}},
        "comment": vm.get("comment") or None,
        "custom_properties": [{"name": n, "value": v}
                              for n, v in vm.get("custom_properties", [])] or None,
    }
