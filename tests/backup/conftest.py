"""Fixtures of the backup tests (the shared ones are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from helpers import ENGINE_PASSWORD


@pytest.fixture
def env(engine, monkeypatch, tmp_path):
    """The CLI's environment pointed at the module's local engine."""
    from imagetool.server.local import LocalEngine

    monkeypatch.setenv("IMAGETOOL_ENGINE_URL", engine.url)
    monkeypatch.setenv("IMAGETOOL_USERNAME", LocalEngine.username)
    monkeypatch.setenv("IMAGETOOL_PASSWORD", ENGINE_PASSWORD)
    monkeypatch.setenv("IMAGETOOL_CAFILE", engine.cafile)
    monkeypatch.setenv("IMAGETOOL_HOME", str(tmp_path / "home"))
    for name in ("IMAGETOOL_CONFIG", "IMAGETOOL_PASSWORD_FILE", "IMAGETOOL_INSECURE"):
        monkeypatch.delenv(name, raising=False)
