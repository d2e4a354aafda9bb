"""Jobs end to end: real managers, agents and task processes, counted in /proc."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import Cluster, cluster_at, task_processes, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        for name in ("n1", "n2", "n3"):
            running.start_agent(name)
        yield running


def job(cluster: Cluster, name: str, script: str, mode: str = "replicated-job", **spec: Any) -> str:
    return cluster.service(
        name,
        ["sh", "-c", script],
        replicas=None,
        mode=mode,
        restartPolicy={"delay": "200ms"},
        job=spec,
    )


def job_status(cluster: Cluster, name: str) -> dict[str, Any]:
    (view,) = cluster.call("Get", {"kind": "services", "name": name})["items"]
    return dict((view.get("status") or {}).get("job") or {})


def runs(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return list(job_status(cluster, name).get("runs", []))


class Peak:
    """The most task processes of a service alive at once, sampled from /proc."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.peak = 0
        self.runs_seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            # A job task is ``sh -c ...`` with a child: count tasks, not processes.
            found = task_processes(self.service)
            tasks = {env["SHOAL_TASK_ID"] for env in found.values()}
            self.runs_seen |= {env.get("SHOAL_JOB_RUN", "") for env in found.values()}
            self.peak = max(self.peak, len(tasks))
            time.sleep(0.01)


def test_five_completions_two_at_a_time(cluster: Cluster) -> None:
    with Peak("jb-five") as peak:
        cluster.apply(job(cluster, "jb-five", "sleep 1", completions=5, maxConcurrent=2))
        wait_for(lambda: [r["state"] for r in runs(cluster, "jb-five")] == ["succeeded"], 60, "run")
    assert peak.peak == 2
    assert peak.runs_seen == {"1"}
    (first,) = runs(cluster, "jb-five")
    assert first["succeeded"] == 5 and first.get("failed", 0) == 0
    tasks = cluster.tasks("jb-five", all=True)
    assert sorted(t["slot"] for t in tasks if t["status"]["state"] == "complete") == [1, 2, 3, 4, 5]


def test_a_job_that_always_fails_stops_after_backoff_limit(cluster: Cluster) -> None:
    cluster.apply(job(cluster, "jb-fail", "exit 1", backoffLimit=2))
    wait_for(lambda: [r["state"] for r in runs(cluster, "jb-fail")] == ["failed"], 60, "failed")
    (first,) = runs(cluster, "jb-fail")
    assert "backoffLimit 2 exceeded" in first["reason"]
    failed = [t for t in cluster.tasks("jb-fail", all=True) if t["status"]["state"] == "failed"]
    assert len(failed) == 3
    time.sleep(1.0)  # a failed run starts nothing more
    assert len(cluster.tasks("jb-fail", all=True)) == 3
    assert task_processes("jb-fail") == {}


def test_a_global_job_runs_once_on_each_of_three_agents(cluster: Cluster) -> None:
    cluster.apply(job(cluster, "jb-global", "sleep 0.5", mode="global-job"))
    wait_for(lambda: [r["state"] for r in runs(cluster, "jb-global")] == ["succeeded"], 60, "run")
    complete = [
        t for t in cluster.tasks("jb-global", all=True) if t["status"]["state"] == "complete"
    ]
    assert sorted(t["nodeId"] for t in complete) == ["n1", "n2", "n3"]


def test_every_five_seconds_with_a_twelve_second_task_never_overlaps(cluster: Cluster) -> None:
    with Peak("jb-tick") as peak:
        cluster.apply(job(cluster, "jb-tick", "sleep 12", schedule="@every 5s"))
        wait_for(
            lambda: any(r["state"] == "succeeded" for r in runs(cluster, "jb-tick")),
            40,
            "a first run to succeed",
        )
        wait_for(lambda: job_status(cluster, "jb-tick").get("skipped", 0) >= 2, 30, "skips")
    assert peak.peak == 1
    ordered = runs(cluster, "jb-tick")
    for a, b in itertools.pairwise(ordered):
        assert a["finishedAt"] <= b["startedAt"]


def test_suspend_stops_new_runs_and_job_run_starts_one_now(cluster: Cluster) -> None:
    cluster.apply(job(cluster, "jb-susp", "sleep 0.2", schedule="@every 2s"))
    wait_for(lambda: len(runs(cluster, "jb-susp")) >= 2, 30, "two scheduled runs")
    cluster.apply(job(cluster, "jb-susp", "sleep 0.2", schedule="@every 2s", suspend=True))
    wait_for(lambda: all(r["state"] != "active" for r in runs(cluster, "jb-susp")), 10, "idle")
    numbers = [r["number"] for r in runs(cluster, "jb-susp")]
    time.sleep(5)  # two schedule times pass
    assert [r["number"] for r in runs(cluster, "jb-susp")] == numbers

    with Peak("jb-susp") as peak:
        ran = cluster.cli("job", "run", "jb-susp", "--wait", "--timeout", "30s")
    assert f"run {max(numbers) + 1} succeeded" in ran.stdout
    assert peak.runs_seen == {str(max(numbers) + 1)}
