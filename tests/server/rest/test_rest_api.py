"""The REST API's contract: auth, formats, faults (status code + text) and
the ImageTransfer state machine's error paths, over raw HTTPS."""

from __future__ import annotations

import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pytest

from helpers import (ENGINE_PASSWORD, MiB, api_json, api_request, make_pattern_image,
                     put_file, qemu_img, wait_for)
from imagetool.server.local import LocalEngine
from imagetool.server.rest import imagetransfers
from imagetool.server.rest.router import Router
from imagetool.server.rest.routes import ROUTES


def xml(body: bytes) -> ET.Element:
    return ET.fromstring(body)


def fault(status_body):
    status, _, body = status_body
    root = xml(body)
    assert root.tag == "fault"
    return status, root.findtext("reason"), root.findtext("detail")


def add_disk_xml(engine, name, fmt="raw", size=MiB, sd="data", extra=""):
    body = (f"<disk><name>{name}</name><format>{fmt}</format>"
            f"<provisioned_size>{size}</provisioned_size>{extra}"
            f"<storage_domains><storage_domain><name>{sd}</name></storage_domain>"
            f"</storage_domains></disk>")
    return api_request(engine, "POST", "disks", body, {"Content-Type": "application/xml"})


def new_disk(engine, name, fmt="raw", size=MiB, extra=""):
    status, _, body = add_disk_xml(engine, name, fmt, size, extra=extra)
    assert status == 201, body
    return xml(body).get("id")


def add_transfer(engine, disk_id, direction="upload", fmt="raw", extra=""):
    body = (f'<image_transfer><disk id="{disk_id}"/><direction>{direction}</direction>'
            f"<format>{fmt}</format>{extra}</image_transfer>")
    status, _, reply = api_request(engine, "POST", "imagetransfers", body,
                                   {"Content-Type": "application/xml"})
    assert status == 201, reply
    tid = xml(reply).get("id")
    return wait_transfer(engine, tid, ("transferring",))


def get_transfer(engine, tid):
    status, body = api_json(engine, "GET", f"imagetransfers/{tid}")
    assert status == 200, body
    return body


def wait_transfer(engine, tid, phases, timeout=20):
    return wait_for(lambda: get_transfer(engine, tid), lambda t: t["phase"] in phases, timeout)


def action(engine, tid, name, body="<action/>"):
    return api_request(engine, "POST", f"imagetransfers/{tid}/{name}", body,
                       {"Content-Type": "application/xml"})


