"""Several agents and the faults an orchestrator exists for.

Global services, drain, an agent that stops, an agent that is SIGKILLed and
restarted (adoption), a manager that is SIGKILLed in the middle of applies.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import cluster as cluster_module
from tests.e2e.cluster import (
    HEARTBEAT,
    Cluster,
    cluster_at,
    free_port,
    task_processes,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        for name in ("n1", "n2", "n3"):
            running.start_agent(name, f"zone={'a' if name != 'n3' else 'b'}")
        yield running


@pytest.fixture
def slow_heartbeat_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """Heartbeats every 2 s (down after 6 s): a SIGKILLed agent started again
    takes about 1.5 s to import and register here, as long as the usual 1.5 s
    grace, so with it the node would be declared down before it could adopt."""
    monkeypatch.setattr(cluster_module, "HEARTBEAT", 2.0)
    with cluster_at(tmp_path) as running:
        for name in ("n1", "n2", "n3"):
            running.start_agent(name, f"zone={'a' if name != 'n3' else 'b'}")
        yield running


def agent_metric(port: int, name: str) -> float | None:
    """The sum of a metric's samples on an agent's /metrics (None: not answering or not there)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
    return sum(values) if values else None


def nodes_of(tasks: list[dict[str, object]]) -> list[str]:
    return sorted(str(t["nodeId"]) for t in tasks)


def test_global_service_runs_one_task_per_agent(cluster: Cluster) -> None:
    cluster.apply(cluster.service("ft-global", ["sleep", "300"], replicas=None, mode="global"))

    tasks = cluster.wait_running("ft-global", 3)

    assert nodes_of(tasks) == ["n1", "n2", "n3"]
    node_of_task = {
        env["SHOAL_TASK_ID"]: env["SHOAL_NODE"] for env in task_processes("ft-global").values()
    }
    assert sorted(node_of_task.values()) == ["n1", "n2", "n3"]


def test_constraints_place_only_on_matching_nodes(cluster: Cluster) -> None:
    cluster.apply(
        cluster.service(
            "ft-zone",
            ["sleep", "300"],
            replicas=4,
            placement={"constraints": ["node.labels.zone == a"]},
        )
    )
    tasks = cluster.wait_running("ft-zone", 4)
    assert nodes_of(tasks) == ["n1", "n1", "n2", "n2"]


def test_drained_node_is_emptied_and_its_tasks_move(cluster: Cluster) -> None:
    cluster.apply(cluster.service("ft-drain", ["sleep", "300"], replicas=6))
    tasks = cluster.wait_running("ft-drain", 6)
    assert nodes_of(tasks) == ["n1", "n1", "n2", "n2", "n3", "n3"]

    cluster.cli("node", "update", "n2", "--availability", "drain")

    wait_for(
        lambda: nodes_of(cluster.running("ft-drain")) == ["n1", "n1", "n1", "n3", "n3", "n3"],
        15,
        "tasks to leave n2",
    )
    wait_for(
        lambda: all(env["SHOAL_NODE"] != "n2" for env in task_processes("ft-drain").values()),
        15,
        "n2's processes to stop",
    )


def test_stopped_agent_tasks_run_elsewhere_after_heartbeat_grace(cluster: Cluster) -> None:
    cluster.apply(cluster.service("ft-lost", ["sleep", "300"], replicas=3))
    tasks = cluster.wait_running("ft-lost", 3)
    assert nodes_of(tasks) == ["n1", "n2", "n3"]

    cluster.agents["n3"].stop()
    stopped = time.monotonic()

    wait_for(lambda: cluster.node_state("n3") == "down", 10, "n3 to be down")
    wait_for(
        lambda: nodes_of(cluster.running("ft-lost")) in (["n1", "n1", "n2"], ["n1", "n2", "n2"]),
        10,
        "n3's task to run elsewhere",
    )
    assert time.monotonic() - stopped < 3 * HEARTBEAT + 5

    # The agent comes back: the orphaned process it left running is stopped.
    cluster.start_agent("n3", "zone=b")
    wait_for(
        lambda: all(env["SHOAL_NODE"] != "n3" for env in task_processes("ft-lost").values()),
        15,
        "the orphaned process on n3 to stop",
    )
    assert len(cluster.running("ft-lost")) == 3


def test_agent_sigkill_and_restart_adopts_running_tasks(slow_heartbeat_cluster: Cluster) -> None:
    cluster = slow_heartbeat_cluster
    cluster.apply(cluster.service("ft-adopt", ["sleep", "300"], replicas=3))
    running = cluster.wait_running("ft-adopt", 3)
    before = {t["id"]: t["status"]["pid"] for t in running}
    on_n1 = sum(1 for t in running if t["nodeId"] == "n1")
    processes_before = set(task_processes("ft-adopt"))

    agent = cluster.agents["n1"]
    agent.kill()  # SIGKILL: no chance to clean up
    metrics = free_port()
    cluster.start_agent("n1", "zone=a", extra_args=["--metrics-listen", f"127.0.0.1:{metrics}"])
    # The restarted agent drives a runner for each of its tasks once it has the
    # full assignment set: from then on it has decided, adopt or start.
    wait_for(lambda: agent_metric(metrics, "shoal_agent_tasks") == on_n1, 20, "n1's runners")
    time.sleep(4 * cluster_module.HEARTBEAT)  # past the grace: time to (wrongly) restart anything

    after = {t["id"]: t["status"]["pid"] for t in cluster.running("ft-adopt")}
    assert after == before
    assert set(task_processes("ft-adopt")) == processes_before
    assert agent_metric(metrics, "shoal_agent_task_starts_total") == 0  # adopted, not started
    # And the adopted tasks are still supervised: a killed one is replaced.
    victim_id, victim_pid = next(
        (t["id"], t["status"]["pid"]) for t in running if t["nodeId"] == "n1"
    )
    os.kill(victim_pid, signal.SIGKILL)
    wait_for(
        lambda: (
            victim_id not in {t["id"] for t in cluster.running("ft-adopt")}
            and len(cluster.running("ft-adopt")) == 3
        ),
        10,
        "the adopted task's replacement",
    )
    failed = next(t for t in cluster.tasks("ft-adopt", all=True) if t["id"] == victim_id)
    assert failed["status"]["state"] == "failed"


def test_manager_sigkill_during_applies_loses_no_acknowledged_apply(tmp_path: Path) -> None:
    with cluster_at(tmp_path) as cluster:
        acknowledged: list[str] = []
        stop = threading.Event()

        def apply_stream() -> None:
            index = 0
            while not stop.is_set():
                name = f"ft-ack-{index}"
                path = tmp_path / f"{name}.yaml"
                path.write_text(cluster.service(name, ["sleep", "300"], replicas=0))
                result = cluster.cli("apply", "-f", str(path), check=False, timeout=30)
                if result.returncode == 0 and f"service/{name} created" in result.stdout:
                    acknowledged.append(name)
                index += 1

        writer = threading.Thread(target=apply_stream)
        writer.start()
        wait_for(lambda: len(acknowledged) >= 5, 60, "some acknowledged applies")
        assert cluster.manager is not None
        cluster.manager.kill()
        killed_with = len(acknowledged)
        time.sleep(0.5)
        cluster.manager.start()
        wait_for(lambda: cluster.try_call("Version", {}) is not None, 20, "manager restart")
        wait_for(lambda: len(acknowledged) >= killed_with + 3, 60, "applies after restart")
        stop.set()
        writer.join(60)

        stored = {s["metadata"]["name"] for s in cluster.call("Get", {"kind": "services"})["items"]}
        missing = [name for name in acknowledged if name not in stored]
        assert not missing
