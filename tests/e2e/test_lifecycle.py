"""Services on one agent: apply, restart, scale, restart policies, delete."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import (
    Cluster,
    cluster_at,
    task_processes,
    tasks_in_process_table,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        running.start_agent("n1")
        yield running


def test_apply_runs_replicas_as_real_processes_with_task_environment(cluster: Cluster) -> None:
    result = cluster.apply(cluster.service("lc-apply", ["sleep", "300"], replicas=3))
    assert "service/lc-apply created" in result.stdout

    tasks = cluster.wait_running("lc-apply", 3)

    processes = task_processes("lc-apply")
    by_task = {env["SHOAL_TASK_ID"]: env for env in processes.values()}
    assert set(by_task) == {t["id"] for t in tasks}
    assert sorted(env["SHOAL_TASK_SLOT"] for env in by_task.values()) == ["1", "2", "3"]
    assert {env["SHOAL_NODE"] for env in by_task.values()} == {"n1"}
    for task in tasks:
        assert task["status"]["pid"] in processes

    again = cluster.apply(cluster.service("lc-apply", ["sleep", "300"], replicas=3))
    assert "service/lc-apply unchanged" in again.stdout
    assert {t["id"] for t in cluster.running("lc-apply")} == {t["id"] for t in tasks}


def test_killed_task_is_replaced_within_restart_delay(cluster: Cluster) -> None:
    cluster.apply(
        cluster.service("lc-kill", ["sleep", "300"], replicas=2, restartPolicy={"delay": "500ms"})
    )
    before = cluster.wait_running("lc-kill", 2)
    victim = before[0]

    os.kill(victim["status"]["pid"], signal.SIGKILL)
    killed_at = time.monotonic()

    wait_for(
        lambda: (
            victim["id"] not in {t["id"] for t in cluster.running("lc-kill")}
            and len(cluster.running("lc-kill")) == 2
        ),
        1.5,
        "a replacement within the restart delay plus one second",
    )
    assert time.monotonic() - killed_at <= 1.5
    history = {t["id"]: t for t in cluster.tasks("lc-kill", all=True)}
    assert history[victim["id"]]["status"]["state"] == "failed"
    assert history[victim["id"]]["status"]["exitCode"] == 137
    replacement = [t for t in cluster.running("lc-kill") if t["slot"] == victim["slot"]]
    assert replacement and replacement[0]["attempt"] == 1


def test_scale_up_and_down_changes_the_process_count(cluster: Cluster) -> None:
    cluster.apply(cluster.service("lc-scale", ["sleep", "300"], replicas=2))
    cluster.wait_running("lc-scale", 2)

    cluster.cli("scale", "lc-scale=5")
    cluster.wait_running("lc-scale", 5)
    wait_for(lambda: len(tasks_in_process_table("lc-scale")) == 5, 10, "5 tasks' processes")

    cluster.cli("scale", "lc-scale=1")
    cluster.wait_running("lc-scale", 1)
    wait_for(lambda: len(tasks_in_process_table("lc-scale")) == 1, 10, "1 task's processes")
    assert [t["slot"] for t in cluster.running("lc-scale")] == [1]


def test_delete_leaves_no_task_process_behind(cluster: Cluster) -> None:
    # Each task forks a child too: the whole process group must go.
    cluster.apply(
        cluster.service("lc-delete", ["sh", "-c", "sleep 300 & sleep 300; wait"], replicas=3)
    )
    cluster.wait_running("lc-delete", 3)
    wait_for(lambda: len(task_processes("lc-delete")) >= 6, 10, "tasks and their children")

    result = cluster.cli("delete", "service", "lc-delete")

    assert "service/lc-delete deleted" in result.stdout
    wait_for(lambda: not task_processes("lc-delete"), 15, "every task process to exit")
    assert cluster.tasks("lc-delete", all=True) == []


@pytest.mark.parametrize(
    ("condition", "exit_code", "restarts"),
    [
        pytest.param("none", 1, False, id="none-failed"),
        pytest.param("on-failure", 0, False, id="on-failure-complete"),
        pytest.param("on-failure", 3, True, id="on-failure-failed"),
        pytest.param("any", 0, True, id="any-complete"),
    ],
)
def test_restart_condition(
    cluster: Cluster, condition: str, exit_code: int, restarts: bool
) -> None:
    name = f"lc-cond-{condition}-{exit_code}"
    cluster.apply(
        cluster.service(
            name,
            ["sh", "-c", f"sleep 0.3; exit {exit_code}"],
            replicas=1,
            restartPolicy={"condition": condition, "delay": "100ms"},
        )
    )
    wait_for(lambda: len(cluster.tasks(name, all=True)) >= 1, 10, "the first task")
    first = cluster.tasks(name, all=True)[0]
    wait_for(
        lambda: any(
            t["id"] == first["id"] and t["status"]["state"] in ("complete", "failed")
            for t in cluster.tasks(name, all=True)
        ),
        10,
        "the first task to end",
    )
    ended = next(t for t in cluster.tasks(name, all=True) if t["id"] == first["id"])
    assert ended["status"]["exitCode"] == exit_code
    if restarts:
        wait_for(lambda: len(cluster.tasks(name, all=True)) >= 2, 5, "a restart")
    else:
        # The orchestrator has decided (describe says why the slot stays empty) ...
        wait_for(
            lambda: (
                f"restart condition is {condition}"
                in cluster.cli("describe", "service", name).stdout
            ),
            10,
            "the decision not to restart",
        )
        # ... and no new task came of it.
        assert [t["id"] for t in cluster.tasks(name, all=True)] == [first["id"]]


def test_max_attempts_stops_restarting(cluster: Cluster) -> None:
    cluster.apply(
        cluster.service(
            "lc-attempts",
            ["sh", "-c", "exit 2"],
            replicas=1,
            restartPolicy={"condition": "on-failure", "delay": "50ms", "maxAttempts": 2},
        )
    )
    wait_for(
        lambda: (
            len(cluster.tasks("lc-attempts", all=True)) == 3
            and all(
                t["status"]["state"] == "failed" for t in cluster.tasks("lc-attempts", all=True)
            )
        ),
        15,
        "three failed attempts",
    )
    wait_for(
        lambda: (
            "gave up after maxAttempts=2"
            in cluster.cli("describe", "service", "lc-attempts").stdout
        ),
        10,
        "the orchestrator to give up",
    )
    tasks = cluster.tasks("lc-attempts", all=True)
    assert len(tasks) == 3
    assert sorted(t["attempt"] for t in tasks) == [0, 1, 2]


def test_repeated_failures_back_off(cluster: Cluster) -> None:
    cluster.apply(
        cluster.service(
            "lc-backoff",
            ["sh", "-c", "exit 1"],
            replicas=1,
            restartPolicy={"condition": "any", "delay": "200ms"},
        )
    )
    wait_for(lambda: len(cluster.tasks("lc-backoff", all=True)) >= 4, 20, "four attempts")
    tasks = sorted(cluster.tasks("lc-backoff", all=True), key=lambda t: t["attempt"])
    created = [t["createdAt"] for t in tasks[:4]]
    from datetime import datetime

    times = [datetime.fromisoformat(c) for c in created]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    # 200ms, then 400ms, then 800ms after each failure (plus the time to fail).
    assert gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps
    assert gaps[2] > gaps[0], gaps
