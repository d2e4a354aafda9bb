"""Compose stacks end to end: a real manager and agent, the real Docker engine, real processes.

One cluster serves the module (each test uses stacks of its own names); what
ran is counted from the engine (containers by their shoal labels), from
``/proc`` (processes) and from the store (tasks and their timestamps).
"""

from __future__ import annotations

import secrets
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import (
    Cluster,
    cluster_at,
    task_processes,
    tasks_in_process_table,
    wait_for,
)
from tests.engines import TEST_IMAGE, client, ensure_test_image, remove_node_containers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node() -> str:
    return f"st{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, node: str) -> Iterator[Cluster]:
    ensure_test_image("docker")
    root = tmp_path_factory.mktemp("stack")
    with cluster_at(root) as running:
        running.start_agent(node)
        yield running
    remove_node_containers("docker", node)


def containers(node: str, service: str) -> dict[str, str]:
    """Running containers of ``service`` on ``node``: task id → container id."""
    found = {}
    for container in client("docker").containers.list(filters={"label": f"io.shoal.node={node}"}):
        labels = container.labels
        if labels.get("io.shoal.service") == service:
            found[labels.get("io.shoal.task-id", "")] = container.id
    return found


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def task_ids(cluster: Cluster, service: str) -> set[str]:
    return {t["id"] for t in cluster.running(service)}


STACK = """\
    services:
      web:
        image: {image}
        command: ["sleep", "300"]
        init: true
        stop_grace_period: 1s
        environment:
          GREETING: ${{GREETING:-hello}}
        secrets: [token]
        deploy:
          replicas: 2
          restart_policy: {{condition: any, delay: 200ms}}
        logging: {{driver: json-file}}
      worker:
        image: {image}
        entrypoint: ["sh", "-c"]
        command: ["cat /run/secrets/token; exec sleep 300"]
        init: true
        stop_grace_period: 1s
        secrets: [token]
        read_only: true
        ulimits:
          nofile: {{soft: 1024, hard: 2048}}
      ticker:
        command: ["sh", "-c", "exec sleep 300"]
        environment:
          E2E_RUN: {run}
        stop_grace_period: 1s
        x-shoal: {{runtime: process}}
    secrets:
      token:
        file: ./token.txt
"""


def test_deploy_redeploy_without_a_service_then_remove(
    cluster: Cluster, node: str, tmp_path: Path
) -> None:
    project = tmp_path / "shop"
    write(project, "token.txt", "t0ken\n")
    compose = write(project, "compose.yaml", STACK.format(image=TEST_IMAGE, run=cluster.root))

    deployed = cluster.cli("stack", "deploy", "-c", str(compose), "shop")
    assert deployed.stdout.splitlines()[0] == "secret/shop_token created"
    assert sorted(deployed.stdout.splitlines()[1:]) == [
        "service/shop-ticker created (revision 1)",
        "service/shop-web created (revision 1)",
        "service/shop-worker created (revision 1)",
    ]
    assert "services.web.logging: ignored:" in deployed.stderr
    for service, count in (("shop-web", 2), ("shop-worker", 1), ("shop-ticker", 1)):
        cluster.wait_running(service, count, timeout=60)
    # The engine runs the containers, /proc the process.
    assert set(containers(node, "shop-web")) == task_ids(cluster, "shop-web")
    assert set(containers(node, "shop-worker")) == task_ids(cluster, "shop-worker")
    assert tasks_in_process_table("shop-ticker") == task_ids(cluster, "shop-ticker")
    # What the engine was asked for: the interpolated default, the limits, a read-only root.
    (web_id, *_) = containers(node, "shop-web").values()
    assert "GREETING=hello" in client("docker").containers.get(web_id).attrs["Config"]["Env"]
    (worker_id,) = containers(node, "shop-worker").values()
    host = client("docker").containers.get(worker_id).attrs["HostConfig"]
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert host["ReadonlyRootfs"] is True
    # The secret reached the container: the worker printed it.
    wait_for(
        lambda: "t0ken" in cluster.cli("logs", "shop-worker").stdout, 20, "the worker's output"
    )

    listed = cluster.cli("stack", "ls").stdout.splitlines()
    assert listed[0].split() == ["NAME", "SERVICES"]
    assert ["shop", "3"] in [line.split() for line in listed[1:]]
    services = cluster.cli("stack", "services", "shop").stdout
    assert {line.split()[0] for line in services.splitlines()[1:]} == {
        "shop-web",
        "shop-worker",
        "shop-ticker",
    }

    # Redeploy without the worker: it is pruned, the others keep their tasks.
    kept = {name: task_ids(cluster, name) for name in ("shop-web", "shop-ticker")}
    text = compose.read_text()
    start = text.index("  worker:")
    compose.write_text(text[:start] + text[text.index("  ticker:") :])
    again = cluster.cli("stack", "deploy", "-c", str(compose), "shop")
    assert sorted(again.stdout.splitlines()) == [
        "service/shop-ticker unchanged",
        "service/shop-web unchanged",
        "service/shop-worker pruned",
    ]
    wait_for(lambda: not containers(node, "shop-worker"), 30, "the worker's container to go")
    assert {name: task_ids(cluster, name) for name in kept} == kept
    assert set(containers(node, "shop-web")) == kept["shop-web"]

    # A changed secret is refused, and nothing changes.
    (project / "token.txt").write_text("changed\n")
    refused = cluster.cli("stack", "deploy", "-c", str(compose), "shop", check=False)
    assert refused.returncode == 1
    assert "secret shop_token (from file ./token.txt) exists with other bytes" in refused.stderr
    assert {name: task_ids(cluster, name) for name in kept} == kept

    removed = cluster.cli("stack", "rm", "shop")
    assert sorted(removed.stdout.splitlines()) == [
        "secret/shop_token removed",
        "service/shop-ticker removed",
        "service/shop-web removed",
    ]
    assert not containers(node, "shop-web")
    assert not task_processes("shop-ticker")
    assert cluster.call("Get", {"kind": "services"})["items"] == []
    assert cluster.call("GetSecrets", {})["items"] == []
    gone = cluster.cli("stack", "services", "shop", check=False)
    assert (gone.returncode, gone.stderr) == (1, "error: stack 'shop' not found\n")