def dataplane_status(engine, url, method="OPTIONS"):
    import http.client
    import ssl
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port,
                                       context=ssl.create_default_context(cafile=engine.cafile))
    try:
        conn.request(method, parts.path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def disk_status(engine, disk_id):
    status, body = api_json(engine, "GET", f"disks/{disk_id}")
    return body.get("status") if status == 200 else status


# --- auth ------------------------------------------------------------------

def test_no_credentials_is_401_with_fault(engine):
    status, headers, body = api_request(engine, "GET", "disks", auth=False)
    assert status == 401
    assert headers["www-authenticate"].startswith("Basic")
    assert xml(body).findtext("reason") == "Unauthorized"


def test_sso_token_bearer_and_logout(engine):
    form = urlencode({"grant_type": "password", "scope": "ovirt-app-api",
                      "username": "admin@internal", "password": ENGINE_PASSWORD})
    status, headers, body = api_request(
        engine, "POST", "/ovirt-engine/sso/oauth/token", form,
        {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        auth=False)
    assert status == 200 and headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["token_type"] == "bearer" and int(doc["exp"]) > time.time() * 1000
    bearer = {"Authorization": f"Bearer {doc['access_token']}"}
    assert api_request(engine, "GET", "", headers=bearer, auth=False)[0] == 200
    api_request(engine, "POST", "/ovirt-engine/services/sso-logout",
                urlencode({"scope": "ovirt-app-api", "token": doc["access_token"]}),
                {"Content-Type": "application/x-www-form-urlencoded"}, auth=False)
    assert api_request(engine, "GET", "", headers=bearer, auth=False)[0] == 401


def test_sso_wrong_password(engine):
    form = urlencode({"grant_type": "password", "scope": "ovirt-app-api",
                      "username": "admin@internal", "password": "wrong"})
    _, _, body = api_request(engine, "POST", "/ovirt-engine/sso/oauth/token", form,
                             {"Content-Type": "application/x-www-form-urlencoded"}, auth=False)
    doc = json.loads(body)
    assert doc["error_code"] == "access_denied" and "Cannot authenticate" in doc["error"]


@pytest.mark.slow
def test_tokens_expire(tmp_path):
    with LocalEngine(str(tmp_path), tls=False, password="p", token_lifetime=0.5) as eng:
        token, _ = eng.server.auth.issue()
        code, _, _ = eng.server.handle("GET", "/ovirt-engine/api",
                                       {"authorization": f"Bearer {token}"}, b"")
        assert code == 200
        time.sleep(0.7)
        code, _, body = eng.server.handle("GET", "/ovirt-engine/api",
                                          {"authorization": f"Bearer {token}"}, b"")
        assert code == 401 and b"Authentication required" in body


def test_health_page_needs_no_auth(engine):
    status, _, body = api_request(engine, "GET", "/ovirt-engine/services/health", auth=False)
    assert status == 200 and b"DB Up" in body


def test_pki_resource_serves_the_ca(engine):
    status, headers, body = api_request(
        engine, "GET",
        "/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA",
        auth=False)
    assert status == 200
    with open(engine.cafile, "rb") as f:
        assert body == f.read()
    assert body.startswith(b"-----BEGIN CERTIFICATE-----")


# --- documents and formats --------------------------------------------------

def test_root_document_and_v4(engine):
    for path in ("/ovirt-engine/api", "/ovirt-engine/api/v4"):
        status, _, body = api_request(engine, "GET", path, headers={"Version": "4"})
        assert status == 200
        root = xml(body)
        assert root.tag == "api"
        assert root.findtext("product_info/version/major") == "4"
        assert int(root.findtext("product_info/version/minor")) >= 4
        rels = {link.get("rel") for link in root.findall("link")}
        assert {"disks", "storagedomains", "imagetransfers", "hosts", "vms", "jobs"} <= rels
        assert all(link.get("href").startswith(path) for link in root.findall("link"))


def test_json_collection_keyed_by_singular(engine):
    status, body = api_json(engine, "GET", "storagedomains")
    assert status == 200
    names = sorted(sd["name"] for sd in body["storage_domain"])
    assert names == ["data", "export"]
    sd = body["storage_domain"][0]
    assert sd["href"].endswith(sd["id"])


def test_xml_entity_shape(engine):
    disk_id = new_disk(engine, "shape")
    status, headers, body = api_request(engine, "GET", f"disks/{disk_id}")
    assert status == 200 and headers["content-type"].startswith("application/xml")
    root = xml(body)
    assert root.get("id") == disk_id and root.get("href").endswith(f"/disks/{disk_id}")
    assert root.findtext("format") == "raw" and root.findtext("status") == "ok"
    assert root.findtext("provisioned_size") == str(MiB)
    rels = {link.get("rel") for link in root.findall("actions/link")}
    assert {"copy", "move"} <= rels
    assert root.find("storage_domains/storage_domain").get("id")


def test_json_add_disk(engine):
    sds = api_json(engine, "GET", "storagedomains")[1]["storage_domain"]
    data_id = next(sd["id"] for sd in sds if sd["name"] == "data")
    status, body = api_json(engine, "POST", "disks", {
        "name": "json-disk", "format": "cow", "provisioned_size": 2 * MiB,
        "storage_domains": {"storage_domain": [{"id": data_id}]}})
    assert status == 201, body
    assert body["format"] == "cow" and body["provisioned_size"] == str(2 * MiB)


def test_search_and_max(engine):
    for i in range(3):
        new_disk(engine, f"findme-{i}")
    status, body = api_json(engine, "GET", "disks?search=name%3Dfindme-*")
    assert sorted(d["name"] for d in body["disk"]) == ["findme-0", "findme-1", "findme-2"]
    status, body = api_json(engine, "GET", "disks?search=name%3Dfindme-*&max=2")
    assert len(body["disk"]) == 2


# --- faults -------------------------------------------------------------------

def test_bad_xml_is_400(engine):
    status, reason, detail = fault(api_request(engine, "POST", "disks", "<disk><name>x</disk>",
                                               {"Content-Type": "application/xml"}))
    assert status == 400 and "Cannot parse XML" in detail


def test_bad_json_is_400(engine):
    resp = api_request(engine, "POST", "disks", "{not json",
                       {"Content-Type": "application/json", "Accept": "application/json"})
    assert resp[0] == 400
    assert "Cannot parse JSON" in json.loads(resp[2])["detail"]


def test_missing_fields_is_400(engine):
    status, reason, detail = fault(api_request(engine, "POST", "disks",
                                               "<disk><name>x</name></disk>",
                                               {"Content-Type": "application/xml"}))
    assert status == 400 and reason == "Incomplete parameters"
    assert "provisionedSize" in detail and "format" in detail


def test_bad_enum_and_integer_are_400(engine):
    status, _, detail = fault(add_disk_xml(engine, "x", fmt="vmdk"))
    assert status == 400 and "vmdk" in detail
    status, _, detail = fault(api_request(
        engine, "POST", "disks", "<disk><format>raw</format><provisioned_size>big"
        "</provisioned_size></disk>", {"Content-Type": "application/xml"}))
    assert status == 400 and "not an integer" in detail


def test_unknown_storage_domain_is_404(engine):
    status, _, detail = fault(add_disk_xml(engine, "x", sd="nope"))
    assert status == 404 and "storage domain 'nope'" in detail


def test_disk_on_export_domain_is_409(engine):
    status, _, detail = fault(add_disk_xml(engine, "x", sd="export"))
    assert status == 409 and "export domain" in detail


def test_unknown_entity_path_and_unimplemented_service(engine):
    status, _, detail = fault(api_request(engine, "GET", "disks/0000"))
    assert status == 400 and detail == "Invalid disk id '0000': ids are UUIDs"
    missing_id = "00000000-0000-0000-0000-00000000abcd"
    status, _, detail = fault(api_request(engine, "GET", f"disks/{missing_id}"))
    assert status == 404 and missing_id in detail
    status, _, detail = fault(api_request(engine, "GET", "nosuchthing"))
    assert status == 404
    status, reason, detail = fault(api_request(engine, "GET", "vmpools"))
    assert status == 501 and "vmpools" in detail
    status, reason, detail = fault(api_request(engine, "GET", "disks/x/permissions"))
    assert status == 501 and "permissions" in detail
    status, reason, detail = fault(api_request(engine, "POST", "disks/x/reduce", "<action/>"))
    assert status == 501 and "reduce" in detail


def test_route_table_rows_are_unique_and_every_transfer_action_is_routed():
    # routes.py is the one table of the REST API: a repeated (method, path)
    # row would be dead (the first wins), and every action the transfer
    # entity links to must reach its own handler.
    rows = [(method, path) for method, path, _ in ROUTES]
    assert len(rows) == len(set(rows))
    router = Router(ROUTES)
    tid = "00000000-0000-0000-0000-00000000abcd"
    for name in imagetransfers.ACTIONS:
        handler, params = router.route("POST", f"/imagetransfers/{tid}/{name}")
        assert handler.__name__ == f"{name}_transfer" and params == {"tid": tid}


def test_router_name_tables_have_no_duplicates():
    # The tables of unimplemented services and actions are set literals: a
    # name written twice collapses silently, hiding a typo for another name.
    # Read from the source, as the running set cannot show it.
    import ast

    from imagetool.server.rest import router as router_mod
    tree = ast.parse(open(router_mod.__file__).read())
    tables = {node.targets[0].id: node.value for node in tree.body
              if isinstance(node, ast.Assign) and isinstance(node.value, ast.Set)}
    assert {"_UNIMPLEMENTED", "_PARENTS", "_SUBS", "_ACTIONS"} <= set(tables)
    for name, literal in tables.items():
        names = [ast.literal_eval(e) for e in literal.elts]
        assert len(names) == len(set(names)), \
            f"{name}: {sorted(n for n in names if names.count(n) > 1)}"


def test_locked_disk_refuses_conflicting_operations(engine):
    disk_id = new_disk(engine, "locked")
    t = add_transfer(engine, disk_id)
    assert disk_status(engine, disk_id) == "locked"
    status, _, detail = fault(api_request(engine, "DELETE", f"disks/{disk_id}"))
    assert status == 409 and "is locked" in detail
    status, _, detail = fault(api_request(engine, "PUT", f"disks/{disk_id}",
                                          "<disk><name>renamed</name></disk>",
                                          {"Content-Type": "application/xml"}))
    assert status == 409 and "is locked" in detail
    status, _, detail = fault(api_request(
        engine, "POST", "imagetransfers", f'<image_transfer><disk id="{disk_id}"/>'
        "<direction>download</direction></image_transfer>", {"Content-Type": "application/xml"}))
    assert status == 409 and "is locked" in detail
    assert action(engine, t["id"], "cancel")[0] == 200
    wait_transfer(engine, t["id"], ("finished_failure",))


def test_actions_in_wrong_phase_are_409(engine):
    disk_id = new_disk(engine, "phases")
    t = add_transfer(engine, disk_id, direction="download")
    status, _, detail = fault(action(engine, t["id"], "resume"))
    assert status == 409 and "phase transferring" in detail
    status, _, detail = fault(action(engine, t["id"], "pause"))
    assert status == 409 and "download" in detail
    assert action(engine, t["id"], "finalize")[0] == 200
    wait_transfer(engine, t["id"], ("finished_success",))
    status, _, detail = fault(action(engine, t["id"], "finalize"))
    assert status == 409 and "finished_success" in detail
    assert disk_status(engine, disk_id) == "ok"


def test_action_reply_shape(engine):
    disk_id = new_disk(engine, "extend")
    t = add_transfer(engine, disk_id)
    status, _, body = action(engine, t["id"], "extend")
    assert status == 200
    root = xml(body)
    assert root.tag == "action" and root.findtext("status") == "complete"
    assert root.find("image_transfer").get("id") == t["id"]
    assert root.findtext("image_transfer/phase") == "transferring"
    action(engine, t["id"], "cancel")
    wait_transfer(engine, t["id"], ("finished_failure",))


def test_pause_resume_upload(engine, tmp_path):
    disk_id = new_disk(engine, "pause", size=4 * MiB)
    t = add_transfer(engine, disk_id)
    assert action(engine, t["id"], "pause")[0] == 200
    assert get_transfer(engine, t["id"])["phase"] == "paused_user"
    src = make_pattern_image(str(tmp_path / "src.raw"), "raw")
    assert dataplane_status(engine, t["transfer_url"]) == 403   # refused while paused
    assert action(engine, t["id"], "resume")[0] == 200
    t = wait_transfer(engine, t["id"], ("transferring",))
    put_file(t["transfer_url"], engine.cafile, src)
    t = get_transfer(engine, t["id"])
    assert action(engine, t["id"], "finalize")[0] == 200
    t = wait_transfer(engine, t["id"], ("finished_success", "finished_failure"))
    assert t["phase"] == "finished_success"
    assert int(t["transferred"]) >= 4 * MiB
    assert disk_status(engine, disk_id) == "ok"


def test_cancel_upload_removes_disk(engine):
    disk_id = new_disk(engine, "cancelled")
    t = add_transfer(engine, disk_id)
    assert action(engine, t["id"], "cancel")[0] == 200
    wait_transfer(engine, t["id"], ("finished_failure",))
    assert disk_status(engine, disk_id) == 404


def _upload_cow_file(engine, tmp_path, path, size=4 * MiB, initial=8 * MiB):
    disk_id = new_disk(engine, "verify", fmt="cow", size=size,
                       extra=f"<initial_size>{initial}</initial_size>")
    t = add_transfer(engine, disk_id, fmt="cow")
    put_file(t["transfer_url"], engine.cafile, path)
    assert action(engine, t["id"], "finalize")[0] == 200
    t = wait_transfer(engine, t["id"], ("finished_success", "finished_failure"))
    return disk_id, t


def test_finalize_rejects_qcow2_with_backing_file(engine, tmp_path):
    base = make_pattern_image(str(tmp_path / "base.qcow2"), "qcow2")
    top = str(tmp_path / "top.qcow2")
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    disk_id, t = _upload_cow_file(engine, tmp_path, top)
    assert t["phase"] == "finished_failure"
    assert disk_status(engine, disk_id) == 404   # illegal, then removed


def test_finalize_rejects_corrupt_qcow2(engine, tmp_path):
    path = make_pattern_image(str(tmp_path / "bad.qcow2"), "qcow2")
    with open(path, "r+b") as f:
        f.seek(40)                       # l1_table_offset -> far past the end
        f.write((1 << 50).to_bytes(8, "big"))
    assert subprocess.run(["qemu-img", "check", path], capture_output=True).returncode != 0
    disk_id, t = _upload_cow_file(engine, tmp_path, path)
    assert t["phase"] == "finished_failure"
    assert disk_status(engine, disk_id) == 404


def test_finalize_rejects_raw_bytes_in_cow_disk(engine, tmp_path):
    path = make_pattern_image(str(tmp_path / "plain.raw"), "raw")
    disk_id, t = _upload_cow_file(engine, tmp_path, path)
    assert t["phase"] == "finished_failure"
    assert disk_status(engine, disk_id) == 404


def test_finalize_rejects_qcow2_larger_than_disk(engine, tmp_path):
    path = make_pattern_image(str(tmp_path / "big.qcow2"), "qcow2", size=8 * MiB)
    disk_id, t = _upload_cow_file(engine, tmp_path, path, size=4 * MiB)
    assert t["phase"] == "finished_failure"


@pytest.mark.slow
@pytest.mark.parametrize("policy,direction,expected", [
    ("cancel", "upload", "finished_failure"),
    ("legacy", "upload", "paused_system"),
    ("legacy", "download", "finished_failure"),
    ("pause", "download", "paused_system"),
])
def test_inactivity_timeout_policy(engine, policy, direction, expected):
    disk_id = new_disk(engine, f"idle-{policy}-{direction}")
    t = add_transfer(engine, disk_id, direction=direction,
                     extra=f"<inactivity_timeout>1</inactivity_timeout>"
                           f"<timeout_policy>{policy}</timeout_policy>")
    t = wait_transfer(engine, t["id"], (expected,), timeout=10)
    assert t["timeout_policy"] == policy
    if expected == "paused_system":
        assert disk_status(engine, disk_id) == "locked"
        assert action(engine, t["id"], "cancel")[0] == 200
        wait_transfer(engine, t["id"], ("finished_failure",))
    elif direction == "upload":
        assert disk_status(engine, disk_id) == 404
    else:
        assert disk_status(engine, disk_id) == "ok"


@pytest.mark.slow
def test_finished_transfers_expire(tmp_path):
    with LocalEngine(str(tmp_path), password=ENGINE_PASSWORD, finished_ttl=0.5) as eng:
        disk_id = new_disk(eng, "ttl")
        t = add_transfer(eng, disk_id, direction="download")
        action(eng, t["id"], "finalize")
        wait_transfer(eng, t["id"], ("finished_success",))
        assert api_json(eng, "GET", "imagetransfers")[1]["image_transfer"]
        wait_for(lambda: api_json(eng, "GET", f"imagetransfers/{t['id']}")[0],
                 lambda code: code == 404, timeout=5)


def test_disk_update_copy_move_remove(engine, tmp_path):
    disk_id = new_disk(engine, "ops", fmt="cow", size=MiB)
    status, _, body = api_request(engine, "PUT", f"disks/{disk_id}",
                                  f"<disk><name>renamed</name><provisioned_size>{2 * MiB}"
                                  "</provisioned_size></disk>",
                                  {"Content-Type": "application/xml"})
    assert status == 200, body
    assert xml(body).findtext("name") == "renamed"
    assert xml(body).findtext("provisioned_size") == str(2 * MiB)
    sd = xml(body).find("storage_domains/storage_domain").get("id")
    vol = f"{engine.data_dir}/{sd}/images/{disk_id}/{xml(body).findtext('image_id')}"
    info = json.loads(qemu_img("info", "--output=json", vol))
    assert info["virtual-size"] == 2 * MiB

    status, _, body = api_request(engine, "POST", f"disks/{disk_id}/copy",
                                  "<action><storage_domain><name>data</name></storage_domain>"
                                  "<disk><name>the-copy</name></disk></action>",
                                  {"Content-Type": "application/xml"})
    assert status == 200, body
    copy = xml(body).find("disk")
    assert copy.findtext("name") == "the-copy" and copy.get("id") != disk_id
    status, _, body = api_request(engine, "POST", f"disks/{disk_id}/move",
                                  "<action><storage_domain><name>export</name>"
                                  "</storage_domain></action>",
                                  {"Content-Type": "application/xml"})
    assert status == 409
    assert api_request(engine, "DELETE", f"disks/{disk_id}")[0] == 200
    assert disk_status(engine, disk_id) == 404
    status, body = api_json(engine, "GET", "jobs")
    assert any("Copying Disk" in j["description"] for j in body["job"])


def test_transfer_records_a_job(engine):
    disk_id = new_disk(engine, "job-disk")
    t = add_transfer(engine, disk_id, direction="download")
    jobs = api_json(engine, "GET", "jobs")[1]["job"]
    job = next(j for j in jobs if j["description"] == "Downloading image of disk job-disk")
    assert job["status"] == "started"
    action(engine, t["id"], "finalize")
    wait_transfer(engine, t["id"], ("finished_success",))
    job = api_json(engine, "GET", f"jobs/{job['id']}")[1]
    assert job["status"] == "finished" and job["end_time"]
    steps = api_json(engine, "GET", f"jobs/{job['id']}/steps")[1]["step"]
    assert steps[0]["status"] == "finished"


def test_default_data_center_and_cluster(connection):
    system = connection.system_service()
    dcs = system.data_centers_service().list(search="storage.name=data")
    assert [dc.name for dc in dcs] == ["Default"]
    assert system.data_centers_service().list(search="storage.name=nope") == []
    clusters = system.clusters_service().list(search="name=Default")
    assert clusters[0].data_center.id == dcs[0].id


def test_download_ticket_is_read_only_and_sized_to_the_disk(engine):
    disk_id = new_disk(engine, "ro", size=MiB)
    t = add_transfer(engine, disk_id, direction="download")
    assert dataplane_status(engine, t["transfer_url"], "PUT") == 403
    import http.client
    import ssl
    from urllib.parse import urlsplit
    parts = urlsplit(t["transfer_url"])
    conn = http.client.HTTPSConnection(parts.hostname, parts.port,
                                       context=ssl.create_default_context(cafile=engine.cafile))
    conn.request("GET", parts.path, headers={"Range": f"bytes={MiB}-{MiB + 511}"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 416 and resp.getheader("Content-Range") == f"bytes */{MiB}"
    conn.close()
    action(engine, t["id"], "finalize")
    wait_transfer(engine, t["id"], ("finished_success",))
    # After finalize the ticket is gone: the URL is refused.
    assert dataplane_status(engine, t["transfer_url"]) == 403


def test_legacy_image_id_and_host_id(engine):
    disk_id = new_disk(engine, "legacy")
    disk = api_json(engine, "GET", f"disks/{disk_id}")[1]
    host = api_json(engine, "GET", "hosts")[1]["host"][0]
    assert host["name"] == "local" and host["status"] == "up"
    status, _, body = api_request(
        engine, "POST", "imagetransfers",
        f'<image_transfer><image id="{disk["image_id"]}"/><host id="{host["id"]}"/>'
        "<direction>download</direction></image_transfer>", {"Content-Type": "application/xml"})
    assert status == 201, body
    t = wait_transfer(engine, xml(body).get("id"), ("transferring",))
    assert t["disk"]["id"] == disk_id and t["host"]["id"] == host["id"]
    assert t["format"] == "cow" and t["transfer_url"] == t["proxy_url"]
    action(engine, t["id"], "finalize")
    wait_transfer(engine, t["id"], ("finished_success",))
    status, _, detail = fault(api_request(
        engine, "POST", "imagetransfers",
        '<image_transfer><disk id="00000000-0000-0000-0000-00000000abcd"/>'
        '<direction>download</direction></image_transfer>',
        {"Content-Type": "application/xml"}))
    assert status == 404 and "disk '00000000-0000-0000-0000-00000000abcd'" in detail
    status, reason, detail = fault(api_request(
        engine, "POST", "imagetransfers", "<image_transfer><direction>upload</direction>"
        "</image_transfer>", {"Content-Type": "application/xml"}))
    assert status == 400 and "disk.id|snapshot.id|image.id" in detail


def test_grow_beyond_qcow2_l1_table_is_409(engine):
    disk_id = new_disk(engine, "grow", fmt="cow", size=MiB)
    status, _, detail = fault(api_request(
        engine, "PUT", f"disks/{disk_id}",
        f"<disk><provisioned_size>{5 << 40}</provisioned_size></disk>",
        {"Content-Type": "application/xml"}))
    assert status == 409 and "cannot grow" in detail
    status, _, detail = fault(api_request(
        engine, "PUT", f"disks/{disk_id}", "<disk><provisioned_size>4096</provisioned_size></disk>",
        {"Content-Type": "application/xml"}))
    assert status == 409 and "cannot be reduced" in detail


def test_preallocated_raw_disk_is_allocated(engine):
    sparse_id = new_disk(engine, "sparse", size=4 * MiB)
    full_id = new_disk(engine, "prealloc", size=4 * MiB, extra="<sparse>false</sparse>")
    sparse = api_json(engine, "GET", f"disks/{sparse_id}")[1]
    full = api_json(engine, "GET", f"disks/{full_id}")[1]
    assert full["sparse"] == "false" and int(full["actual_size"]) >= 4 * MiB
    assert int(sparse["actual_size"]) < MiB


@pytest.mark.slow
def test_transfer_reports_active_while_a_client_is_connected(engine):
    import http.client
    import ssl
    from urllib.parse import urlsplit
    disk_id = new_disk(engine, "active")
    t = add_transfer(engine, disk_id, direction="download")
    assert t["active"] == "false"
    parts = urlsplit(t["transfer_url"])
    conn = http.client.HTTPSConnection(parts.hostname, parts.port,
                                       context=ssl.create_default_context(cafile=engine.cafile))
    conn.request("GET", parts.path, headers={"Range": "bytes=0-4095"})
    resp = conn.getresponse()
    assert resp.status == 206 and len(resp.read()) == 4096
    # The counter is updated once the reply is sent: wait for both facts.
    got = wait_for(lambda: get_transfer(engine, t["id"]),
                   lambda x: x["active"] == "true" and x["transferred"] == "4096", 30)
    assert (got["active"], int(got["transferred"])) == ("true", 4096)
    conn.close()
    wait_for(lambda: get_transfer(engine, t["id"]), lambda x: x["active"] == "false", 5)
    action(engine, t["id"], "finalize")
    wait_transfer(engine, t["id"], ("finished_success",))


def test_a_disk_copy_whose_rows_fail_leaves_no_files(engine, monkeypatch):
    """A copy written whole but never listed (the store refuses its row, as
    a full disk makes SQLite do) is removed with the failed transaction."""
    import sqlite3

    from imagetool.server.store import Store

    disk_id = new_disk(engine, "copy-rows", size=MiB)
    sd_dir = os.path.join(engine.data_dir, api_json(engine, "GET", f"disks/{disk_id}")[1]
                          ["storage_domains"]["storage_domain"][0]["id"], "images")
    before = sorted(os.listdir(sd_dir))
    put = Store.put

    def refuse_disks(store, kind, row):
        if kind == "disk":
            raise sqlite3.OperationalError("database or disk is full")
        return put(store, kind, row)

    monkeypatch.setattr(Store, "put", refuse_disks)
    status, _, _ = api_request(engine, "POST", f"disks/{disk_id}/copy",
                               "<action><storage_domain><name>data</name></storage_domain>"
                               "</action>", {"Content-Type": "application/xml"})
    monkeypatch.undo()
    assert status >= 400
    assert sorted(os.listdir(sd_dir)) == before
