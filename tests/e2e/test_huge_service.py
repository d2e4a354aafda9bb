"""One service of 100,000 process replicas on one node that takes 256.

The node stays ready, 256 run and 99,744 wait ``pending`` with one
``Unschedulable`` event that counts them; ``delete`` is acknowledged while the
tasks still exist and the work goes on in the background until every task and
process is gone. Counted from ``/proc`` and the store (the manager's task
gauges and the Control API), never from log text. About two minutes: a file of
its own.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.cluster import Cluster, task_processes, tasks_in_process_table
from tests.e2e.test_overload import (
    GRACE,
    metered,
    metric,
    node_states,
    watch,
)

pytestmark = pytest.mark.slow

__all__ = ["metered"]  # the fixture, shared with test_overload


def test_100000_replicas_on_one_node_wait_pending_and_delete_returns_at_once(
    metered: tuple[Cluster, int],
) -> None:
    cluster, metrics_port = metered
    cluster.start_agent("n1")  # the default --max-tasks: 256
    cluster.apply(cluster.service("ov-huge", ["sleep", "600"], replicas=100_000))

    def settled() -> bool:
        return (
            metric(metrics_port, "shoal_service_running_tasks") == 256.0
            and len(tasks_in_process_table("ov-huge")) == 256
            and pending_count(metrics_port) == 100_000 - 256
        )

    def node_ready() -> None:
        assert node_states(cluster) == {"n1": "ready"}

    deadline = time.monotonic() + 240
    while not settled():
        node_ready()
        assert time.monotonic() < deadline, "256 tasks running and the rest pending in 240 s"
        time.sleep(1)
    watch(4 * GRACE, node_ready, interval=0.5)
    assert pending_count(metrics_port) == 100_000 - 256
    events = cluster.call("Describe", {"kind": "services", "name": "ov-huge"})["events"]
    unschedulable = [e for e in events if e["reason"] == "Unschedulable"]
    assert len(unschedulable) == 1
    assert unschedulable[0]["message"] == (
        "99744 tasks pending: no suitable node (1 node(s): task limit reached (--max-tasks 256))"
    )

    deleted = cluster.cli("delete", "service", "ov-huge", "--no-wait", timeout=30)
    assert deleted.returncode == 0
    # Acknowledged while the work goes on: the service is gone, its tasks not yet.
    assert total_tasks(metrics_port) > 0
    assert "ov-huge" not in cluster.cli("get", "services").stdout

    deadline = time.monotonic() + 240
    while task_processes("ov-huge") or total_tasks(metrics_port):
        node_ready()
        assert time.monotonic() < deadline, "every task gone within 240 s"
        time.sleep(1)


def pending_count(port: int) -> float:
    return tasks_by_state(port).get("pending", 0.0)


def total_tasks(port: int) -> float:
    return sum(tasks_by_state(port).values())


def tasks_by_state(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return {
        sample.labels["state"]: float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shoal_tasks"
    }
