"""Simulated nodes (``shoal agent --sim-nodes``) and the ``sim`` runtime, end to end.

The manager must not be able to tell a simulated node from a real one: each
gets its own session, heartbeats and assignments, goes down when its process
dies, and its tasks are replaced elsewhere.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import HEARTBEAT, Cluster, cluster_at, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        yield running


def ready_nodes(cluster: Cluster, prefix: str) -> list[dict[str, object]]:
    nodes = (cluster.try_call("Get", {"kind": "nodes"}) or {}).get("items", [])
    return [
        n
        for n in nodes
        if str(n["id"]).startswith(f"{prefix}-") and n["status"]["state"] == "ready"
    ]


def sim_service(
    cluster: Cluster, name: str, replicas: int, sim: dict[str, object] | None = None, **spec: object
) -> str:
    template: dict[str, object] = {"runtime": "sim"}
    if sim is not None:
        template["sim"] = sim
    return cluster.service(name, ["sim"], replicas=replicas, template=template, **spec)


def test_simulated_nodes_register_separately_and_share_the_work(cluster: Cluster) -> None:
    cluster.start_fleet("sim", 12)
    nodes = ready_nodes(cluster, "sim")
    assert sorted(str(n["id"]) for n in nodes) == [f"sim-{i:02d}" for i in range(12)]
    for node in nodes:
        description = node["description"]
        assert isinstance(description, dict)
        assert description["hostname"] == node["id"]
        assert [r["name"] for r in description["runtimes"] if r["available"]] == ["sim"]

    cluster.apply(sim_service(cluster, "sm-spread", 36))
    tasks = cluster.wait_running("sm-spread", 36)

    per_node = collections.Counter(str(t["nodeId"]) for t in tasks)
    assert sorted(per_node.values()) == [3] * 12


def test_a_dead_fleet_is_seen_as_dead_nodes_and_its_tasks_move(cluster: Cluster) -> None:
    cluster.start_fleet("keep", 4)
    doomed = cluster.start_fleet("gone", 4)
    cluster.apply(sim_service(cluster, "sm-move", 16))
    before = cluster.wait_running("sm-move", 16)
    assert {str(t["nodeId"]).split("-")[0] for t in before} == {"keep", "gone"}

    doomed.kill()

    wait_for(
        lambda: all(cluster.node_state(f"gone-{i}") == "down" for i in range(4)),
        3 * HEARTBEAT + 10,
        "the killed fleet's nodes to be down",
    )
    try:
        wait_for(
            lambda: (
                len(cluster.running("sm-move")) == 16
                and all(str(t["nodeId"]).startswith("keep-") for t in cluster.running("sm-move"))
            ),
            30,
            "every task on the surviving nodes",
        )
    except AssertionError as exc:
        tasks = [
            (
                t["name"],
                t["nodeId"],
                t["desiredState"],
                t["status"]["state"],
                t["status"]["message"],
            )
            for t in cluster.tasks("sm-move", all=True)
        ]
        nodes = [
            (n["id"], n["status"]["state"]) for n in cluster.call("Get", {"kind": "nodes"})["items"]
        ]
        raise AssertionError(f"{exc}\ntasks: {tasks}\nnodes: {nodes}") from None


def test_sim_behaviour_drives_exit_codes_restarts_and_rejection(cluster: Cluster) -> None:
    cluster.start_fleet("beh", 2)
    cluster.apply(
        sim_service(
            cluster,
            "sm-exit",
            1,
            sim={"runFor": "300ms", "exitCode": 3},
            restartPolicy={"condition": "on-failure", "delay": "100ms", "maxAttempts": 1},
        ),
        name="exit.yaml",
    )
    wait_for(
        lambda: (
            [t["status"]["state"] for t in cluster.tasks("sm-exit", all=True)]
            == ["failed", "failed"]
        ),
        15,
        "two failed attempts",
    )
    assert {t["status"]["exitCode"] for t in cluster.tasks("sm-exit", all=True)} == {3}

    cluster.apply(sim_service(cluster, "sm-reject", 1, sim={"reject": True}), name="rej.yaml")
    wait_for(
        lambda: any(
            t["status"]["state"] == "rejected" for t in cluster.tasks("sm-reject", all=True)
        ),
        15,
        "a rejected task",
    )
