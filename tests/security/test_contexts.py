"""Which credentials and managers the CLI uses, and the files it keeps them in."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from shoal.security.contexts import Config, Context, CredentialsError, resolve


def bundle(name: str, servers: list[str], user: str = "admin") -> dict[str, object]:
    return {
        "apiVersion": "shoal/v1",
        "kind": "Credentials",
        "name": name,
        "cluster": "c1",
        "user": user,
        "role": "admin",
        "servers": servers,
        "ca": f"CA of {name}",
        "cert": f"cert of {user}",
        "key": "key",
    }


def write_local(state: Path, servers: list[str], address: str | None = None) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / "admin.yaml").write_text(yaml.safe_dump(bundle("local", servers)))
    if address:
        (state / "manager.json").write_text(json.dumps({"address": address, "pid": os.getpid()}))


def test_config_is_written_as_json_and_yaml_is_still_read(tmp_path: Path) -> None:
    config = Config(tmp_path / "config.yaml")
    config.contexts["prod"] = Context.from_bundle(bundle("prod", ["prod:7420"]), "prod")
    config.current = "prod"
    config.save()
    written = json.loads(config.path.read_text())  # JSON, which is YAML too
    assert yaml.safe_load(config.path.read_text()) == written
    assert written["current"] == "prod"
    # A file written by hand (or by an older shoal) in YAML is read as before.
    config.path.write_text(yaml.safe_dump(written))
    assert Config.load(config.path).contexts["prod"].servers == ["prod:7420"]
    config.path.write_text("current: [unclosed\n")
    with pytest.raises(CredentialsError, match="not YAML"):
        Config.load(config.path)


def test_no_credentials_says_what_to_do(tmp_path: Path) -> None:
    env = {"SHOAL_CONFIG": str(tmp_path / "none.yaml"), "XDG_STATE_HOME": str(tmp_path / "x")}
    with pytest.raises(CredentialsError, match="shoal up"):
        resolve(env=env)


def test_local_bundle_with_live_endpoint_first(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_local(state, ["10.0.0.1:7420"], address="127.0.0.1:5555")
    env = {"SHOAL_STATE_DIR": str(state), "SHOAL_CONFIG": str(tmp_path / "c.yaml")}
    chosen = resolve(env=env)
    assert chosen.servers == ["127.0.0.1:5555", "10.0.0.1:7420"]
    assert chosen.ca_pem == b"CA of local"


def test_stale_endpoint_is_skipped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_local(state, ["10.0.0.1:7420"])
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (state / "manager.json").write_text(json.dumps({"address": "127.0.0.1:1", "pid": dead}))
    env = {"SHOAL_STATE_DIR": str(state), "SHOAL_CONFIG": str(tmp_path / "c.yaml")}
    assert resolve(env=env).servers == ["10.0.0.1:7420"]


def test_order_context_flag_then_state_dir_then_current_then_default(tmp_path: Path) -> None:
    config = Config(tmp_path / "config.yaml")
    for name in ("prod", "staging"):
        config.contexts[name] = Context.from_bundle(bundle(name, [f"{name}:7420"]), name)
    config.current = "staging"
    config.save()
    assert stat.S_IMODE(os.stat(config.path).st_mode) == 0o600
    state = tmp_path / "state"
    write_local(state, ["local:7420"])
    default_home = tmp_path / "xdg"
    write_local(default_home / "shoal", ["default:7420"])
    base = {"SHOAL_CONFIG": str(config.path), "XDG_STATE_HOME": str(default_home)}

    explicit_state = {**base, "SHOAL_STATE_DIR": str(state)}
    assert resolve(context="prod", env=explicit_state).servers == ["prod:7420"]
    assert resolve(env=explicit_state).servers == ["local:7420"]
    assert resolve(env=base).servers == ["staging:7420"]
    config.current = None
    config.save()
    assert resolve(env=base).servers == ["default:7420"]
    with pytest.raises(CredentialsError, match="known: prod, staging"):
        resolve(context="nope", env=base)


def test_server_flag_and_env_override_addresses_as_comma_lists(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_local(state, ["local:7420"])
    env = {"SHOAL_STATE_DIR": str(state), "SHOAL_CONFIG": str(tmp_path / "c.yaml")}
    assert resolve("a:1, b:2", env=env).servers == ["a:1", "b:2"]
    assert resolve(env={**env, "SHOAL_SERVER": "e:1,f:2"}).servers == ["e:1", "f:2"]
    assert resolve("a:1", env={**env, "SHOAL_SERVER": "e:1"}).servers == ["a:1"]


def test_a_bundle_without_key_material_is_refused_by_name(tmp_path: Path) -> None:
    raw = bundle("x", ["a:1"])
    del raw["key"]
    with pytest.raises(CredentialsError, match="missing key"):
        Context.from_bundle(raw, "bob.yaml")
