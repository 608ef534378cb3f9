"""Per-request retries against the REAL imageio daemon behind the fault proxy."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fault_proxy import DropConnection, FaultProxy, Respond, Rule
from helpers import MiB
from imagetool.errors import ImageioError
from imagetool.formats.raw import RawBackend
from imagetool.imageio.backend import HttpBackend
from imagetool.imageio.client import ImageioClient
from imagetool.iocore.copier import CopyOptions, copy
from imagetool.iocore.backends import SharedBackend
from imagetool.iocore.backends import RetryingBackend, RetryPolicy, is_transient

FAST = RetryPolicy(tries=8, total=30, base_delay=0.05, max_delay=0.5)


def _image(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(size))


def _setup(daemon, scratch, size=8 * MiB):
    src = os.path.join(scratch, "src.raw")
    dst = os.path.join(scratch, "dst.raw")
    _image(src, size)
    with open(dst, "wb") as f:
        f.truncate(size)
    url = daemon.add_ticket(size=size, path=dst)
    return src, dst, url.rsplit("/images/", 1)[1]


def _upload(proxy, ticket, src, policy=FAST, workers=2):
    client = ImageioClient(proxy.url_for("/images/" + ticket), read_timeout=5)
    source = SharedBackend(RawBackend(src, "r"))
    dst = RetryingBackend(HttpBackend(client), policy, source=source.clone())
    try:
        return copy(source, dst, CopyOptions(workers=workers, request_size=MiB)), dst
    finally:
        dst.close()
        source.close()


def _same(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


@pytest.mark.slow
def test_500_and_dropped_connections_are_retried(imageio_daemon, scratch):
    src, dst, ticket = _setup(imageio_daemon, scratch)
    with FaultProxy(upstream=("127.0.0.1", imageio_daemon.port)) as proxy:
        proxy.add_rule(Rule(method="PUT", nth=(2, 5), action=Respond(500)))
        proxy.add_rule(Rule(method="PUT", nth=3, action=DropConnection()))
        proxy.add_rule(Rule(method="PATCH", nth=1, action=Respond(503)))
        _upload(proxy, ticket, src)
        assert len(proxy.stats.faults) == 4
        # Re-sent ranges: more PUT bodies than the image.
        assert proxy.stats.body_bytes_up > 8 * MiB
    assert _same(src, dst)


@pytest.mark.slow
def test_outage_then_recovery_without_resume(imageio_daemon, scratch):
    src, dst, ticket = _setup(imageio_daemon, scratch, 16 * MiB)
    with FaultProxy(upstream=("127.0.0.1", imageio_daemon.port)) as proxy:
        # Slow the PUTs a little so the outage lands mid-copy.
        from fault_proxy import Delay
        proxy.add_rule(Rule(method="PUT", every=True, action=Delay(0.05)))
        done = threading.Event()

        def outage():
            while proxy.stats.requests["PUT"] < 4 and not done.is_set():
                time.sleep(0.01)
            proxy.set_down(True)
            time.sleep(1.0)
            proxy.set_down(False)

        t = threading.Thread(target=outage)
        t.start()
        try:
            stats, _ = _upload(proxy, ticket, src)
        finally:
            done.set()
            t.join()
        assert stats.bytes_copied == 16 * MiB
    assert _same(src, dst)


def test_permanent_403_is_not_retried(imageio_daemon, scratch):
    src, dst, ticket = _setup(imageio_daemon, scratch)
    with FaultProxy(upstream=("127.0.0.1", imageio_daemon.port)) as proxy:
        proxy.add_rule(Rule(method="PUT", nth=2, action=Respond(403)))
        with pytest.raises(Exception) as info:
            _upload(proxy, ticket, src, workers=1)
        assert "403" in str(info.value)
        assert proxy.stats.requests["PUT"] == 2      # no retry of the 403


def test_gives_up_after_the_limit(imageio_daemon, scratch):
    src, dst, ticket = _setup(imageio_daemon, scratch)
    policy = RetryPolicy(tries=3, total=10, base_delay=0.01, max_delay=0.02)
    with FaultProxy(upstream=("127.0.0.1", imageio_daemon.port)) as proxy:
        proxy.add_rule(Rule(method="PUT", every=True, action=Respond(502)))
        with pytest.raises(Exception) as info:
            _upload(proxy, ticket, src, policy=policy, workers=1)
        assert "502" in str(info.value)
        assert proxy.stats.requests["PUT"] == 3


def test_classification():
    assert is_transient(ImageioError("x", status=500))
    assert is_transient(ImageioError("x", status=504))
    assert not is_transient(ImageioError("x", status=403))
    assert not is_transient(ImageioError("x", status=416))
    assert is_transient(ConnectionResetError())
    assert not is_transient(ValueError())


@pytest.mark.slow
def test_policy_from_environment(monkeypatch):
    monkeypatch.setenv("IMAGETOOL_RETRY_TRIES", "2")
    monkeypatch.setenv("IMAGETOOL_RETRY_SECONDS", "7.5")
    p = RetryPolicy.from_env()
    assert (p.tries, p.total) == (2, 7.5)
    monkeypatch.delenv("IMAGETOOL_RETRY_TRIES")
    monkeypatch.delenv("IMAGETOOL_RETRY_SECONDS")
    assert RetryPolicy.from_env() == RetryPolicy()
    # Backoff grows and stays within its cap (jitter: half to full).
    for attempt in range(1, 10):
        cap = min(p.max_delay, p.base_delay * 2 ** (attempt - 1))
        assert cap / 2 <= p.delay(attempt) <= cap
