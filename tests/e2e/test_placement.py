"""Placement end to end: spread over zones, replicas per node, GPUs, dependsOn healthy.

One cluster for the module: a manager and three agents, ``n1`` and ``n2`` in
zone ``a`` and ``n3`` in zone ``b``; ``n1`` advertises two GPUs
(``--resource gpu=2``). Tasks are real processes: where they run and what
they were told is read from ``/proc`` (their environment), why the rest
waits from ``shoal describe service``, and the order of starts from the
tasks' own timestamps.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, cluster_at, task_processes, wait_for

pytestmark = pytest.mark.slow

ZONES = {"n1": "a", "n2": "a", "n3": "b"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_at(tmp_path_factory.mktemp("placement")) as running:
        for name, zone in ZONES.items():
            extra = ["--resource", "gpu=2"] if name == "n1" else []
            running.start_agent(name, f"zone={zone}", extra_args=extra)
        yield running


@pytest.fixture
def clean(cluster: Cluster) -> Iterator[Cluster]:
    yield cluster
    for service in [
        s["metadata"]["name"] for s in cluster.call("Get", {"kind": "services"})["items"]
    ]:
        cluster.cli("delete", "service", service)


def processes(service: str) -> dict[str, tuple[int, dict[str, str]]]:
    """The live tasks of ``service`` in the process table: task id → (a pid, its environment).

    A task may show as more than one process (the runtime's wrapper and the
    command itself share the task's environment); it counts once.
    """
    return {
        env["SHOAL_TASK_ID"]: (pid, env) for pid, env in sorted(task_processes(service).items())
    }


def envs(service: str) -> list[dict[str, str]]:
    return [env for _, env in processes(service).values()]


def settle(cluster: Cluster, service: str, running: int, pending: int) -> list[dict[str, object]]:
    """Wait until ``running`` tasks run and ``pending`` wait with a reason; the live tasks."""

    def settled() -> bool:
        tasks = cluster.tasks(service)
        states = Counter(t["status"]["state"] for t in tasks)
        waiting = [t for t in tasks if t["status"]["state"] == "pending"]
        return (
            states
            == Counter(
                {"running": running, "pending": pending} if pending else {"running": running}
            )
            and all("no suitable node" in t["status"]["message"] for t in waiting)
            and len(processes(service)) == running
        )

    wait_for(settled, 60, f"{running} running and {pending} pending tasks of {service}")
    return cluster.tasks(service)


def test_six_replicas_spread_over_zones_a_a_b_go_three_to_each_zone(clean: Cluster) -> None:
    spread = {"preferences": [{"spread": "node.labels.zone"}]}
    clean.apply(clean.service("spread", ["sleep", "300"], replicas=6, placement=spread))
    settle(clean, "spread", 6, 0)
    # Where the processes run, from their own environment.
    by_zone = Counter(ZONES[env["SHOAL_NODE"]] for env in envs("spread"))
    assert by_zone == {"a": 3, "b": 3}


def test_max_replicas_per_node_leaves_one_pending_with_the_reason(clean: Cluster) -> None:
    placement = {"constraints": ["node.labels.zone == a"], "maxReplicasPerNode": 1}
    clean.apply(clean.service("one-each", ["sleep", "300"], replicas=3, placement=placement))
    settle(clean, "one-each", 2, 1)
    assert sorted(env["SHOAL_NODE"] for env in envs("one-each")) == ["n1", "n2"]
    described = clean.cli("describe", "service", "one-each").stdout
    assert "max replicas per node reached (maxReplicasPerNode 1)" in described
    assert "Unschedulable" in described and "1 task pending" in described
    assert "Max per node:" in described


def test_two_gpus_go_to_two_tasks_one_each_and_the_third_waits(clean: Cluster) -> None:
    gpu = {"resources": {"reservations": {"generic": {"gpu": 1}}}}
    clean.apply(clean.service("cuda", ["sleep", "300"], replicas=3, template=gpu))
    tasks = settle(clean, "cuda", 2, 1)
    running = envs("cuda")
    # Both on the node with GPUs, each told a different one, as the task says.
    assert {env["SHOAL_NODE"] for env in running} == {"n1"}
    assert sorted(env["SHOAL_RESOURCE_GPU"] for env in running) == ["0", "1"]
    told = {env["SHOAL_TASK_ID"]: env["SHOAL_RESOURCE_GPU"] for env in running}
    assert told == {
        str(t["id"]): ",".join(t["resources"]["gpu"])  # type: ignore[index]
        for t in tasks
        if t["status"]["state"] == "running"  # type: ignore[index]
    }
    described = clean.cli("describe", "service", "cuda").stdout
    assert "insufficient gpu (1 needed, 0 of 2 free)" in described
    assert "2 node(s): no gpu resource" in described
    assert "gpu=0" in described and "gpu=1" in described  # the RESOURCES column
    # A task that ends gives its GPU back: killed, its unit goes to another task.
    before = set(told)
    killed = sorted(before)[0]
    for pid, env in task_processes("cuda").items():
        if env["SHOAL_TASK_ID"] == killed:
            os.kill(pid, signal.SIGKILL)

    def reused() -> bool:
        now = {e["SHOAL_TASK_ID"]: e["SHOAL_RESOURCE_GPU"] for e in envs("cuda")}
        return len(now) == 2 and killed not in now and sorted(now.values()) == ["0", "1"]

    wait_for(reused, 60, "the killed task's GPU to be given again")


def test_a_dependent_starts_only_once_its_dependency_is_healthy(
    clean: Cluster, tmp_path: Path
) -> None:
    ready = tmp_path / "db-ready"
    db = clean.service(
        "db",
        ["sh", "-c", f"sleep 4; touch {ready}; exec sleep 300"],
        template={
            "healthcheck": {
                "exec": ["test", "-f", str(ready)],
                "interval": "300ms",
                "startPeriod": "20s",
            }
        },
    )
    web = clean.service(
        "web", ["sleep", "300"], dependsOn=[{"service": "db", "condition": "healthy"}]
    )
    clean.apply(f"{web}\n---\n{db}")  # the dependent first in the file
    described = clean.cli("describe", "service", "web").stdout
    assert "dependsOn: waiting for db to be healthy" in described
    assert clean.tasks("web", all=True) == []
    clean.wait_running("web", 1, timeout=60)
    assert len(processes("web")) == 1
    (db_task,) = clean.tasks("db", all=True)
    (web_task,) = clean.tasks("web", all=True)
    assert db_task["status"]["health"] == "healthy"
    healthy_at = datetime.fromisoformat(db_task["status"]["timestamp"])
    created = datetime.fromisoformat(web_task["createdAt"])
    started = datetime.fromisoformat(web_task["status"]["startedAt"])
    assert healthy_at <= created <= started
    # Checked from outside too: web's task came after db's readiness file.
    assert ready.stat().st_mtime <= created.timestamp()
    described = clean.cli("describe", "service", "web").stdout
    assert "DependenciesMet" in described and "waiting for db" not in described.split("Events")[0]
