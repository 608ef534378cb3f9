"""End-to-end verification of uploads and downloads, and ``checksum --disk``.

The engine is the local engine (in-process, TLS) with a FaultProxy in front
of its data plane (``faulty_engine`` in tests/conftest.py), so the tests see
every data-plane request and can falsify the server's answers. Expected checksums
come from the reference client (``ovirt_imageio.client.checksum``).
"""

from __future__ import annotations

import glob
import json
import os
import re

import pytest

from fault_proxy import Respond, Rule
from helpers import MiB, make_random_raw, no_partial_files, qemu_img, wait_settled

ovirt_client = pytest.importorskip("ovirt_imageio.client")

CHECKSUM_PATH = r"^/images/[^/?]+/checksum(\?|$)"
WRONG = "0123456789abcdef" * 4
WRONG_REPLY = json.dumps({"algorithm": "blake2b", "block_size": 4 * MiB,
                          "checksum": WRONG})


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """6 MiB raw: data in MiB 0, 2, 4 (holes between); its qcow2 twin."""
    d = tmp_path_factory.mktemp("verify-images")
    raw = make_random_raw(str(d / "src.raw"), 6 * MiB, seed=5, every=2)
    qcow2 = str(d / "src.qcow2")
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, qcow2)
    return {"raw": raw, "qcow2": qcow2, "dir": str(d)}


def _checksum_requests(fe) -> list[str]:
    """The checksum GETs (not the algorithm lists) that reached the proxy."""
    return [t for m, t in fe.proxy.stats.history
            if re.search(r"/checksum(\?|$)", t)]


def _disks(fe, name):
    with fe.connect() as conn:
        return [d for d in conn.disks.list() if d.name == name]


def _reference(path: str, algorithm: str = "blake2b") -> str:
    return ovirt_client.checksum(path, algorithm=algorithm)["checksum"]


def _reference_in(path: str, text: str) -> bool:
    """The reference checksum of ``path`` (either candidate algorithm) is in ``text``."""
    return any(_reference(path, a) in text for a in ("sha256", "blake2b"))


def _file_bytes_reference(path: str, algorithm: str) -> str:
    """The reference hasher over a file's own bytes (no format probing)."""
    from ovirt_imageio._internal import blkhash
    size = 32 if algorithm.startswith("blake2") else None
    return blkhash.checksum(path, algorithm=algorithm, digest_size=size)["checksum"]


# --- verification on (the default) -----------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_upload_then_download_verified(faulty_engine, cli, image, tmp_path, fmt):
    src = image[fmt]
    name = f"verified-{fmt}"
    code, out, err = cli("upload", src, "--sd", "data", "--name", name, "--json")
    assert code == 0, err
    res = json.loads(out)[0]
    assert res["verified"] is True
    alg = res["checksum"]["algorithm"]
    assert alg in ("sha256", "blake2b")   # the faster one here
    ref = _reference(src, alg)
    assert res["checksum"] == {"algorithm": alg, "block_size": 4 * MiB,
                               "value": ref, "scope": "guest-data"}
    assert res["verify_method"] == "server-checksum"
    # The server was asked, while the ticket was alive.
    assert len(_checksum_requests(faulty_engine)) == 1
    assert _disks(faulty_engine, name)[0].status == "ok"

    faulty_engine.proxy.reset_stats()
    out_path = str(tmp_path / f"dl.{fmt}")
    code, out, err = cli("download", res["disk_id"], out_path, "--format", fmt, "--json")
    assert code == 0, err
    got = json.loads(out)[0]
    assert got["verified"] is True and got["checksum"]["value"] == ref
    assert _reference(out_path, alg) == ref
    assert len(_checksum_requests(faulty_engine)) == 1


@pytest.mark.slow
def test_text_output_says_verified(faulty_engine, cli, image):
    code, out, err = cli("upload", image["raw"], "--sd", "data", "--name", "text-v")
    assert code == 0, err
    m = re.search(r"verified: (\w+) block checksum (\w+) "
                  r"\(imagetool checksum --algorithm (\w+)\)", out)
    assert m and m.group(2) == _reference(image["raw"], m.group(1))
    # The command the line names gives the same value for the file.
    assert m.group(3) == m.group(1)
    code, out, _ = cli("checksum", "--json", "--algorithm", m.group(3), image["raw"])
    assert code == 0 and json.loads(out)["checksum"] == m.group(2)


