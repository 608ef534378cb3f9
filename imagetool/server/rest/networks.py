"""Networks and vNIC profiles (oVirt REST API guide: Networks, Network,
VnicProfiles, VnicProfile); the rules are ``server/domain/networks.py``'s."""

from __future__ import annotations

from imagetool.server.domain import inventory, networks
from imagetool.server.rest.common import ref, stored
from imagetool.server.rest.router import Reply, Request


# --- representations and services ----------------------------------------------

def network_repr(req: Request, net: dict) -> dict:
    base = req.href("networks", net["id"])
    return {"href": base, "id": net["id"], "name": net["name"],
            "description": net.get("description") or None,
            "link": [{"href": f"{base}/vnicprofiles", "rel": "vnicprofiles"}],
            "data_center": ref(req, "datacenters", req.engine.datacenter_id),
            "usages": ["vm"], "vlan": None, "mtu": 0, "stp": False}


def profile_repr(req: Request, prof: dict) -> dict:
    return {"href": req.href("vnicprofiles", prof["id"]), "id": prof["id"],
            "name": prof["name"], "pass_through": {"mode": "disabled"},
            "port_mirroring": False,
            "network": ref(req, "networks", prof["network_id"])}


list_networks, get_network = stored("network", "network", "network", network_repr,
                                    prepare=networks.ensure_default)


def list_network_profiles(req: Request, network_id: str) -> Reply:
    inventory.get(req.engine, "network", network_id, "network")
    return Reply(tag="vnic_profiles",
                 body=[profile_repr(req, p) for p in networks.profiles(req.engine, network_id)])


list_profiles, get_profile = stored("vnic_profile", "vNIC profile", "vnic_profile",
                                    profile_repr, prepare=networks.ensure_default)
