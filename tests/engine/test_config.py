"""Engine option resolution for the CLI: flags > environment > config file."""

from __future__ import annotations

import click
import pytest

from imagetool.cli.config import EngineOptions, config_paths, resolve


@pytest.fixture
def cfg(tmp_path):
    """An environment with a config dir in tmp and nothing else."""
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    return {"XDG_CONFIG_HOME": str(xdg)}


def write(path, text):
    path.write_text(text)
    return str(path)


def test_nothing_configured_means_local_engine(cfg):
    assert resolve(EngineOptions(), cfg) is None
    # Other settings without a URL do not select a remote engine either.
    assert resolve(EngineOptions(username="u", cafile="/x"), cfg) is None


def test_flags_beat_env_beat_config(cfg, tmp_path):
    write(tmp_path / "xdg" / "imagetool.conf",
          "[prod]\nengine_url = https://conf\nusername = conf@internal\n"
          "password = confpw\ncafile = /conf/ca.pem\n")
    pwfile = write(tmp_path / "pw", "flagpw\n")
    env = dict(cfg, IMAGETOOL_ENGINE_URL="https://env", IMAGETOOL_USERNAME="env@internal",
               IMAGETOOL_PASSWORD="envpw")
    r = resolve(EngineOptions(config="prod"), cfg)
    assert (r.url, r.username, r.password, r.cafile, r.insecure) == (
        "https://conf", "conf@internal", "confpw", "/conf/ca.pem", False)
    r = resolve(EngineOptions(config="prod"), env)
    assert (r.url, r.username, r.password, r.cafile) == (
        "https://env", "env@internal", "envpw", "/conf/ca.pem")
    r = resolve(EngineOptions(config="prod", engine_url="https://flag", username="flag@x",
                              password_file=pwfile, cafile="/flag/ca.pem"), env)
    assert (r.url, r.username, r.password, r.cafile) == (
        "https://flag", "flag@x", "flagpw", "/flag/ca.pem")
    assert "flagpw" not in repr(r)


def test_password_sources(cfg, tmp_path):
    pw_env = write(tmp_path / "pw-env", "from-env-file")
    pw_conf = write(tmp_path / "pw-conf", "from-conf-file\n")
    write(tmp_path / "xdg" / "imagetool.conf",
          f"[s]\nengine_url = https://e\nusername = u\npassword_file = {pw_conf}\n")
    assert resolve(EngineOptions(config="s"), cfg).password == "from-conf-file"
    env = dict(cfg, IMAGETOOL_PASSWORD_FILE=pw_env)
    assert resolve(EngineOptions(config="s"), env).password == "from-env-file"
    # No password anywhere: None (open_connection prompts on a terminal).
    assert resolve(EngineOptions(engine_url="https://e", username="u"), cfg).password is None


def test_imagetool_config_env_overrides_path(cfg, tmp_path):
    other = write(tmp_path / "elsewhere.ini", "[x]\nengine_url = https://other\nusername = u\n")
    env = dict(cfg, IMAGETOOL_CONFIG=other)
    assert config_paths(env)[0] == other
    assert resolve(EngineOptions(config="x"), env).url == "https://other"


def test_ovirt_img_conf_fallback_and_secure_key(cfg, tmp_path):
    # The section is not in imagetool.conf: ovirt-img's file is read, with
    # its keys (secure = false means do not verify).
    write(tmp_path / "xdg" / "imagetool.conf", "[other]\nengine_url = https://x\n")
    write(tmp_path / "xdg" / "ovirt-img.conf",
          "[engine1]\nengine_url = https://engine1.example\nusername = admin@internal\n"
          "password = pw\ncafile = /etc/pki/ovirt-engine/ca.pem\nsecure = false\n")
    r = resolve(EngineOptions(config="engine1"), cfg)
    assert r.url == "https://engine1.example" and r.insecure is True
    assert r.cafile == "/etc/pki/ovirt-engine/ca.pem" and r.password == "pw"


@pytest.mark.parametrize("flag,env,conf,expected", [
    (False, None, None, False),
    (True, None, None, True),
    (False, "1", None, True),
    (False, "false", "insecure = true", False),   # env beats config
    (False, None, "insecure = yes", True),
    (False, None, "secure = true", False),
    (True, "0", "secure = true", True),           # the flag beats all
])
def test_insecure_precedence(cfg, tmp_path, flag, env, conf, expected):
    write(tmp_path / "xdg" / "imagetool.conf",
          "[s]\nengine_url = https://e\nusername = u\n" + (conf or "") + "\n")
    environ = dict(cfg, **({"IMAGETOOL_INSECURE": env} if env else {}))
    assert resolve(EngineOptions(config="s", insecure=flag), environ).insecure is expected


def test_usage_errors(cfg, tmp_path):
    with pytest.raises(click.UsageError, match=r"no section \[nope\]"):
        resolve(EngineOptions(config="nope"), cfg)
    with pytest.raises(click.UsageError, match="no username"):
        resolve(EngineOptions(engine_url="https://e"), cfg)
    with pytest.raises(click.UsageError, match="cannot read password file"):
        resolve(EngineOptions(engine_url="https://e", username="u",
                              password_file=str(tmp_path / "missing")), cfg)
    with pytest.raises(click.UsageError, match="expected true or false"):
        resolve(EngineOptions(engine_url="https://e", username="u"),
                dict(cfg, IMAGETOOL_INSECURE="maybe"))
