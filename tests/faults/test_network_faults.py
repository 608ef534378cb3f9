"""Data-plane faults during uploads and downloads, through the fault proxy.

Each fault that keeps happening must end the command with a one-line
message and a non-zero exit code once the retries give up, leaving the
engine clean (transfer finished_failure, no disk locked, an upload's new
disk removed) and no file under a download's final name. A transient fault
that happens once (cut body, 500/503, slow reply) is retried
(imagetool.iocore.backends.RetryingBackend): the command succeeds with identical data. A
403 (ticket gone) is permanent and never retried.
"""

from __future__ import annotations

import logging
import random

import pytest

from fault_proxy import (CutRequestBody, CutResponseBody, Delay, DropConnection, Expire403,
                         Respond, Rule)
from helpers import (MiB, disks_named, make_random_raw, new_phases, no_partial_files,
                     same_image, wait_settled)

DATA_PATH = r"^/images/[^/?]+(\?|$)"     # data requests, not /extents or /checksum
SIZE = 8 * MiB


@pytest.fixture
def image(tmp_path):
    return make_random_raw(str(tmp_path / "src.raw"), SIZE, seed=7)


def upload(cli, image, name, *extra):
    return cli("upload", image, "--sd", "data", "--name", name, "--buffer-size", "1M",
               "--workers", "2", *extra)


def assert_upload_failed_clean(fe, name):
    """The transfer failed, nothing is locked, the new disk is gone."""
    assert new_phases(fe) == ["finished_failure"]
    assert disks_named(fe, name) == []


def uploaded_disk(fe, cli, tmp_path, image, name):
    """Download the disk ``name`` without faults and compare it with ``image``."""
    fe.proxy.clear_rules()
    out = str(tmp_path / f"{name}.check.raw")
    code, _, err = cli("download", name, out)
    assert code == 0, err
    assert same_image(image, out)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.slow
def test_put_body_cut_every_time(faulty_engine, cli, image, seed, fast_backoff):
    rnd = random.Random(seed)
    after = rnd.randrange(1, MiB)        # a random point inside each PUT body
    fe = faulty_engine
    fe.proxy.add_rule(Rule(method="PUT", path_re=DATA_PATH, skip=rnd.randrange(0, 4),
                           every=True, action=CutRequestBody(after=after)))
    name = f"cut-put-{seed}"
    code, out, err = upload(cli, image, name)
    assert code == 3, err
    assert "writing destination failed at offset" in err
    assert "connection closed by server" in err
    assert fe.proxy.stats.faults
    assert_upload_failed_clean(fe, name)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [4, 5])
def test_get_body_cut_every_time(faulty_engine, cli, tmp_path, image, seed, fast_backoff):
    fe = faulty_engine
    code, _, err = upload(cli, image, f"src-{seed}")
    assert code == 0, err
    rnd = random.Random(seed)
    after = rnd.randrange(1, MiB)
    fe.proxy.add_rule(Rule(method="GET", path_re=DATA_PATH, skip=rnd.randrange(0, 4),
                           every=True, action=CutResponseBody(after=after)))
    dest = tmp_path / "dl"
    dest.mkdir()
    final = str(dest / "out.raw")
    code, out, err = cli("download", f"src-{seed}", final, "--buffer-size", "1M")
    assert code == 3, err
    assert "reading source failed at offset" in err
    assert f"short reply ({after} of" in err
    assert no_partial_files(str(dest), final) == []
    assert new_phases(fe) == ["finished_failure", "finished_success"]
    assert [d.status for d in disks_named(fe, f"src-{seed}")] == ["ok"]


@pytest.mark.slow
@pytest.mark.parametrize("status,reason", [(500, "Internal Server Error"),
                                           (503, "Service Unavailable")])
def test_put_error_status_every_time(faulty_engine, cli, image, status, reason, fast_backoff):
    fe = faulty_engine
    fe.proxy.add_rule(Rule(method="PUT", path_re=DATA_PATH, skip=2, every=True,
                           action=Respond(status, "server trouble\n")))
    name = f"status-{status}"
    code, out, err = upload(cli, image, name)
    assert code == 1, err
    assert f"failed: {status} {reason}: server trouble" in err
    assert_upload_failed_clean(fe, name)


