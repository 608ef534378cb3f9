"""The upload/download workflows after their restructure: one inspection and
one open of the source per upload, options objects equal to keywords, the
session's resume options in its constructor, and the generic engine wait."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest

from imagetool.engine.wait import wait_until
from imagetool.errors import TimeoutExpired
import imagetool.formats as formats
from imagetool.transfer.download import DownloadOptions, download_disk
from imagetool.transfer.session import TransferSession
from imagetool.transfer.upload import UploadOptions, upload_disk, upload_disk_result
from helpers import MiB, images_equal

def _count_calls(monkeypatch, path: str) -> dict[str, int]:
    """Count calls on ``path`` of the formats entry points that inspect or
    open a file, wherever a module bound them (``from imagetool.formats
    import ...``); the in-process engine's own calls on its volumes are
    not counted."""
    detect_mod = sys.modules["imagetool.formats.detect"]
    originals = {"inspect": formats.inspect, "open_image": formats.open_image,
                 "detect": detect_mod.detect, "probe": detect_mod.probe}
    counts = dict.fromkeys(originals, 0)

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            if os.fspath(args[0]) == path:
                counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    wrappers = {name: counting(name, fn) for name, fn in originals.items()}
    for mod in list(sys.modules.values()):
        if not getattr(mod, "__name__", "").startswith("imagetool"):
            continue
        for name, fn in originals.items():
            if getattr(mod, name, None) is fn:
                monkeypatch.setattr(mod, name, wrappers[name])
    return counts


@pytest.mark.parametrize("kind", ["qcow2", "raw"])
@pytest.mark.slow
def test_upload_inspects_and_opens_the_source_once(own_conn, images, monkeypatch, kind):
    counts = _count_calls(monkeypatch, images[kind])
    disk = upload_disk(own_conn, images[kind], "data", name=f"once-{kind}")
    # One inspection (its probe of the magic included) and one open with
    # the format already known: no detection again.
    assert counts == {"inspect": 1, "open_image": 1, "detect": 0, "probe": 1}
    assert disk.status == "ok"
    monkeypatch.undo()
    out = os.path.join(os.path.dirname(images["raw"]), f"once-{kind}.out")
    download_disk(own_conn, disk, out)
    assert images_equal(images["raw"], out, "raw", "raw")


@pytest.mark.slow
def test_options_objects_and_keywords_are_one_thing(own_conn, images, module_dir):
    opts = UploadOptions(name="opts-a", workers=2, buffer_size=MiB)
    a = upload_disk_result(own_conn, images["qcow2"], "data", opts)
    # Keywords given with an options object override its fields.
    b = upload_disk_result(own_conn, images["qcow2"], "data", opts, name="opts-b")
    assert (a.name, b.name) == ("opts-a", "opts-b")
    assert (a.disk.format, b.disk.format) == ("cow", "cow")
    assert a.checksum == b.checksum and a.verification.verified
    out_opts = os.path.join(module_dir, "opts.qcow2")
    out_kw = os.path.join(module_dir, "kw.qcow2")
    r1 = download_disk(own_conn, a.disk, out_opts, DownloadOptions(format="qcow2", workers=2))
    r2 = download_disk(own_conn, a.disk_id, out_kw, format="qcow2", workers=2)
    assert (r1.format, r2.format) == ("qcow2", "qcow2")
    assert images_equal(images["raw"], out_opts, "raw", "qcow2")
    assert images_equal(out_opts, out_kw, "qcow2", "qcow2")


def test_unknown_option_keyword_is_a_type_error(own_conn, images):
    with pytest.raises(TypeError, match="unexpected keyword argument 'wrkers'"):
        upload_disk(own_conn, images["raw"], "data", wrkers=2)
    with pytest.raises(TypeError, match="options must be a DownloadOptions"):
        download_disk(own_conn, "x", "/nonexistent/x.raw", UploadOptions())
    assert not [d for d in own_conn.disks.list() if d.status == "locked"]


@pytest.mark.slow
def test_keep_on_error_in_the_constructor_pauses_instead_of_cancelling(own_conn, images):
    disk = upload_disk(own_conn, images["raw"], "data", name="keep-on-error")
    # A disk of the engine's, as --resume finds it after an interrupted upload.
    session = TransferSession(own_conn, disk_id=disk.id, direction="upload",
                              keep_on_error=True)
    with pytest.raises(RuntimeError, match="boom"):
        with session:
            raise RuntimeError("boom")
    phase = wait_until(lambda: own_conn.transfers.get(session.transfer_id).phase,
                       lambda p: p != "transferring", 30, "the pause")
    assert phase == "paused_user"
    # The kept transfer is reused by a session told so in its constructor.
    again = TransferSession(own_conn, disk_id=disk.id, direction="upload",
                            reuse_transfer_id=session.transfer_id)
    own_conn.transfers.resume(session.transfer_id)
    with again:
        assert again.transfer_id == session.transfer_id
    assert own_conn.transfers.get(session.transfer_id).phase == "finished_success"


def test_wait_until_returns_the_value_that_satisfied_it():
    values = iter([1, 2, 3, 4])
    assert wait_until(lambda: next(values), lambda v: v >= 3, 30, "three") == 3


@pytest.mark.slow
def test_wait_until_names_what_it_waited_for():
    with pytest.raises(TimeoutExpired) as e:
        wait_until(lambda: "locked", lambda v: v == "ok", 0.3, "disk d to be ok")
    assert str(e.value) == "timed out after 0.3 s waiting for disk d to be ok (last: locked)"


def test_signatures_list_every_option_keyword():
    import inspect as pyinspect

    for fn, cls in ((upload_disk, UploadOptions), (upload_disk_result, UploadOptions),
                    (download_disk, DownloadOptions)):
        params = pyinspect.signature(fn).parameters
        for f in dataclasses.fields(cls):
            assert params[f.name].default == f.default, (fn.__name__, f.name)
            assert params[f.name].kind is pyinspect.Parameter.KEYWORD_ONLY


def test_disk_options_are_one_frozen_value_a_session_reads():
    """A session takes a DiskOptions or its fields as keywords (the keywords
    win); an unknown keyword is a TypeError, as the listed keywords were."""
    from imagetool.transfer.disk import DiskOptions, Sent
    from imagetool.iocore.copier import CopyStats
    from imagetool.transfer.verify import skipped

    o = DiskOptions(format="cow", use_proxy=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.format = "raw"
    s = TransferSession(None, disk_id="d", direction="download", options=o, format="raw")
    assert (s.options.format, s.options.use_proxy) == ("raw", True)
    with pytest.raises(TypeError):
        TransferSession(None, disk_id="d", direction="download", formatt="raw")
    sent = Sent("d", "t", CopyStats(bytes_total=5), skipped("not asked (--no-verify)"))
    assert sent.to_json() == {"disk_id": "d", "transfer_id": "t", "bytes": 5,
                              "checksum": None, "verified": False,
                              "verify_skipped": "not asked (--no-verify)"}
