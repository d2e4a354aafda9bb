"""Secrets and configs end to end: real manager, agent, processes, Docker, Podman and etcd.

A secret is a random marker nobody else could produce. The tasks prove they
read it by printing its SHA-256 (never the bytes); afterwards the marker, raw
and in base64, must be found nowhere: not in the SQLite files, the etcd
keyspace, the agent's state dir, any log file, nor any CLI output.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.taskfiles import TaskFileStore, default_runtime_dir
from tests.e2e import cluster as cluster_module
from tests.e2e.cluster import (
    Cluster,
    Daemon,
    cluster_at,
    free_port,
    processes_with_env,
    shoal_cmd,
    task_processes,
    wait_for,
)
from tests.engines import TEST_IMAGE, ensure_test_image, remove_node_containers
from tests.etcdcluster import etcd_cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="task users and tmpfs mounts need root"),
]

CONFIG = """\
apiVersion: shoal/v1
kind: Config
metadata: {name: app-conf}
data: "listen 8080\\n"
"""


@pytest.fixture
def node() -> str:
    return f"s{secrets.token_hex(3)}"


@pytest.fixture
def cluster(tmp_path: Path, node: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    for engine in ("docker", "podman"):
        ensure_test_image(engine)
    monkeypatch.setattr(cluster_module, "HEARTBEAT", 2.0)
    with cluster_at(tmp_path) as running:
        yield running
    for engine in ("docker", "podman"):
        remove_node_containers(engine, node)
    # A failed test leaves the tmpfs of tasks its stopped agent no longer watched.
    leftovers = TaskFileStore(default_runtime_dir(node, (tmp_path / "agents" / node).resolve()))
    for task_id in leftovers.leftovers():
        leftovers._release(task_id)


def marker() -> bytes:
    return f"SHOALSECRET-{secrets.token_hex(16)}".encode()


def forms(secret: bytes) -> list[bytes]:
    """The secret as it could leak: raw, and base64 as the wire carries it."""
    return [secret, base64.b64encode(secret)]


def files_holding(root: Path, secret: bytes) -> list[str]:
    found = []
    for path in [root] if root.is_file() else root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(form in data for form in forms(secret)):
                found.append(str(path))
    return found


def service(name: str, template: dict[str, Any], run: str, restart: str = "any") -> str:
    doc = {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "restartPolicy": {"condition": restart, "delay": "200ms"},
            "template": {"stopGracePeriod": "1s", **template},
        },
    }
    doc["spec"]["template"].setdefault("env", {})["E2E_RUN"] = run
    return json.dumps(doc)


def logs_of(cluster: Cluster, name: str) -> str:
    return cluster.cli("logs", name, "--no-prefix").stdout


def mounted(path: Path) -> bool:
    return any(
        line.split()[4] == str(path)
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def test_secrets_and_configs_reach_their_tasks_and_nowhere_else(
    cluster: Cluster, node: str, tmp_path: Path
) -> None:
    secret = marker()
    digest = hashlib.sha256(secret).hexdigest()
    (tmp_path / "pass").write_bytes(secret)
    outputs: list[str] = []

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = cluster.cli(*args, check=check)
        outputs.extend([result.stdout, result.stderr])
        return result

    agent = cluster.start_agent(node)
    cli("secret", "create", "db-pass", "-f", str(tmp_path / "pass"), "--label", "team=db")
    refused = cli("secret", "create", "db-pass", "-f", str(tmp_path / "pass"), check=False)
    assert refused.returncode == 1 and "never change" in refused.stderr

    unknown = service(
        "nope",
        {"command": ["true"], "secrets": [{"source": "missing-one"}]},
        str(tmp_path),
    )
    (tmp_path / "nope.yaml").write_text(unknown)
    result = cli("apply", "-f", str(tmp_path / "nope.yaml"), check=False)
    assert result.returncode == 1
    assert "spec.template.secrets[0].source: no secret named 'missing-one'" in result.stderr
    assert cluster.try_call("Get", {"kind": "services", "name": "nope"}) is None

    reader = service(
        "reader",
        {
            "command": [
                "sh",
                "-c",
                'stat -c "mode=%a owner=%U" "$SHOAL_SECRETS_DIR/db"; '
                'echo "dir=$SHOAL_SECRETS_DIR"; '
                'echo "sha=$(sha256sum < "$SHOAL_SECRETS_DIR/db")"; '
                'echo "config=$(cat "$SHOAL_CONFIGS_DIR/etc/app.conf")"; exec sleep 300',
            ],
            "user": "nobody",
            "secrets": [{"source": "db-pass", "target": "db", "mode": "0400"}],
            "configs": [{"source": "app-conf", "target": "/etc/app.conf"}],
        },
        str(tmp_path),
    )
    containers = {
        engine: service(
            f"{engine}-reader",
            {
                "runtime": engine,
                "image": TEST_IMAGE,
                "init": True,
                "command": [
                    "sh",
                    "-c",
                    'echo "sha=$(sha256sum < /run/secrets/db-pass)"; '
                    'echo "config=$(cat /etc/app.conf)"; exec sleep 300',
                ],
                "secrets": [{"source": "db-pass"}],
                "configs": [{"source": "app-conf", "target": "/etc/app.conf"}],
            },
            str(tmp_path),
        )
        for engine in ("docker", "podman")
    }
    (tmp_path / "apps.yaml").write_text(
        "\n---\n".join([CONFIG, reader, *containers.values()]) + "\n"
    )
    applied = cli("apply", "-f", str(tmp_path / "apps.yaml"))
    assert "config/app-conf created" in applied.stdout
    for name in ("reader", "docker-reader", "podman-reader"):
        cluster.wait_running(name, 1, timeout=90)

    def reported(name: str) -> str:
        wait_for(lambda: "config=" in logs_of(cluster, name), 30, f"{name} to read its files")
        text = logs_of(cluster, name)
        outputs.append(text)
        return text

    text = reported("reader")
    assert "mode=400 owner=nobody" in text
    assert f"sha={digest}" in text and "config=listen 8080" in text
    # Counted in /proc: besides shoal's wrapper (root, which records the exit code),
    # every process of the task runs as nobody.
    wrapper = cluster.running("reader")[0]["status"]["pid"]
    command = [pid for pid in task_processes("reader") if pid != wrapper]
    nobody = f"Uid:\t{pwd.getpwnam('nobody').pw_uid}\t"
    assert command and all(nobody in Path(f"/proc/{p}/status").read_text() for p in command)
    secrets_dir = Path(text.split("dir=")[1].split()[0])
    task_dir = secrets_dir.parent
    runtime_dir = default_runtime_dir(node, (tmp_path / "agents" / node).resolve())
    assert task_dir.parent == runtime_dir / "tasks"
    assert mounted(task_dir)  # a tmpfs of its own, in memory
    for engine in ("docker", "podman"):
        text = reported(f"{engine}-reader")
        assert f"sha={digest}" in text and "config=listen 8080" in text

    busy = cli("secret", "rm", "db-pass", check=False)
    assert busy.returncode == 1 and "service/reader" in busy.stderr and "in use" in busy.stderr
    inspected = json.loads(cli("secret", "inspect", "db-pass", "-o", "json").stdout)
    assert inspected["size"] == len(secret) and inspected["metadata"]["labels"] == {"team": "db"}
    assert "sealed" not in inspected and set(inspected["usedBy"]) == {
        "service/reader",
        "service/docker-reader",
        "service/podman-reader",
    }
    for args in (
        ["secret", "ls"],
        ["secret", "ls", "-o", "yaml"],
        ["config", "inspect", "app-conf", "-o", "yaml"],
        ["get", "services", "-o", "yaml"],
        ["get", "services", "-o", "json"],
        ["get", "tasks", "-a", "-o", "json"],
        ["get", "tasks", "-o", "yaml"],
        ["describe", "service", "reader"],
        ["describe", "node", node],
    ):
        cli(*args)

    # A task that ends by itself: its directory goes as soon as it has exited.
    oneshot = service(
        "oneshot",
        {
            "command": [
                "sh",
                "-c",
                'test -s "$SHOAL_SECRETS_DIR/db-pass" && echo "at=$SHOAL_SECRETS_DIR"',
            ],
            "secrets": [{"source": "db-pass"}],
        },
        str(tmp_path),
        restart="none",
    )
    (tmp_path / "oneshot.yaml").write_text(oneshot)
    cli("apply", "-f", str(tmp_path / "oneshot.yaml"))
    wait_for(
        lambda: any(t["status"]["state"] == "complete" for t in cluster.tasks("oneshot", all=True)),
        60,
        "oneshot to complete",
    )
    at = Path(logs_of(cluster, "oneshot").split("at=")[1].split()[0])
    wait_for(lambda: not at.parent.exists(), 10, "the ended task's secret directory to go")
    assert not mounted(at.parent)

    for name in ("reader", "docker-reader", "podman-reader", "oneshot"):
        cli("delete", "service", name)
    wait_for(lambda: not task_dir.exists(), 10, "the secret directory to go")
    assert not mounted(task_dir)
    assert list((runtime_dir / "tasks").iterdir()) == []
    assert not processes_with_env("SHOAL_SERVICE", "reader")
    cli("secret", "rm", "db-pass")
    cli("config", "rm", "app-conf")
    assert json.loads(cli("secret", "ls", "-o", "json").stdout) == {"items": []}

    agent.stop()
    assert cluster.manager is not None
    cluster.manager.stop()
    leaks = [out for out in outputs if any(f.decode() in out for f in forms(secret))]
    assert not leaks
    assert not files_holding(tmp_path / "manager", secret)  # state.db, its WAL, the key
    assert not files_holding(tmp_path / "agents", secret)
    for log in tmp_path.glob("*.log"):
        assert not files_holding(log, secret), log


def test_etcd_keyspace_holds_no_secret_bytes(tmp_path: Path) -> None:
    secret = marker()
    digest = hashlib.sha256(secret).hexdigest()
    (tmp_path / "pass").write_bytes(secret)
    with etcd_cluster(tmp_path / "etcd", size=1) as etcd:
        port = free_port()
        address = f"127.0.0.1:{port}"
        join = f"127.0.0.1:{free_port()}"
        # The CLI finds the manager's admin bundle in its state dir.
        cli_env = {**os.environ, "SHOAL_STATE_DIR": str(tmp_path / "m")}
        manager = Daemon(
            "manager",
            shoal_cmd(
                "manager",
                "--store",
                etcd.url("shoal"),
                "--data-key-file",
                str(tmp_path / "datakey"),
                "--state-dir",
                str(tmp_path / "m"),
                "--listen",
                address,
                "--join-listen",
                join,
                "--heartbeat-period",
                "500ms",
            ),
            tmp_path / "manager.log",
        )
        manager.start()
        agent: Daemon | None = None

        def cli(*args: str) -> str:
            result = subprocess.run(
                shoal_cmd(*args, "--server", address),
                capture_output=True,
                text=True,
                timeout=60,
                env=cli_env,
            )
            assert result.returncode == 0, result.stderr
            return result.stdout + result.stderr

        try:
            wait_for(
                lambda: (
                    subprocess.run(
                        shoal_cmd("version", "--server", address),
                        capture_output=True,
                        env=cli_env,
                    ).returncode
                    == 0
                ),
                30,
                "manager on etcd",
            )
            token = cli("token", "worker").strip()
            agent = Daemon(
                "agent",
                shoal_cmd(
                    "agent",
                    "--manager",
                    address,
                    "--join",
                    join,
                    "--token",
                    token,
                    "--name",
                    f"e{secrets.token_hex(3)}",
                    "--state-dir",
                    str(tmp_path / "agent"),
                ),
                tmp_path / "agent.log",
            )
            agent.start()
            cli("secret", "create", "db-pass", "-f", str(tmp_path / "pass"))
            doc = service(
                "etcd-reader",
                {
                    "command": [
                        "sh",
                        "-c",
                        'echo "sha=$(sha256sum < "$SHOAL_SECRETS_DIR/db-pass")"; exec sleep 300',
                    ],
                    "secrets": [{"source": "db-pass", "mode": "0400"}],
                },
                str(tmp_path),
            )
            (tmp_path / "svc.yaml").write_text(doc)
            cli("apply", "-f", str(tmp_path / "svc.yaml"))
            wait_for(
                lambda: f"sha={digest}" in cli("logs", "etcd-reader"), 60, "the task to read it"
            )
            keyspace = etcd.etcdctl("get", "--prefix", "")
            assert "/shoal/secrets/db-pass" in keyspace
            assert all(form.decode() not in keyspace for form in forms(secret))
            cli("delete", "service", "etcd-reader")
        finally:
            if agent is not None:
                agent.stop()
            manager.stop()
            for pid in processes_with_env("E2E_RUN", str(tmp_path)):
                os.kill(pid, 9)
        assert not files_holding(tmp_path / "etcd", secret)  # the members' data dirs
        assert not files_holding(tmp_path / "agent", secret)
        for log in (tmp_path / "manager.log", tmp_path / "agent.log"):
            assert not files_holding(log, secret)
