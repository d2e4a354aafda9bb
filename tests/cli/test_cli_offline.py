"""The ``shoal`` command line where no manager is needed, run as real processes.

These pin the contract scripts rely on: exit codes (0 ok, 1 failure, 2 usage),
one ``error:`` line instead of a traceback, spec problems reported with file
and line before anything is sent, and a clear message when no manager answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import shoal
from shoal.security.ca import CertificateAuthority

UNREACHABLE = "127.0.0.1:1"


def write_admin_bundle(state: Path) -> None:
    """The credentials a local manager leaves in its state dir (from a CA of our own)."""
    ca = CertificateAuthority.create("offline")
    cert, key = ca.issue_pair("admin", "admin")
    bundle = {
        "name": "local",
        "servers": [],
        "ca": ca.cert_pem.decode(),
        "cert": cert.decode(),
        "key": key.decode(),
    }
    state.mkdir(parents=True, exist_ok=True)
    (state / "admin.yaml").write_text(yaml.safe_dump(bundle))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with credentials but no manager: a state dir holding only an admin
    bundle, no SHOAL_SERVER, no config file."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    clean["SHOAL_STATE_DIR"] = str(tmp_path / "state")
    clean["SHOAL_CONFIG"] = str(tmp_path / "config.yaml")
    write_admin_bundle(tmp_path / "state")
    return clean


def shoal_cmd(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket that would notice any connection: proof that nothing was contacted."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"{host}:{port}"


def assert_not_contacted(sock: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        conn, _ = sock.accept()
        conn.close()


BAD_SPEC = """\
apiVersion: shoal/v1
kind: Service
metadata:
  name: web
spec:
  replicas: lots
  template:
    command: [/bin/true]
    stopGracePeriod: 5x
"""

# What the YAML alone shows wrong: the CLI says so without contacting a manager
# (the fields' values are the manager's to validate: tests/e2e/test_cli_live.py).
BAD_YAML = """\
apiVersion: shoal/v1
kind: Service
metadata:
  name: web
  name: web2
spec:
  template:
\tcommand: [/bin/true]
"""

GOOD_SPEC = """\
apiVersion: shoal/v1
kind: Service
metadata:
  name: api
spec:
  template:
    command: [/bin/true]
