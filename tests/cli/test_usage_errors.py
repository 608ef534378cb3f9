"""Usage errors of the engine options: exit 2 and one line on stderr."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("text,where", [
    ("garbage\n[prod]\nengine_url = https://e\n", "line 1: 'garbage' comes before any [section]"),
    ("[prod]\nengine_url = https://e\nfoo\n", "line 3: 'foo'"),
    ("[prod]\nusername = a\n[prod]\n", "line 3: [prod] appears twice"),
    ("[prod]\nusername = a\nusername = b\n", "line 3: 'username' appears twice in [prod]"),
])
def test_a_bad_config_file_is_one_line(cli, home, monkeypatch, tmp_path, text, where):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    monkeypatch.setenv("IMAGETOOL_CONFIG", str(conf))
    code, out, err = cli("disks", "list", "-c", "prod")
    assert code == 2 and out == ""
    assert err == (f"imagetool: error: cannot read config file {conf}, {where}: expected "
                   f"[section] headers and key = value lines; fix or remove the file\n")


def test_an_engine_url_that_is_no_url_is_a_usage_error(cli, home):
    code, out, err = cli("disks", "list", "--engine-url", "not-a-url", "--username", "u")
    assert code == 2 and out == ""
    assert err == ("imagetool: error: invalid engine URL 'not-a-url': expected "
                   "https://HOST[/ovirt-engine/api]\n")