def test_cow_transfer_of_qcow2_compares_volume_bytes(faulty_engine, cli, image):
    code, out, err = cli("upload", image["qcow2"], "--sd", "data", "--name", "cow-v",
                         "--transfer-format", "cow", "--json")
    assert code == 0, err
    res = json.loads(out)[0]
    assert res["verified"] is True and res["checksum"]["scope"] == "volume-bytes"
    assert res["verify_method"] == "server-checksum"


@pytest.mark.slow
def test_cow_transfer_falls_back_to_read_back(faulty_engine, cli, image):
    # The server's whole-volume checksum disagrees (as a block volume's old
    # tail would make it): the file's extent is read back and compared.
    faulty_engine.proxy.add_rule(Rule(method="GET", path_re=CHECKSUM_PATH,
                               action=Respond(200, WRONG_REPLY)))
    code, out, err = cli("upload", image["qcow2"], "--sd", "data", "--name", "cow-rb",
                         "--transfer-format", "cow", "--json")
    assert code == 0, err
    res = json.loads(out)[0]
    assert res["verified"] is True and res["verify_method"] == "read-back"
    # The qcow2 file's own bytes, hashed as a plain file by the reference.
    alg = res["checksum"]["algorithm"]
    assert res["checksum"]["value"] == _file_bytes_reference(image["qcow2"], alg)
    assert res["checksum"]["value"] != _reference(image["qcow2"], alg)
    assert _disks(faulty_engine, "cow-rb")[0].status == "ok"


@pytest.mark.slow
def test_server_without_checksum_feature_is_read_back(faulty_engine, cli, image):
    options = json.dumps({"features": ["extents", "zero", "flush"],
                          "max_readers": 8, "max_writers": 8})
    faulty_engine.proxy.add_rule(Rule(method="OPTIONS", action=Respond(
        200, options, headers={"Allow": "OPTIONS,GET,PUT,PATCH"})))
    code, out, err = cli("upload", image["raw"], "--sd", "data", "--name", "no-feature",
                         "--json")
    assert code == 0, err
    res = json.loads(out)[0]
    assert res["verified"] is True and res["verify_method"] == "read-back"
    assert res["checksum"]["value"] == _reference(image["raw"],
                                                  res["checksum"]["algorithm"])
    assert _checksum_requests(faulty_engine) == []
    # Read back: more bytes came down than the download of nothing would need.
    assert faulty_engine.proxy.stats.body_bytes_down >= 3 * MiB


# --- mismatches ----------------------------------------------------------------

def _assert_upload_not_kept(faulty_engine, name):
    wait_settled(faulty_engine)
    assert [d.status for d in _disks(faulty_engine, name) if d.status in ("ok", "locked")] == []


@pytest.mark.slow
def test_wrong_server_checksum_fails_upload(faulty_engine, cli, image):
    faulty_engine.proxy.add_rule(Rule(method="GET", path_re=CHECKSUM_PATH,
                               action=Respond(200, WRONG_REPLY)))
    code, out, err = cli("upload", image["raw"], "--sd", "data", "--name", "bad-sum")
    assert code == 1, err
    assert "checksum mismatch" in err
    assert _reference_in(image["raw"], err) and WRONG in err
    _assert_upload_not_kept(faulty_engine, "bad-sum")


