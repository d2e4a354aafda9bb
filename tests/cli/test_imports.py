"""What the command line loads: never the daemons, and for unary verbs not even gRPC.

The CLI is started for every command a user or a script types, so what it
imports is what it costs. These run the real ``shoal.cli.main`` in a fresh
interpreter and look at ``sys.modules`` afterwards; they check which modules
were loaded, not how long anything took (speed is measured in ``bench/cli.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A client command has no business with any of these: they are the daemons'
# (agent, manager, reconcilers, store, runtimes) and the engines' SDKs.
DAEMON_MODULES = (
    "shoal.agent",
    "shoal.manager",
    "shoal.runtimes",
    "shoal.reconciler",
    "shoal.store",
    "docker",
    "podman",
    "aetcd",
    "prometheus_client",
    "structlog",
)
# Verbs that never talk to a manager need neither gRPC nor the models.
REMOTE_MODULES = ("grpc", "asyncio", "pydantic", "shoal.models", "yaml")
# Unary calls go through the CLI's own client (shoal.api.unary): no grpc, no event loop.
LOOP_MODULES = ("grpc", "asyncio")
# Only a Tab (``_ARGCOMPLETE`` set) or ``shoal completion`` loads the completion library.
COMPLETION_MODULES = ("argcomplete",)

PROBE = """
import json, sys
import shoal.cli.main as cli
code = None if not sys.argv[1:] else cli.main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded(tmp_path: Path, *argv: str) -> tuple[int | None, set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["SHOAL_STATE_DIR"] = str(tmp_path / "state")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["code"], set(report["modules"])


def offending(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_importing_the_cli_loads_no_daemon_and_no_grpc(tmp_path: Path) -> None:
    _, modules = loaded(tmp_path)
    assert "shoal.cli.main" in modules
    assert offending(modules, DAEMON_MODULES + REMOTE_MODULES + COMPLETION_MODULES) == []


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        pytest.param(["--help"], 0, id="help"),
        pytest.param(["version", "--client"], 0, id="version-client"),
        pytest.param(["get", "--help"], 0, id="get-help"),
        pytest.param(["pods"], 2, id="unknown-verb"),
        pytest.param(["completion", "bash"], 0, id="completion-script"),
    ],
)
def test_local_verbs_load_neither_daemons_nor_grpc(
    tmp_path: Path, argv: list[str], code: int
) -> None:
    returned, modules = loaded(tmp_path, *argv)
    assert returned == code
    assert offending(modules, DAEMON_MODULES + REMOTE_MODULES) == []


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["get", "services"], id="get-services"),
        pytest.param(["get", "tasks", "-o", "wide"], id="get-tasks"),
        pytest.param(["get", "nodes"], id="get-nodes"),
        pytest.param(["node", "ls"], id="node-ls"),
        pytest.param(["node", "update", "n1", "--availability", "pause"], id="node-update"),
        pytest.param(["describe", "service", "web"], id="describe"),
        pytest.param(["scale", "web=2"], id="scale"),
        pytest.param(["delete", "service", "web", "--no-wait"], id="delete-no-wait"),
        pytest.param(["version"], id="version"),
        pytest.param(["cluster", "status"], id="cluster-status"),
        pytest.param(["ui"], id="ui"),
        pytest.param(["token"], id="token"),
        pytest.param(["user", "ls"], id="user-ls"),
        pytest.param(["secret", "ls"], id="secret-ls"),
        pytest.param(["config", "inspect", "c1"], id="config-inspect"),
        pytest.param(["sync", "ls"], id="sync-ls"),
        pytest.param(["sync", "status", "s1"], id="sync-status"),
        pytest.param(["sync", "now", "s1", "--no-wait"], id="sync-now-no-wait"),
        pytest.param(["sync", "suspend", "s1"], id="sync-suspend"),
        pytest.param(["stack", "ls"], id="stack-ls"),
        pytest.param(["stack", "rm", "st", "--no-wait"], id="stack-rm-no-wait"),
        pytest.param(["events"], id="events"),
        pytest.param(["job", "status", "j1"], id="job-status"),
        pytest.param(["job", "run", "j1"], id="job-run"),
        pytest.param(["rollout", "history", "web"], id="rollout-history"),
        pytest.param(["rollout", "undo", "web"], id="rollout-undo"),
    ],
)
def test_unary_client_verbs_load_neither_grpc_nor_a_daemon(tmp_path: Path, argv: list[str]) -> None:
    # Nothing listens on port 1: the command goes all the way to the failed
    # call (exit code 1), having loaded everything it needs for a real one
    # (tests/e2e/test_cli_live.py checks the same against a live manager).
    returned, modules = loaded(tmp_path, *argv, "--server", "127.0.0.1:1")
    assert returned == 1
    assert "shoal.api.unary" in modules  # it did get as far as calling
    assert offending(modules, (*DAEMON_MODULES, *LOOP_MODULES, "pydantic", "shoal.models")) == []


def test_reading_the_credentials_shoal_wrote_loads_no_yaml(tmp_path: Path) -> None:
    # Every client command reads a bundle; PyYAML alone would cost it ~15 ms.
    state = tmp_path / "state"
    state.mkdir()
    pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    bundle = {"name": "local", "servers": [], "ca": pem, "cert": pem, "key": pem}
    (state / "admin.yaml").write_text(json.dumps(bundle, indent=2))  # as shoal writes it
    returned, modules = loaded(tmp_path, "get", "services", "--server", "127.0.0.1:1")
    assert returned == 1  # it read the bundle and went as far as the failed call
    assert "shoal.api.unary" in modules
    assert offending(modules, ("yaml",)) == []


def spec_file(tmp_path: Path) -> str:
    spec = tmp_path / "web.yaml"
    spec.write_text(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: web}\n"
        "spec: {template: {command: [sleep, '60']}}\n"
    )
    return str(spec)


def test_apply_loads_neither_the_models_nor_grpc_nor_a_daemon(tmp_path: Path) -> None:
    spec = spec_file(tmp_path)
    returned, modules = loaded(tmp_path, "apply", "-f", spec, "--server", "127.0.0.1:1")
    assert returned == 1
    # The YAML was composed and checked (the manager validates the rest), then sent.
    assert {"shoal.specfiles", "shoal.api.unary"} <= modules
    assert offending(modules, (*DAEMON_MODULES, *LOOP_MODULES, "pydantic", "shoal.models")) == []


def test_diff_loads_the_models_but_neither_grpc_nor_asyncio(tmp_path: Path) -> None:
    # diff renders both sides with the models' defaults; its calls are unary.
    spec = spec_file(tmp_path)
    returned, modules = loaded(tmp_path, "diff", "-f", spec, "--server", "127.0.0.1:1")
    assert returned == 2  # diff's exit code for an error: no manager
    assert "shoal.api.unary" in modules
    assert offending(modules, (*DAEMON_MODULES, *LOOP_MODULES)) == []
