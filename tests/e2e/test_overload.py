"""The control plane under faults of its own: a paused manager, mass outages, a taken port.

What happened is read from the outside: the store through the Control API
(node states, task ids and states, history included), ``/proc`` for the task
processes, ``/metrics`` and ``shoal cluster status`` for the guard. Nothing
here reads the daemons' logs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.cluster import (
    HEARTBEAT,
    Cluster,
    cluster_at,
    free_port,
    processes_with_env,
    shoal_cmd,
    task_processes,
    wait_for,
)

pytestmark = pytest.mark.slow

GRACE = 3 * HEARTBEAT


def metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def node_states(cluster: Cluster) -> dict[str, str]:
    nodes = cluster.call("Get", {"kind": "nodes"})["items"]
    return {str(n["id"]): str(n["status"]["state"]) for n in nodes}


def task_history(cluster: Cluster, service: str) -> dict[str, tuple[str, str]]:
    """Every task of ``service`` in the store, history included: id → (node, state)."""
    return {
        str(t["id"]): (str(t["nodeId"]), str(t["status"]["state"]))
        for t in cluster.tasks(service, all=True)
    }


def node_events(cluster: Cluster, node: str) -> list[str]:
    reply = cluster.call("Describe", {"kind": "nodes", "name": node})
    return [str(e["reason"]) for e in reply["events"]]


def watch(seconds: float, check: Any, interval: float = 0.2) -> None:
    """Assert ``check()`` holds at every look for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(interval)


# ------------------------------------------------------------ a paused manager