@pytest.mark.slow
def test_corrupted_volume_fails_upload(faulty_engine, cli, image, monkeypatch):
    """The volume changes between the copy and the check: the real server
    checksum differs from the source's."""
    from imagetool.transfer import verify

    real = verify.remote_checksum
    data_dir = faulty_engine.engine.data_dir
    hit = []

    def corrupt_then_ask(backend, **kw):
        vols = [p for p in glob.glob(os.path.join(data_dir,
                                                  "**", "images", "*", "*"),
                                     recursive=True)
                if os.path.isfile(p) and not p.endswith((".meta", ".json", ".lease"))]
        newest = max(vols, key=os.path.getmtime)
        with open(newest, "r+b") as f:
            f.write(b"\xff" * 4096)
        hit.append(newest)
        return real(backend, **kw)

    monkeypatch.setattr(verify, "remote_checksum", corrupt_then_ask)
    code, out, err = cli("upload", image["raw"], "--sd", "data", "--name", "corrupt-vol")
    assert hit, "the hook did not run"
    assert code == 1, err
    assert "checksum mismatch" in err and _reference_in(image["raw"], err)
    _assert_upload_not_kept(faulty_engine, "corrupt-vol")


@pytest.mark.slow
def test_wrong_server_checksum_fails_download(faulty_engine, cli, image, tmp_path):
    code, out, err = cli("upload", image["raw"], "--sd", "data", "--name", "dl-bad",
                         "--json")
    assert code == 0, err
    disk_id = json.loads(out)[0]["disk_id"]
    faulty_engine.proxy.add_rule(Rule(method="GET", path_re=CHECKSUM_PATH,
                               action=Respond(200, WRONG_REPLY)))
    dest = tmp_path / "out"
    dest.mkdir()
    final = str(dest / "x.raw")
    code, out, err = cli("download", disk_id, final)
    assert code == 1, err
    assert "checksum mismatch" in err
    assert _reference_in(image["raw"], err) and WRONG in err
    assert no_partial_files(str(dest), final) == [] and os.listdir(dest) == []
    wait_settled(faulty_engine)
    assert _disks(faulty_engine, "dl-bad")[0].status == "ok"   # a download never harms the disk


# --- --no-verify ---------------------------------------------------------------

@pytest.mark.slow
def test_no_verify_asks_nothing(faulty_engine, cli, image, tmp_path):
    code, out, err = cli("upload", image["raw"], "--sd", "data", "--name", "nv",
                         "--no-verify", "--json")
    assert code == 0, err
    res = json.loads(out)[0]
    assert res["verified"] is False and res["checksum"] is None
    code, out, err = cli("download", res["disk_id"], str(tmp_path / "nv.raw"),
                         "--no-verify", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["verified"] is False
    assert _checksum_requests(faulty_engine) == []
    assert _reference(str(tmp_path / "nv.raw")) == _reference(image["raw"])


# --- checksum --disk --------------------------------------------------------------

@pytest.mark.slow
def test_checksum_disk_matches_file_and_reference(faulty_engine, cli, image):
    code, out, err = cli("upload", image["qcow2"], "--sd", "data", "--name", "sum-me",
                         "--no-verify", "--json")
    assert code == 0, err
    disk_id = json.loads(out)[0]["disk_id"]
    code, out, err = cli("checksum", "--json", image["qcow2"])
    assert code == 0, err
    local = json.loads(out)
    faulty_engine.proxy.reset_stats()
    for ref in ("sum-me", disk_id):
        code, out, err = cli("checksum", "--disk", ref, "--json")
        assert code == 0, err
        remote = json.loads(out)
        assert remote == dict(local, disk_id=disk_id)
    assert remote["checksum"] == _reference(image["qcow2"])
    assert len(_checksum_requests(faulty_engine)) == 2
    ts = [t for t in wait_settled(faulty_engine) if getattr(t, "disk_id", None) == disk_id]
    assert ts and all(t.phase == "finished_success" for t in ts if t.direction == "download")
    assert _disks(faulty_engine, "sum-me")[0].status == "ok"

    code, out, err = cli("checksum", "--disk", "sum-me", "-a", "sha256", "-b", "1M")
    assert code == 0, err
    assert out.split()[0] == ovirt_client.checksum(
        image["qcow2"], algorithm="sha256", block_size=MiB)["checksum"]


def test_checksum_disk_usage_errors(faulty_engine, cli, image):
    code, out, err = cli("checksum", image["raw"], "--disk", "x")
    assert code == 2 and "not both" in err
    code, out, err = cli("checksum", "--disk", "no-such-disk-here")
    assert code != 0 and "no-such-disk-here" in err