@pytest.mark.slow
def test_ticket_expired_mid_upload(faulty_engine, cli, image):
    """403 'No such ticket' is permanent: one fault stops the upload, even with
    retries, and the ticket id is not shown."""
    fe = faulty_engine
    fe.proxy.add_rule(Rule(method="PUT", path_re=DATA_PATH, nth=3, action=Expire403()))
    name = "expired"
    code, out, err = upload(cli, image, name)
    assert code == 1, err
    assert "403 Forbidden" in err and "No such ticket" in err
    hist = [target for method, target in fe.proxy.stats.history if method == "PUT"]
    ticket = hist[0].split("/images/")[1].split("?")[0]
    assert ticket not in err and ticket not in out
    assert len(fe.proxy.stats.faults) == 1
    assert_upload_failed_clean(fe, name)


def _short_read_timeout(monkeypatch) -> None:
    # The CLI has no read-timeout option: shorten the session's default (60 s).
    from imagetool.transfer.session import TransferSession
    original = TransferSession.open_backend
    monkeypatch.setattr(TransferSession, "open_backend",
                        lambda self, read_timeout=60.0: original(self, read_timeout=1.0))


@pytest.mark.slow
def test_download_reply_delayed_past_read_timeout_is_retried(faulty_engine, cli, tmp_path,
                                                             image, monkeypatch):
    fe = faulty_engine
    code, _, err = upload(cli, image, "slow-src")
    assert code == 0, err
    _short_read_timeout(monkeypatch)
    fe.proxy.add_rule(Rule(method="GET", path_re=DATA_PATH, nth=2, action=Delay(3.0)))
    final = str(tmp_path / "slow.raw")
    code, out, err = cli("download", "slow-src", final, "--buffer-size", "1M",
                         "--workers", "1")
    assert len(fe.proxy.stats.faults) == 1
    assert code == 0, err
    assert same_image(image, final)
    wait_settled(fe)


@pytest.mark.slow
def test_download_reply_delayed_every_time(faulty_engine, cli, tmp_path, image,
                                           monkeypatch, fast_backoff):
    """Every data reply slower than the read timeout: the download ends after
    its retries, leaving nothing under the final name."""
    fe = faulty_engine
    code, _, err = upload(cli, image, "slow-src-2")
    assert code == 0, err
    _short_read_timeout(monkeypatch)
    fe.proxy.add_rule(Rule(method="GET", path_re=DATA_PATH, every=True, action=Delay(1.5)))
    final = str(tmp_path / "slow.raw")
    code, out, err = cli("download", "slow-src-2", final, "--buffer-size", "1M",
                         "--workers", "1")
    assert code == 3, err
    assert "reading source failed at offset 0" in err
    assert "The read operation timed out" in err
    assert no_partial_files(str(tmp_path), final) == []
    assert new_phases(fe) == ["finished_failure", "finished_success"]


@pytest.mark.slow
def test_upload_reply_delayed_past_read_timeout_is_retried(faulty_engine, cli, tmp_path,
                                                           image, monkeypatch):
    fe = faulty_engine
    _short_read_timeout(monkeypatch)
    fe.proxy.add_rule(Rule(method="PUT", path_re=DATA_PATH, nth=2, action=Delay(3.0)))
    code, out, err = upload(cli, image, "slow-put", "--workers", "1")
    assert code == 0, err
    assert len(fe.proxy.stats.faults) == 1
    uploaded_disk(fe, cli, tmp_path, image, "slow-put")


# --- transient faults happening once: retried -----------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12])
def test_put_body_cut_once_is_retried(faulty_engine, cli, tmp_path, image, seed):
    rnd = random.Random(seed)
    fe = faulty_engine
    fe.proxy.add_rule(Rule(method="PUT", path_re=DATA_PATH, nth=rnd.randrange(1, 8),
                           action=CutRequestBody(after=rnd.randrange(1, MiB))))
    name = f"retried-put-{seed}"
    code, out, err = upload(cli, image, name)
    assert code == 0, err
    assert len(fe.proxy.stats.faults) == 1
    uploaded_disk(fe, cli, tmp_path, image, name)