@pytest.fixture
def three_agents(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as cluster:
        for name in ("n1", "n2", "n3"):
            cluster.start_agent(name)
        yield cluster


def test_manager_paused_10s_declares_no_node_down_and_orphans_nothing(
    three_agents: Cluster,
) -> None:
    cluster = three_agents
    cluster.apply(cluster.service("ov-pause", ["sleep", "600"], replicas=6))
    cluster.wait_running("ov-pause", 6)
    before = task_history(cluster, "ov-pause")
    pids = set(task_processes("ov-pause"))
    assert cluster.manager is not None

    cluster.manager.signal(signal.SIGSTOP)
    try:
        time.sleep(10)
    finally:
        cluster.manager.signal(signal.SIGCONT)

    def unchanged() -> None:
        assert set(node_states(cluster).values()) == {"ready"}
        assert task_history(cluster, "ov-pause") == before

    # Longer than several graces after the pause: time enough to (wrongly) act.
    watch(4 * GRACE + 2, unchanged)
    assert set(task_processes("ov-pause")) == pids
    for node in ("n1", "n2", "n3"):
        assert "NodeDown" not in node_events(cluster, node)


# ------------------------------------------------------ the disruption guard


def sim_service(cluster: Cluster, name: str, replicas: int) -> str:
    return cluster.service(name, ["sim"], replicas=replicas, template={"runtime": "sim"})


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[Cluster, int]]:
    port = free_port()
    cluster = Cluster(tmp_path)
    try:
        cluster.start_manager(extra_args=("--metrics-listen", f"127.0.0.1:{port}"))
        yield cluster, port
    finally:
        cluster.stop_all()
        for pid in processes_with_env("E2E_RUN", str(tmp_path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def guard_condition(cluster: Cluster) -> dict[str, Any]:
    conditions = cluster.call("ClusterStatus", {})["conditions"]
    return next(c for c in conditions if c["type"] == "DisruptionGuard")


def test_killing_60_percent_of_the_nodes_engages_the_guard_and_orphans_nothing(
    metered: tuple[Cluster, int],
) -> None:
    cluster, metrics_port = metered
    cluster.start_fleet("keep", 4)
    big = cluster.start_fleet("big", 6)
    cluster.apply(sim_service(cluster, "ov-guard", 20))
    cluster.wait_running("ov-guard", 20)
    before = task_history(cluster, "ov-guard")
    assert {node.split("-")[0] for node, _ in before.values()} == {"keep", "big"}
    assert metric(metrics_port, "shoal_disruption_guard_engaged") == 0.0

    big.kill()

    wait_for(lambda: guard_condition(cluster)["engaged"], GRACE + 10, "the guard to engage")
    condition = guard_condition(cluster)
    assert (condition["silentNodes"], condition["nodesInService"]) == (6, 10)
    assert "DisruptionGuardEngaged" in [e["reason"] for e in condition["events"]]
    assert metric(metrics_port, "shoal_disruption_guard_engaged") == 1.0
    status = cluster.cli("cluster", "status", check=False)
    assert status.returncode == 1
    assert "DisruptionGuard" in status.stdout and "ENGAGED" in status.stdout

    def nothing_orphaned() -> None:
        assert task_history(cluster, "ov-guard") == before
        states = node_states(cluster)
        assert {s for n, s in states.items() if n.startswith("big-")} == {"unknown"}
        assert {s for n, s in states.items() if n.startswith("keep-")} == {"ready"}

    watch(4 * GRACE + 2, nothing_orphaned)

    # The fleet comes back: it adopts its tasks, nothing was replaced.
    big.start()
    wait_for(lambda: set(node_states(cluster).values()) == {"ready"}, 30, "every node ready again")
    wait_for(lambda: not guard_condition(cluster)["engaged"], 10, "the guard to release")
    assert metric(metrics_port, "shoal_disruption_guard_engaged") == 0.0
    watch(2 * GRACE, lambda: None)
    after = task_history(cluster, "ov-guard")
    assert set(after) == set(before)
    assert {state for _, state in after.values()} == {"running"}
    assert cluster.cli("cluster", "status", check=False).returncode == 0


def test_killing_10_percent_of_the_nodes_replaces_their_tasks(
    metered: tuple[Cluster, int],
) -> None:
    cluster, _ = metered
    cluster.start_fleet("keep", 9)
    small = cluster.start_fleet("small", 1)
    cluster.apply(sim_service(cluster, "ov-small", 20))
    cluster.wait_running("ov-small", 20)
    lost = {t for t, (node, _) in task_history(cluster, "ov-small").items() if node == "small-0"}
    assert len(lost) == 2

    small.kill()

    wait_for(lambda: node_states(cluster)["small-0"] == "down", GRACE + 10, "small-0 down")
    wait_for(
        lambda: (
            len(cluster.running("ov-small")) == 20
            and all(str(t["nodeId"]).startswith("keep-") for t in cluster.running("ov-small"))
        ),
        20,
        "every task on the surviving nodes",
    )
    history = task_history(cluster, "ov-small")
    assert {history[t][1] for t in lost} == {"orphaned"}
    assert not guard_condition(cluster)["engaged"]


def test_a_manager_restart_brings_every_session_back_and_moves_nothing(
    metered: tuple[Cluster, int],
) -> None:
    cluster, _ = metered
    cluster.start_fleet("herd", 300)
    cluster.apply(sim_service(cluster, "ov-herd", 300))
    cluster.wait_running("ov-herd", 300, timeout=60)
    before = task_history(cluster, "ov-herd")
    registered = {str(n["id"]): n["status"]["updatedAt"] for n in nodes(cluster)}
    assert cluster.manager is not None

    # 300 sessions are lost at once; the agents must find the new manager
    # without overrunning it and before their grace is out.
    cluster.manager.kill()
    cluster.start_manager()

    def all_back() -> bool:
        current = {str(n["id"]): n for n in nodes(cluster)}
        return all(
            current[name]["status"]["state"] == "ready"
            and current[name]["status"]["updatedAt"] != registered[name]
            for name in registered
        )

    wait_for(all_back, 60, "every node to register with the new manager")
    watch(4 * GRACE, lambda: None)
    assert set(node_states(cluster).values()) == {"ready"}
    assert task_history(cluster, "ov-herd") == before


def nodes(cluster: Cluster) -> list[dict[str, Any]]:
    return list(cluster.call("Get", {"kind": "nodes"})["items"])


# ---------------------------------------------------------- a port in use


def test_a_second_cluster_on_a_port_in_use_refuses_to_start_and_says_so(
    three_agents: Cluster, tmp_path: Path
) -> None:
    cluster = three_agents
    second = subprocess.run(
        shoal_cmd("up", "--state-dir", str(tmp_path / "second"), "--listen", cluster.address),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert second.returncode == 1
    assert f"cannot listen on {cluster.address}: the address is in use" in second.stderr
    # The first cluster still answers every call, alone.
    for _ in range(20):
        assert sorted(node_states(cluster)) == ["n1", "n2", "n3"]
