"""Networks and vNIC profiles (oVirt REST API guide: Networks, Network,
VnicProfiles, VnicProfile); the rules are ``server/domain/networks.py``'s."""

from __future__ import annotations

from imagetool.server.domain import inventory, networks
from imagetool.server.rest.common import get_stored, list_stored, ref
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


def list_networks(req: Request) -> Reply:
    networks.ensure_default(req.engine)
    return list_stored(req, "network", "networks", network_repr)


def get_network(req: Request, network_id: str) -> Reply:
    networks.ensure_default(req.engine)
    return get_stored(req, "network", network_id, "network", "network", network_repr)


def list_network_profiles(req: Request, network_id: str) -> Reply:
    inventory.get(req.engine, "network", network_id, "network")
    return Reply(tag="vnic_profiles",
                 body=[profile_repr(req, p) for p in networks.profiles(req.engine, network_id)])


def list_profiles(req: Request) -> Reply:
    networks.ensure_default(req.engine)
    return list_stored(req, "vnic_profile", "vnic_profiles", profile_repr)


def get_profile(req: Request, profile_id: str) -> Reply:
    networks.ensure_default(req.engine)
    return get_stored(req, "vnic_profile", profile_id, "vNIC profile", "vnic_profile",
                      profile_repr)