@pytest.mark.slow
@pytest.mark.parametrize("resume", [True, False])
def test_get_body_cut_once_is_retried(faulty_engine, cli, tmp_path, image, resume):
    fe = faulty_engine
    code, _, err = upload(cli, image, f"retried-get-src-{resume}")
    assert code == 0, err
    fe.proxy.add_rule(Rule(method="GET", path_re=DATA_PATH, nth=3,
                           action=CutResponseBody(after=12345)))
    final = str(tmp_path / "retried.raw")
    code, out, err = cli("download", f"retried-get-src-{resume}", final, "--buffer-size",
                         "1M", *(["--resume"] if resume else []))
    assert code == 0, err
    assert len(fe.proxy.stats.faults) == 1
    assert same_image(image, final)


@pytest.mark.slow
@pytest.mark.parametrize("status", [500, 503])
def test_put_error_status_once_is_retried(faulty_engine, cli, tmp_path, image, status):
    fe = faulty_engine
    fe.proxy.add_rule(Rule(method="PUT", path_re=DATA_PATH, nth=2,
                           action=Respond(status, "try again\n")))
    name = f"retried-{status}"
    code, out, err = upload(cli, image, name)
    assert code == 0, err
    assert len(fe.proxy.stats.faults) == 1
    uploaded_disk(fe, cli, tmp_path, image, name)


@pytest.mark.slow
def test_ticket_expires_after_inactivity(faulty_engine, cli, image, caplog):
    """A PUT reply held 4 s while the keep-alive pings are dropped: the
    engine's inactivity timeout (1 s, policy cancel) ends the transfer. The
    client says so in one line, without a warning about cancelling a transfer
    the engine already ended."""
    fe = faulty_engine
    fe.proxy.add_rule(Rule(method="OPTIONS", path_re=r"^/images/", skip=1, every=True,
                           action=DropConnection()))
    fe.proxy.add_rule(Rule(method="PUT", path_re=DATA_PATH, nth=2, action=Delay(4.0)))
    name = "idle-expired"
    code, out, err = upload(cli, image, name, "--workers", "1", "--timeout-policy", "cancel",
                            "--inactivity-timeout", "1")
    assert code == 1, err
    assert err.strip() == (f"imagetool: error: {image}: upload of {image} stopped: the "
                           "engine moved the transfer to phase finished_failure")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("imagetool")], caplog.text
    assert new_phases(fe) == ["finished_failure"]
    assert disks_named(fe, name) == []


@pytest.mark.slow
def test_restore_retries_a_put_cut_once(faulty_engine, tmp_path, image):
    """A backup restore sends through the one disk transfer, so a PUT cut
    once is retried as an upload's is (restore used to fail on it)."""
    from imagetool.backup import backup_vm, restore_vm
    from imagetool.transfer.download import download_disk
    from imagetool.transfer.upload import upload_disk

    fe = faulty_engine
    with fe.connect() as conn:
        vm = conn.vms.add(name="restore-retried")
        disk = upload_disk(conn, image, "data", name="restore-retried-d0", disk_format="qcow2")
        conn.vms.attach_disk(vm.id, disk.id, bootable=True)
        repo = str(tmp_path / "repo")
        backup_vm(conn, vm.id, repo, method="snapshot")
        fe.proxy.add_rule(Rule(method="PUT", path_re=DATA_PATH, nth=1,
                               action=CutRequestBody(after=12345)))
        got = restore_vm(conn, repo, vm.id, storage_domain="data", name="restored-retried")
        assert len(fe.proxy.stats.faults) == 1
    fe.proxy.clear_rules()
    out = str(tmp_path / "restored.raw")
    with fe.connect() as conn:
        download_disk(conn, got.disks[0].disk_id, out)
    assert same_image(image, out)
