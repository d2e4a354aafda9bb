"""Agents keep their manager list current and leave a dead or paused manager for another.

Three managers on a real 3-member etcd, agents given one manager's address
only. The managers then go through what an operator's bad week looks like:
the leader is killed, each other manager is paused and resumed in turn, and
finally the manager the agents were seeded with is killed. The agents must
carry on with the one manager left: every node ready, no task restarted
(the same task ids in the store, the same processes in ``/proc``), nothing
orphaned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import processes_with_env, wait_for
from tests.e2e.hacluster import LEASE_TTL, HACluster
from tests.etcdcluster import etcd_cluster

pytestmark = pytest.mark.slow

AGENTS = ("n1", "n2", "n3")
SEED = "m2"


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[HACluster]:
    """3 managers (m1 leading), 3 agents that were each told of ``SEED`` only."""
    with etcd_cluster(tmp_path / "etcd") as etcd:
        cluster = HACluster(tmp_path, etcd)
        try:
            cluster.start_manager("m1")
            wait_for(lambda: cluster.leader() == "m1", 20, "m1 to lead")
            cluster.start_manager("m2")
            cluster.start_manager("m3")
            result = cluster.cli("m1", "token", "worker")
            assert result.returncode == 0, result.stderr
            cluster.token = result.stdout.strip()
            for name in AGENTS:
                cluster.start_agent(name, SEED)
            wait_for(lambda: ready(cluster, "m1") == set(AGENTS), 30, "agents to join")
            yield cluster
        finally:
            cluster.stop_all()
            for pid in processes_with_env("E2E_RUN", str(tmp_path)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def ready(cluster: HACluster, manager: str) -> set[str]:
    try:
        nodes = cluster.call(manager, "Get", {"kind": "nodes"})["items"]
    except Exception:
        return set()
    return {str(n["id"]) for n in nodes if n["status"]["state"] == "ready"}


def live(cluster: HACluster) -> list[str]:
    return [n for n, d in cluster.managers.items() if d.proc and d.proc.poll() is None]


def leader_among(cluster: HACluster, names: list[str]) -> str:
    wait_for(lambda: cluster.leader(names) is not None, LEASE_TTL + 15, f"a leader of {names}")
    leader = cluster.leader(names)
    assert leader is not None
    return leader


def task_states(cluster: HACluster, manager: str) -> dict[str, str]:
    tasks = cluster.call(manager, "Get", {"kind": "tasks", "all": True})["items"]
    return {str(t["id"]): str(t["status"]["state"]) for t in tasks}


def test_agents_outlive_a_week_of_manager_failures_and_their_seed(seeded: HACluster) -> None:
    cluster = seeded
    assert cluster.apply("m1", "fo-web", 6)
    wait_for(lambda: len(cluster.running("m1", "fo-web")) == 6, 30, "6 running tasks")
    before = task_states(cluster, "m1")
    found = processes_with_env("E2E_RUN", str(cluster.root))
    processes = set(found)  # each task's process and its /bin/sh wrapper
    assert {env["SHOAL_TASK_ID"] for env in found.values()} == set(before)
    assert set(before.values()) == {"running"} and len(before) == 6

    # 1. The leader dies.
    cluster.managers["m1"].kill()
    leader_among(cluster, ["m2", "m3"])
    wait_for(lambda: ready(cluster, "m3") == set(AGENTS), 30, "agents with the new leader")

    # 2. Each other manager is paused past its lease, then resumed, in turn.
    for paused in ("m2", "m3"):
        other = "m3" if paused == "m2" else "m2"
        cluster.managers[paused].signal(signal.SIGSTOP)
        try:
            time.sleep(2 * LEASE_TTL + 1)
            assert leader_among(cluster, [other]) == other
            wait_for(lambda m=other: ready(cluster, m) == set(AGENTS), 30, f"agents with {other}")
        finally:
            cluster.managers[paused].signal(signal.SIGCONT)
        wait_for(lambda m=paused: cluster.status(m) is not None, 20, f"{paused} to answer again")

    # 3. The manager the agents were told of dies; m3 is the only one left.
    cluster.managers[SEED].kill()
    assert live(cluster) == ["m3"]
    assert leader_among(cluster, ["m3"]) == "m3"

    def carried_on() -> bool:
        return ready(cluster, "m3") == set(AGENTS) and len(cluster.running("m3", "fo-web")) == 6

    wait_for(carried_on, 30, "the agents to carry on with m3")
    # Time enough for a wrong decision (failover grace) to show.
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        assert ready(cluster, "m3") == set(AGENTS)
        time.sleep(0.5)
    assert task_states(cluster, "m3") == before
    assert set(processes_with_env("E2E_RUN", str(cluster.root))) == processes
