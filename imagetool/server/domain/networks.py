"""Networks and vNIC profiles (oVirt REST API guide: Networks, Network,
VnicProfiles, VnicProfile), as far as VM NICs need them.

The engine's data center has the management network ``ovirtmgmt`` with a
vNIC profile of the same name; a NIC read from an OVF names a network (and
maybe a profile) that the local engine creates the same way when it has
none of that name, so the NIC keeps its connection. Nothing here carries
traffic: the local engine's VMs never run.
"""

from __future__ import annotations

import random

from imagetool.server.faults import conflict
from imagetool.server.storage import new_id

DEFAULT_NETWORK = "ovirtmgmt"
# oVirt's default MAC address pool is 56:6f:xx:xx:xx:xx (locally administered).
MAC_PREFIX = "56:6f"


def ensure_default(engine) -> None:
    """The management network and its profile, made at the first need."""
    if not any(n["name"] == DEFAULT_NETWORK for n in engine.store.list("network")):
        ensure_profile(engine, DEFAULT_NETWORK, DEFAULT_NETWORK)


def ensure_profile(engine, network: str, profile: str) -> dict:
    """The vNIC profile ``profile`` of network ``network``; both created
    when the engine has none of that name."""
    store = engine.store
    with store.transaction():
        net = next((n for n in store.list("network") if n["name"] == network), None)
        if net is None:
            net = {"id": new_id(), "name": network,
                   "description": "Management Network" if network == DEFAULT_NETWORK else ""}
            store.put("network", net)
        prof = next((p for p in store.list("vnic_profile")
                     if p["network_id"] == net["id"] and p["name"] == profile), None)
        if prof is None:
            prof = {"id": new_id(), "name": profile, "network_id": net["id"]}
            store.put("vnic_profile", prof)
    return prof


def names_of(store, profile_id: str | None) -> tuple[str | None, str | None]:
    """(network name, profile name) of a vNIC profile id (None, None when unset)."""
    prof = store.get("vnic_profile", profile_id) if profile_id else None
    if prof is None:
        return None, None
    net = store.get("network", prof["network_id"])
    return (net["name"] if net else None), prof["name"]


def new_mac(engine) -> str:
    """A MAC address from the default pool that no NIC has yet."""
    used = _used_macs(engine)
    while True:
        mac = MAC_PREFIX + "".join(f":{random.randrange(256):02x}" for _ in range(4))
        if mac not in used:
            return mac


def _used_macs(engine, but: dict | None = None) -> dict[str, str]:
    out = {}
    for vm in engine.store.list("vm", lambda v: but is None or v["id"] != but["id"]):
        for n in vm.get("nics", []):
            out[n["mac"]] = vm["name"]
    return out


def check_mac_free(engine, mac: str, vm: dict, nic_id: str | None = None) -> None:
    """409 when another NIC (of any VM, or another NIC of ``vm``) has ``mac``,
    as the engine refuses duplicates in its MAC pool."""
    owner = _used_macs(engine, but=vm).get(mac)
    if owner is None and any(n["mac"] == mac and n["id"] != nic_id
                             for n in vm.get("nics", [])):
        owner = vm["name"]
    if owner is not None:
        raise conflict("add NIC", f"MAC Address {mac} is already in use by VM {owner}.")


def profiles(engine, network_id: str) -> list[dict]:
    return [p for p in engine.store.list("vnic_profile") if p["network_id"] == network_id]