"""


# ------------------------------------------------------------ no manager


def test_version_unreachable_server(env: dict[str, str]) -> None:
    result = shoal_cmd(env, "version", "--server", UNREACHABLE)
    assert_clean_failure(result, 1)
    assert f"Client Version: {shoal.__version__}" in result.stdout
    assert result.stderr.strip() == (
        f"error: cannot reach a shoal manager: tried {UNREACHABLE} (connection refused, or "
        "the TLS handshake failed). Check that a manager runs there (`shoal up` or "
        "`shoal manager`) and that these credentials are for its cluster, or pick others "
        "with --server, --context or `shoal context use`"
    )


def test_no_credentials_says_where_they_come_from(env: dict[str, str]) -> None:
    (Path(env["SHOAL_STATE_DIR"]) / "admin.yaml").unlink()
    env["XDG_STATE_HOME"] = env["SHOAL_STATE_DIR"]  # no default state dir bundle either
    result = shoal_cmd(env, "get", "nodes", "--server", UNREACHABLE)
    assert_clean_failure(result, 1)
    assert "no credentials for a shoal cluster" in result.stderr
    assert "shoal context import FILE" in result.stderr


def test_every_manager_of_a_list_is_tried_and_named(env: dict[str, str]) -> None:
    result = shoal_cmd(env, "get", "nodes", "--server", f"{UNREACHABLE},127.0.0.1:2")
    assert_clean_failure(result, 1)
    assert f"tried {UNREACHABLE} (connection refused" in result.stderr
    assert "; 127.0.0.1:2 (connection refused" in result.stderr


def test_version_client_only_needs_no_server(env: dict[str, str]) -> None:
    result = shoal_cmd(env, "version", "--client", "--server", UNREACHABLE)
    assert result.returncode == 0
    assert result.stdout.strip() == f"Client Version: {shoal.__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["get", "services"], id="get"),
        pytest.param(["describe", "service", "web"], id="describe"),
        pytest.param(["delete", "service", "web"], id="delete"),
        pytest.param(["scale", "web=2"], id="scale"),
        pytest.param(["logs", "web"], id="logs"),
        pytest.param(["node", "ls"], id="node-ls"),
        pytest.param(["token", "worker"], id="token"),
        pytest.param(["rollout", "status", "web", "--timeout", "1s"], id="rollout"),
    ],
)
def test_every_client_command_reports_unreachable(env: dict[str, str], argv: list[str]) -> None:
    env["SHOAL_SERVER"] = UNREACHABLE
    result = shoal_cmd(env, *argv)
    assert_clean_failure(result, 1)
    assert f"cannot reach a shoal manager: tried {UNREACHABLE} (" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["get", "services", "--server", UNREACHABLE, "web"], id="get"),
        pytest.param(["exec", "web.1", "--server", UNREACHABLE, "--", "ls", "-l"], id="exec"),
        pytest.param(
            ["node", "update", "n1", "--server", UNREACHABLE, "--availability", "drain"], id="node"
        ),
    ],
)
def test_options_after_positionals_are_the_commands(env: dict[str, str], argv: list[str]) -> None:
    result = shoal_cmd(env, *argv)
    assert_clean_failure(result, 1)
    assert f"cannot reach a shoal manager: tried {UNREACHABLE} (" in result.stderr


def test_server_flag_beats_environment(env: dict[str, str]) -> None:
    env["SHOAL_SERVER"] = "127.0.0.1:2"
    result = shoal_cmd(env, "get", "nodes", "--server", UNREACHABLE)
    assert f"tried {UNREACHABLE} (" in result.stderr
    assert "127.0.0.1:2" not in result.stderr


def test_endpoint_file_of_local_manager_is_used(env: dict[str, str]) -> None:
    state = Path(env["SHOAL_STATE_DIR"])
    # pid of this test process: alive, so the file is not stale
    (state / "manager.json").write_text(f'{{"address": "127.0.0.1:3", "pid": {os.getpid()}}}')
    result = shoal_cmd(env, "get", "nodes")
    assert_clean_failure(result, 1)
    assert "tried 127.0.0.1:3 (" in result.stderr


# ------------------------------------------------------------------ apply


def test_apply_bad_yaml_reports_lines_and_sends_nothing(
    env: dict[str, str], tmp_path: Path, listener: socket.socket
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_YAML)
    result = shoal_cmd(env, "apply", "-f", str(bad), "--server", address(listener))
    assert_clean_failure(result, 1)
    assert result.stderr.splitlines() == [
        "error: 1 problem in the spec; nothing was applied:",
        f"{bad}:8: invalid YAML: a tab at column 1; YAML indents with spaces only: "
        "replace the tab with spaces",
    ]
    assert result.stdout == ""
    assert_not_contacted(listener)


def test_apply_is_all_or_nothing_across_files(
    env: dict[str, str], tmp_path: Path, listener: socket.socket
) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "good.yaml").write_text(GOOD_SPEC)
    (tmp_path / "specs" / "dup.yaml").write_text(BAD_YAML.replace("\t", "    "))
    result = shoal_cmd(env, "apply", "-f", str(tmp_path / "specs"), "--server", address(listener))
    assert_clean_failure(result, 1)
    assert "dup.yaml:5: metadata.name: duplicate key 'name' (first at line 4)" in result.stderr
    assert_not_contacted(listener)


def test_apply_from_stdin_reports_stdin(env: dict[str, str], listener: socket.socket) -> None:
    result = shoal_cmd(env, "apply", "-f", "-", "--server", address(listener), stdin=BAD_YAML)
    assert_clean_failure(result, 1)
    assert "<stdin>:8: invalid YAML: a tab" in result.stderr
    assert_not_contacted(listener)


def test_apply_missing_file(env: dict[str, str], tmp_path: Path, listener: socket.socket) -> None:
    missing = tmp_path / "nope.yaml"
    result = shoal_cmd(env, "apply", "-f", str(missing), "--server", address(listener))
    assert_clean_failure(result, 1)
    assert f"{missing}: no such file or directory" in result.stderr
    assert_not_contacted(listener)


def test_delete_from_bad_file_sends_nothing(
    env: dict[str, str], tmp_path: Path, listener: socket.socket
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_SPEC)
    result = shoal_cmd(env, "delete", "-f", str(bad), "--server", address(listener))
    assert_clean_failure(result, 1)
    assert f"{bad}:6: spec.replicas" in result.stderr
    assert_not_contacted(listener)


# ------------------------------------------------------------ usage errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["scale", "web=abc"], "expected NAME=REPLICAS", id="scale-not-a-number"),
        pytest.param(["scale", "web"], "expected NAME=REPLICAS", id="scale-no-equals"),
        pytest.param(["scale", "web=-1"], "expected NAME=REPLICAS", id="scale-negative"),
        pytest.param(["frobnicate"], "invalid choice: 'frobnicate'", id="unknown-command"),
        pytest.param(["get", "pods"], "invalid choice: 'pods'", id="get-unknown-resource"),
        pytest.param(["get", "services", "--all"], "only apply to tasks", id="get-all-services"),
        pytest.param(["get", "tasks", "-o", "xml"], "invalid choice: 'xml'", id="bad-output"),
        pytest.param(["delete"], "delete service NAME", id="delete-nothing"),
        pytest.param(["delete", "node", "n1"], "delete service NAME", id="delete-node"),
        pytest.param(["delete", "service"], "at least one service", id="delete-no-name"),
        pytest.param(
            ["delete", "service", "web", "--timeout", "5x"], "invalid duration", id="bad-timeout"
        ),
        pytest.param(["node", "update", "n1"], "nothing to update", id="node-update-nothing"),
        pytest.param(
            ["node", "update", "n1", "--label-add", "zone"],
            "expected KEY=VALUE",
            id="node-label-syntax",
        ),
        pytest.param(["logs", "web", "--tail", "x"], "whole number", id="logs-tail"),
        pytest.param(["apply"], "-f/--filename", id="apply-without-file"),
        pytest.param(["token", "admin"], "invalid choice: 'admin'", id="token-role"),
    ],
)
def test_usage_errors_exit_2(
    env: dict[str, str], listener: socket.socket, argv: list[str], message: str
) -> None:
    result = shoal_cmd(env, *argv, "--server", address(listener))
    assert_clean_failure(result, 2)
    assert message in result.stderr
    assert "usage: shoal" in result.stderr
    assert_not_contacted(listener)


def test_no_command_prints_help_and_exits_2(env: dict[str, str]) -> None:
    result = shoal_cmd(env)
    assert_clean_failure(result, 2)
    assert "usage: shoal" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="shoal"),
        *(
            pytest.param(cmd.split(), id=cmd.replace(" ", "-"))
            for cmd in [
                "apply",
                "get",
                "describe",
                "delete",
                "scale",
                "logs",
                "rollout",
                "rollout status",
                "node",
                "node ls",
                "node update",
                "token",
                "version",
                "up",
                "manager",
                "agent",
            ]
        ),
    ],
)
def test_help(env: dict[str, str], argv: list[str]) -> None:
    result = shoal_cmd(env, *argv, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: shoal {' '.join(argv)}".rstrip())


def test_version_flag(env: dict[str, str]) -> None:
    result = shoal_cmd(env, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"shoal {shoal.__version__}"


@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_apply_with_no_manager_still_names_the_specs_problems(
    env: dict[str, str], tmp_path: Path, stdin: bool
) -> None:
    """No manager answers, so none validates: the CLI checks the spec itself then, and
    a user linting a spec offline sees its problems by file and line, not only that
    the manager is unreachable."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_SPEC)
    name = "<stdin>" if stdin else str(bad)
    source = ["-f", "-"] if stdin else ["-f", str(bad)]
    result = shoal_cmd(
        env, "apply", *source, "--server", "127.0.0.1:3", stdin=BAD_SPEC if stdin else None
    )
    assert_clean_failure(result, 1)
    assert f"{name}:6: spec.replicas:" in result.stderr
    assert f"{name}:9: spec.template.stopGracePeriod:" in result.stderr