def test_a_bad_file_deploys_nothing(cluster: Cluster, tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "compose.yaml",
        """\
        services:
          web:
            image: busybox
            environment: ["A=${X:?X is required}"]
          db:
            image: busybox
            volumes_from: [web]
        """,
    )
    result = cluster.cli("stack", "deploy", "-c", str(compose), "bad", check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: 2 problems in the spec; nothing was applied:",
        f"{compose}:4: services.web.environment[0]: X is required",
        f"{compose}:7: services.db.volumes_from: refused: tasks share no volumes by container: "
        "use a named volume",
    ]
    assert [s["metadata"]["name"] for s in _services(cluster)] == []


def _services(cluster: Cluster) -> list[dict[str, Any]]:
    return [
        s
        for s in cluster.call("Get", {"kind": "services"})["items"]
        if s["metadata"]["labels"].get("shoal.stack") == "bad"
    ]


def test_depends_on_service_healthy_holds_the_dependent(
    cluster: Cluster, node: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    compose = write(
        tmp_path,
        "compose.yaml",
        f"""\
        services:
          api:
            image: {TEST_IMAGE}
            command: ["sleep", "300"]
            init: true
            stop_grace_period: 1s
            depends_on:
              db:
                condition: service_healthy
          db:
            image: {TEST_IMAGE}
            command: ["sh", "-c", "sleep 3; touch /shared/ready; exec sleep 300"]
            init: true
            stop_grace_period: 1s
            volumes: ["{shared}:/shared"]
            healthcheck:
              test: ["CMD", "test", "-f", "/shared/ready"]
              interval: 300ms
              timeout: 2s
              start_period: 20s
        """,
    )
    deployed = cluster.cli("stack", "deploy", "-c", str(compose), "dep")
    assert "depends_on" not in deployed.stderr  # applied, so not reported
    assert cluster.tasks("dep-api", all=True) == []
    cluster.wait_running("dep-api", 1, timeout=60)
    (db_task,) = cluster.tasks("dep-db", all=True)
    (api_task,) = cluster.tasks("dep-api", all=True)
    assert db_task["status"]["health"] == "healthy"
    healthy_at = datetime.fromisoformat(db_task["status"]["timestamp"])
    created = datetime.fromisoformat(api_task["createdAt"])
    started = datetime.fromisoformat(api_task["status"]["startedAt"])
    assert healthy_at <= created <= started
    # From outside too: the dependent's task came after the file that made db healthy.
    assert (shared / "ready").stat().st_mtime <= created.timestamp()
    assert set(containers(node, "dep-api")) == {api_task["id"]}
    cluster.cli("stack", "rm", "dep")


def test_a_deploy_the_manager_refuses_leaves_no_secret_behind(
    cluster: Cluster, tmp_path: Path
) -> None:
    write(tmp_path, "pw.txt", "s3cret\n")
    compose = write(
        tmp_path,
        "compose.yaml",
        f"""\
        services:
          app:
            image: {TEST_IMAGE}
            command: ["sleep", "300"]
            secrets: [pw]
            configs: [settings]
        secrets:
          pw: {{file: ./pw.txt}}
        configs:
          settings: {{external: true}}
        """,
    )
    refused = cluster.cli("stack", "deploy", "-c", str(compose), "half", check=False)
    assert refused.returncode == 1 and "no config named 'settings'" in refused.stderr
    secrets_left = cluster.cli("secret", "ls", "-o", "json").stdout
    assert "half_pw" not in secrets_left
    assert cluster.cli("stack", "rm", "half", check=False).returncode == 1  # nothing to remove

    # A stack left with secrets only (its services deleted by hand) can still be removed.
    kept = write(
        tmp_path / "kept",
        "compose.yaml",
        f"""\
        services:
          app:
            image: {TEST_IMAGE}
            command: ["sleep", "300"]
            secrets: [pw]
        secrets:
          pw: {{file: ./pw.txt}}
        """,
    )
    write(tmp_path / "kept", "pw.txt", "s3cret\n")
    cluster.cli("stack", "deploy", "-c", str(kept), "kept")
    cluster.cli("delete", "service", "kept-app")
    removed = cluster.cli("stack", "rm", "kept")
    assert "secret/kept_pw removed" in removed.stdout
    assert "kept_pw" not in cluster.cli("secret", "ls", "-o", "json").stdout
