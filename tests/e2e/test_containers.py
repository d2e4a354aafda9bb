"""Container services end to end: real manager and agents, real Docker and Podman.

Node names are unique per test (several people, and CI, may share an engine),
and every container a test's agents made is removed afterwards by its node label.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import cluster as cluster_module
from tests.e2e.cluster import Cluster, cluster_at, wait_for
from tests.engines import TEST_IMAGE, client, ensure_test_image, remove_node_containers

pytestmark = pytest.mark.slow


@pytest.fixture
def node() -> str:
    return f"c{secrets.token_hex(3)}"


@pytest.fixture
def cluster(tmp_path: Path, node: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    for engine in ("docker", "podman"):
        ensure_test_image(engine)
    # Heartbeats every 2s (down after 6s): a restarted agent importing the engine
    # SDKs must not be taken for a dead node while it comes back.
    monkeypatch.setattr(cluster_module, "HEARTBEAT", 2.0)
    with cluster_at(tmp_path) as running:
        yield running
    for engine in ("docker", "podman"):
        for suffix in ("", "-2"):
            remove_node_containers(engine, node + suffix)


def container_service(
    name: str, runtime: str, replicas: int = 1, restart: str = "any", **template: Any
) -> str:
    doc = {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "restartPolicy": {"condition": restart, "delay": "200ms"},
            "template": {
                "runtime": runtime,
                "image": TEST_IMAGE,
                "command": ["sleep", "300"],
                "init": True,
                "stopGracePeriod": "1s",
                **template,
            },
        },
    }
    return json.dumps(doc)


def containers_of(engine: str, node: str) -> dict[str, tuple[str, str]]:
    """Running containers an agent on ``node`` made: task id → (container id, started at)."""
    found = {}
    sdk = client(engine)
    for listed in sdk.containers.list(filters={"label": f"io.shoal.node={node}"}):
        try:
            container = sdk.containers.get(listed.id)  # the full inspect document
        except Exception:  # removed since it was listed (docker and podman raise their own)
            continue
        state = container.attrs["State"]
        found[container.labels["io.shoal.task-id"]] = (container.id, state["StartedAt"])
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_agent_sigkill_adopts_containers_and_removes_unassigned_ones(
    cluster: Cluster, node: str, engine: str
) -> None:
    agent = cluster.start_agent(node)
    cluster.apply(container_service("ct-adopt", engine, replicas=3, args=[]))
    cluster.wait_running("ct-adopt", 3, timeout=60)
    before = containers_of(engine, node)
    assert len(before) == 3
    # A container nobody from shoal made, and one of another agent on this engine.
    sdk = client(engine)
    strangers = [
        sdk.containers.run(TEST_IMAGE, ["sleep", "300"], detach=True),
        sdk.containers.run(
            TEST_IMAGE,
            ["sleep", "300"],
            detach=True,
            labels={"io.shoal.node": node + "-2", "io.shoal.task-id": "not-ours"},
        ),
    ]
    try:
        agent.kill()  # SIGKILL: no clean-up of any kind
        cluster.call("Scale", {"replicas": {"ct-adopt": 2}})  # one task is no longer assigned
        cluster.start_agent(node)
        tasks = cluster.wait_running("ct-adopt", 2, timeout=60)
        wanted = {t["id"] for t in tasks}
        wait_for(lambda: set(containers_of(engine, node)) == wanted, 30, "unassigned removed")
        after = containers_of(engine, node)
        assert {t: before[t] for t in wanted} == after  # same ids, same start times
        for stranger in strangers:
            stranger.reload()
            assert stranger.status == "running"
        logs = cluster.cli("logs", "ct-adopt", "--tail", "5").stdout
        assert logs == "" or "ct-adopt" in logs
    finally:
        for stranger in strangers:
            stranger.remove(force=True)


def test_logs_exit_codes_and_oom_show_in_task_status(cluster: Cluster, node: str) -> None:
    cluster.start_agent(node)
    cluster.apply(
        container_service(
            "ct-exit",
            "docker",
            command=["sh", "-c", "echo hello from the container; exit 3"],
            restart="none",
        )
    )
    wait_for(
        lambda: any(t["status"]["state"] == "failed" for t in cluster.tasks("ct-exit", all=True)),
        30,
        "the task to fail",
    )
    (task,) = cluster.tasks("ct-exit", all=True)
    assert task["status"]["exitCode"] == 3
    assert "exited with code 3" in task["status"]["message"]
    assert "hello from the container" in cluster.cli("logs", "ct-exit").stdout

    oom = container_service(
        "ct-oom",
        "docker",
        command=["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=4"],
        resources={"limits": {"memory": "16Mi"}},
        restart="none",
    )
    cluster.apply(oom, name="oom.yaml")
    wait_for(
        lambda: any(t["status"]["state"] == "failed" for t in cluster.tasks("ct-oom", all=True)),
        30,
        "the OOM kill",
    )
    (task,) = cluster.tasks("ct-oom", all=True)
    assert task["status"]["exitCode"] == 137
    assert "out of memory" in task["status"]["message"]


@pytest.mark.parametrize("runtime", ["process", "docker"])
def test_health_gates_running_and_unhealthy_tasks_are_replaced(
    cluster: Cluster, node: str, runtime: str, tmp_path: Path
) -> None:
    flag = tmp_path / "flags"
    flag.mkdir()
    cluster.start_agent(node)
    check = {
        "exec": ["sh", "-c", f'test -e {flag}/"$SHOAL_TASK_ID" || test -e {flag}/all'],
        "interval": "200ms",
        "timeout": "2s",
        "retries": 2,
    }
    if runtime == "process":
        spec = cluster.service("ct-health", ["sleep", "300"], replicas=1)
        doc = json.loads(spec)
        doc["spec"]["template"]["healthcheck"] = check
        doc["spec"]["restartPolicy"] = {"delay": "200ms"}
        spec = json.dumps(doc)
        # An exec probe of a process task runs on the node: it has no $SHOAL_TASK_ID.
        check["exec"] = ["test", "-e", f"{flag}/all"]
        doc["spec"]["template"]["healthcheck"] = check
        spec = json.dumps(doc)
    else:
        spec = container_service(
            "ct-health",
            "docker",
            healthcheck=check,
            mounts=[{"type": "bind", "source": str(flag), "target": str(flag)}],
        )
    cluster.apply(spec)

    wait_for(lambda: cluster.tasks("ct-health"), 30, "a task")
    wait_for(
        lambda: cluster.tasks("ct-health")[0]["status"].get("health") == "starting",
        30,
        "the task to start",
    )
    time.sleep(1.0)  # probes fail meanwhile, but the start period is not over... it is 0s:
    # failing probes before the first success do count; the task is replaced, still starting.
    (flag / "all").touch()
    wait_for(lambda: len(cluster.running("ct-health")) == 1, 30, "a healthy task")
    (task,) = cluster.running("ct-health")
    assert task["status"]["health"] == "healthy"
    table = cluster.cli("get", "tasks", "--service", "ct-health").stdout
    assert "running (healthy)" in table
    assert "Healthcheck" in cluster.cli("describe", "service", "ct-health").stdout

    (flag / "all").unlink()
    wait_for(
        lambda: any(
            t["id"] == task["id"] and t["status"]["state"] == "failed"
            for t in cluster.tasks("ct-health", all=True)
        ),
        30,
        "the unhealthy task to fail",
    )
    failed = next(t for t in cluster.tasks("ct-health", all=True) if t["id"] == task["id"])
    assert failed["status"]["health"] == "unhealthy"
    assert "unhealthy: exec probe failed 2 time(s) in a row" in failed["status"]["message"]
    (flag / "all").touch()
    wait_for(
        lambda: [t["id"] for t in cluster.running("ct-health")] not in ([], [task["id"]]),
        30,
        "a new healthy task in the slot",
    )


def test_two_tasks_never_share_a_host_port_on_a_node(cluster: Cluster, node: str) -> None:
    cluster.start_agent(node)
    port = free_port()
    script = f"mkdir /www; echo port-{port} > /www/index.html; exec httpd -f -p 80 -h /www"
    cluster.apply(
        container_service(
            "ct-web",
            "docker",
            replicas=2,
            command=["sh", "-c", script],
            ports=[{"published": port, "target": 80}],
            healthcheck={"http": {"port": 80, "path": "/index.html"}, "interval": "200ms"},
        )
    )
    wait_for(lambda: len(cluster.running("ct-web")) == 1, 60, "one web task")
    time.sleep(1.0)
    tasks = cluster.tasks("ct-web")
    pending = [t for t in tasks if t["status"]["state"] == "pending"]
    assert len(pending) == 1
    assert f"host port {port}/tcp already in use" in pending[0]["status"]["message"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        assert f"port-{port}" in sock.makefile().read()


def start_podman_service(sock: Path) -> subprocess.Popen[bytes]:
    sock.unlink(missing_ok=True)
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        cwd=sock.parent,  # conmon drops files into its cwd
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(sock.exists, 20, "a Podman API socket of the test's own")
    return service


def test_engine_stopped_under_a_running_agent(cluster: Cluster, node: str, tmp_path: Path) -> None:
    """n1's Podman API goes away: n1 stops advertising podman, its task runs on n2 instead."""
    sock = tmp_path / "podman.sock"
    service = start_podman_service(sock)
    try:
        first, second = node, node + "-2"
        probe = ["--probe-period", "500ms"]
        cluster.start_agent(
            first, extra_args=[*probe, "--runtime-opt", f"podman.socket=unix://{sock}"]
        )
        cluster.start_agent(second, extra_args=probe)
        cluster.apply(container_service("ct-engine", "podman", replicas=2))
        tasks = cluster.wait_running("ct-engine", 2, timeout=60)
        assert sorted(t["nodeId"] for t in tasks) == sorted([first, second])

        os.killpg(service.pid, signal.SIGKILL)
        service.wait(10)

        def podman_gone_from_first() -> bool:
            nodes = cluster.call("Get", {"kind": "nodes"})["items"]
            (n1,) = [n for n in nodes if n["id"] == first]
            return not any(
                r["name"] == "podman" and r["available"] for r in n1["description"]["runtimes"]
            )

        wait_for(podman_gone_from_first, 30, f"{first} to stop advertising podman")
        wait_for(
            lambda: sorted(t["nodeId"] for t in cluster.running("ct-engine")) == [second] * 2,
            60,
            f"both tasks on {second}",
        )

        # The API going away did not stop the container (conmon keeps it): once
        # the engine answers again, the agent removes what it no longer runs.
        assert containers_of("podman", first)
        service = start_podman_service(sock)
        wait_for(lambda: not containers_of("podman", first), 30, f"{first}'s old container gone")
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait(10)
