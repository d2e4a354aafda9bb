"""Rolling updates end to end: real managers, agents and task processes, counted in /proc.

Each revision of a service sets ``V`` in its tasks' environment, so a sampler
thread can tell, every few milliseconds, how many processes of each revision
are alive and which slot they serve, straight from ``/proc``. The state of the
rollout is read from the store (``status.update`` through ``Get``) and from
``shoal rollout status``'s exit code, as a user would.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import Cluster, cluster_at, task_processes, wait_for

pytestmark = pytest.mark.slow

TICKS = os.sysconf("SC_CLK_TCK")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        running.start_agent("n1")
        yield running


def started_at(pid: int) -> float | None:
    """The process's start time in seconds since boot, from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19]) / TICKS


@dataclass
class Sample:
    by_version: Counter[str]
    slots: set[str]
    per_slot: Counter[str]


@dataclass
class Sampler:
    """Samples a service's task processes from /proc until stopped."""

    service: str
    samples: list[Sample] = field(default_factory=list)
    # task id -> (its V, when its first process started, seconds since boot)
    starts: dict[str, tuple[str, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            # A task may be several processes (the runtime's wrapper and its child):
            # count tasks, by the task id in their environment.
            tasks: dict[str, dict[str, str]] = {}
            for pid, env in task_processes(self.service).items():
                task_id = env["SHOAL_TASK_ID"]
                tasks.setdefault(task_id, env)
                start = started_at(pid)
                if start is not None and (
                    task_id not in self.starts or start < self.starts[task_id][1]
                ):
                    self.starts[task_id] = (env.get("V", "?"), start)
            sample = Sample(Counter(), set(), Counter())
            for env in tasks.values():
                sample.by_version[env.get("V", "?")] += 1
                sample.slots.add(env["SHOAL_TASK_SLOT"])
                sample.per_slot[env["SHOAL_TASK_SLOT"]] += 1
            self.samples.append(sample)
            time.sleep(0.01)

    def starts_of(self, version: str) -> list[float]:
        return sorted(t for v, t in self.starts.values() if v == version)


def versions(service: str) -> Counter[str]:
    """How many tasks of each V have a live process (tasks, not processes)."""
    tasks = {env["SHOAL_TASK_ID"]: env.get("V", "?") for env in task_processes(service).values()}
    return Counter(tasks.values())


def spec(cluster: Cluster, name: str, version: str, replicas: int, **extra: Any) -> str:
    template = {"env": {"E2E_RUN": str(cluster.root), "V": version}}
    template.update(extra.pop("template", {}))
    command = extra.pop("command", ["sleep", "300"])
    return cluster.service(
        name,
        command,
        replicas,
        template=template,
        restartPolicy={"delay": "500ms"},
        **extra,
    )


def update_status(cluster: Cluster, name: str) -> dict[str, Any]:
    (view,) = cluster.call("Get", {"kind": "services", "name": name})["items"]
    return dict((view.get("status") or {}).get("update") or {})


def rollout_status(cluster: Cluster, name: str, timeout: str = "60s") -> tuple[int, str]:
    result = cluster.cli("rollout", "status", name, "--timeout", timeout, check=False, timeout=90)
    return result.returncode, result.stdout + result.stderr


def test_stop_first_in_batches_of_two_never_below_three_and_undo(cluster: Cluster) -> None:
    update = {"parallelism": 2, "monitor": "1s"}
    rollback = {"parallelism": 2, "monitor": "1s"}
    cluster.apply(spec(cluster, "ro-batch", "1", 5, update=update, rollback=rollback))
    cluster.wait_running("ro-batch", 5)

    with Sampler("ro-batch") as sampler:
        applied = cluster.apply(spec(cluster, "ro-batch", "2", 5, update=update, rollback=rollback))
        assert "service/ro-batch configured (revision 2)" in applied.stdout
        code, text = rollout_status(cluster, "ro-batch")
    assert code == 0, text
    assert "completed" in text
    live = [sum(s.by_version.values()) for s in sampler.samples]
    assert min(live) >= 3, "a sample showed fewer than 3 task processes"
    assert sampler.samples[-1].by_version == Counter({"2": 5})
    # Batches of at most 2: no three new processes start within one monitor window.
    starts = sampler.starts_of("2")
    assert len(starts) == 5
    assert all(starts[i + 2] - starts[i] >= 0.9 for i in range(len(starts) - 2)), starts
    status = update_status(cluster, "ro-batch")
    assert status["state"] == "completed" and status["revision"] == 2

    with Sampler("ro-batch") as back:
        undo = cluster.cli("rollout", "undo", "ro-batch")
        assert "rollback_started" in undo.stdout
        wait_for(
            lambda: update_status(cluster, "ro-batch").get("state") == "rollback_completed",
            60,
            "the undo to complete",
        )
    assert min(sum(s.by_version.values()) for s in back.samples) >= 3
    assert back.samples[-1].by_version == Counter({"1": 5})
    assert update_status(cluster, "ro-batch")["revision"] == 1
    history = cluster.cli("rollout", "history", "ro-batch").stdout
    assert "apply -f" in history and "1 *" in history


def test_start_first_never_runs_fewer_than_five(cluster: Cluster) -> None:
    update = {"parallelism": 2, "monitor": "1s", "order": "start-first"}
    health = {"healthcheck": {"exec": ["true"], "interval": "200ms"}}
    cluster.apply(spec(cluster, "ro-start", "1", 5, update=update, template=health))
    cluster.wait_running("ro-start", 5)
    with Sampler("ro-start") as sampler:
        cluster.apply(spec(cluster, "ro-start", "2", 5, update=update, template=health))
        code, text = rollout_status(cluster, "ro-start")
    assert code == 0, text
    assert min(len(s.slots) for s in sampler.samples) == 5
    assert max(sum(s.by_version.values()) for s in sampler.samples) <= 7
    assert sampler.samples[-1].by_version == Counter({"2": 5})


def test_failing_health_check_rolls_back_by_itself(cluster: Cluster) -> None:
    update = {"parallelism": 1, "monitor": "2s", "failureAction": "rollback"}
    rollback = {"parallelism": 1, "monitor": "500ms"}
    cluster.apply(spec(cluster, "ro-health", "1", 5, update=update, rollback=rollback))
    cluster.wait_running("ro-health", 5)
    bad = {"healthcheck": {"exec": ["false"], "interval": "200ms", "retries": 1}}
    with Sampler("ro-health") as sampler:
        cluster.apply(
            spec(cluster, "ro-health", "2", 5, update=update, rollback=rollback, template=bad)
        )
        code, text = rollout_status(cluster, "ro-health")
    assert code == 1, text
    assert "rollback_completed" in text
    status = update_status(cluster, "ro-health")
    assert status["state"] == "rollback_completed" and status["revision"] == 1
    # Never more than parallelism (1) slots without a process.
    assert min(len(s.slots) for s in sampler.samples) >= 4
    assert sampler.samples[-1].by_version == Counter({"1": 5})


def test_pause_on_the_second_failure_with_ratio_a_quarter_then_resume(cluster: Cluster) -> None:
    update = {"parallelism": 1, "monitor": "3s", "maxFailureRatio": 0.25}
    cluster.apply(spec(cluster, "ro-ratio", "1", 5, update=update))
    cluster.wait_running("ro-ratio", 5)
    cluster.apply(
        spec(cluster, "ro-ratio", "2", 5, update=update, command=["sh", "-c", "sleep 1; exit 3"])
    )
    code, text = rollout_status(cluster, "ro-ratio")
    assert code == 1, text
    status = update_status(cluster, "ro-ratio")
    assert status["state"] == "paused"
    # One failure is 0.2 of the slots (tolerated); the second (0.4) paused it.
    assert len(status["failedTasks"]) == 2
    history = cluster.tasks("ro-ratio", all=True)
    failed = {t["name"] for t in history if t["id"] in status["failedTasks"]}
    assert any(name in status["message"] for name in failed), status["message"]
    assert "exit code 3" in status["message"]

    resumed = cluster.cli("rollout", "resume", "ro-ratio")
    assert "updating" in resumed.stdout
    wait_for(lambda: update_status(cluster, "ro-ratio")["state"] == "paused", 30, "paused again")


def test_one_replica_exiting_within_the_monitor_window_is_paused_not_completed(
    cluster: Cluster,
) -> None:
    cluster.apply(spec(cluster, "ro-one", "1", 1))
    cluster.wait_running("ro-one", 1)
    cluster.apply(
        spec(
            cluster,
            "ro-one",
            "2",
            1,
            update={"monitor": "5s"},
            command=["sh", "-c", "sleep 1; exit 0"],
        )
    )
    code, text = rollout_status(cluster, "ro-one")
    assert code == 1, text
    assert "paused" in text
    assert update_status(cluster, "ro-one")["state"] == "paused"


def test_canaries_wait_for_promote_then_the_rest_follows(cluster: Cluster) -> None:
    update = {"parallelism": 5, "monitor": "500ms", "canary": 2}
    cluster.apply(spec(cluster, "ro-canary", "1", 10, update=update))
    cluster.wait_running("ro-canary", 10)
    cluster.apply(spec(cluster, "ro-canary", "2", 10, update=update))
    code, text = rollout_status(cluster, "ro-canary")
    assert code == 0 and "awaiting_promotion" in text, text
    with Sampler("ro-canary") as held:
        # Nothing more happens while the promotion is awaited.
        wait_for(lambda: len(held.samples) > 100, 10, "samples")
    assert {tuple(sorted(s.by_version.items())) for s in held.samples} == {(("1", 10), ("2", 2))}

    cluster.cli("rollout", "promote", "ro-canary")
    code, text = rollout_status(cluster, "ro-canary")
    assert code == 0 and "completed" in text, text
    wait_for(
        lambda: versions("ro-canary") == {"2": 10},
        20,
        "10 new processes and no old one",
    )


def test_progress_deadline_fails_an_update_that_never_becomes_healthy(cluster: Cluster) -> None:
    update = {"monitor": "500ms", "progressDeadline": "3s"}
    cluster.apply(spec(cluster, "ro-deadline", "1", 2, update=update))
    cluster.wait_running("ro-deadline", 2)
    never = {
        "healthcheck": {"exec": ["false"], "interval": "200ms", "startPeriod": "1h"},
    }
    applied_at = time.monotonic()
    cluster.apply(spec(cluster, "ro-deadline", "2", 2, update=update, template=never))
    code, text = rollout_status(cluster, "ro-deadline")
    took = time.monotonic() - applied_at
    assert code == 1, text
    assert "progressDeadline 3s" in text
    assert took < 3 + 5, f"the deadline fired after {took:.1f}s"


def test_a_task_ignoring_sigterm_delays_its_batch_by_at_most_its_grace(cluster: Cluster) -> None:
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)",
    ]
    update = {"monitor": "500ms"}
    grace = {"stopGracePeriod": "2s"}
    cluster.apply(spec(cluster, "ro-term", "1", 1, update=update, command=stubborn, template=grace))
    cluster.wait_running("ro-term", 1)
    with Sampler("ro-term") as sampler:
        applied_at = time.monotonic()
        cluster.apply(spec(cluster, "ro-term", "2", 1, update=update, template=grace))
        wait_for(lambda: sampler.starts_of("2"), 20, "the new task's process")
        took = time.monotonic() - applied_at
    assert took <= 2 + 2.5, f"the new task started {took:.1f}s after the apply"
    # stop-first: the old process was gone before the new one started.
    assert all(sum(s.by_version.values()) <= 1 for s in sampler.samples)
    _ = signal


def test_leader_sigkill_mid_update_on_etcd_resumes_under_the_new_leader(tmp_path: Path) -> None:
    from tests.e2e.cluster import service_yaml
    from tests.e2e.hacluster import ha_cluster

    def doc(version: str) -> str:
        return service_yaml(
            "ro-ha",
            ["sleep", "600"],
            6,
            run=str(tmp_path),
            template={"env": {"E2E_RUN": str(tmp_path), "V": version}},
            update={"parallelism": 1, "monitor": "2s"},
        )

    with ha_cluster(tmp_path) as ha:
        leader = ha.leader()
        assert leader is not None
        spec_path = tmp_path / "ro-ha.yaml"
        spec_path.write_text(doc("1"))
        assert ha.cli(leader, "apply", "-f", str(spec_path)).returncode == 0
        wait_for(lambda: len(ha.running(leader, "ro-ha")) == 6, 60, "6 running")

        doubles: list[dict[str, set[str]]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                slots: dict[str, set[str]] = {}
                for env in task_processes("ro-ha").values():
                    slots.setdefault(env["SHOAL_TASK_SLOT"], set()).add(env["SHOAL_TASK_ID"])
                if any(len(ids) > 1 for ids in slots.values()):
                    doubles.append(slots)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            spec_path.write_text(doc("2"))
            assert ha.cli(leader, "apply", "-f", str(spec_path)).returncode == 0
            # Mid-update: two slots done, four to go.
            wait_for(
                lambda: versions("ro-ha")["2"] >= 2,
                30,
                "two updated slots",
            )
            ha.managers[leader].kill()
            others = [m for m in ha.managers if m != leader]
            wait_for(lambda: ha.leader(others) is not None, 20, "a new leader")
            new_leader = ha.leader(others)
            assert new_leader is not None

            def state() -> str:
                (view,) = ha.call(new_leader, "Get", {"kind": "services", "name": "ro-ha"})["items"]
                return str(((view.get("status") or {}).get("update") or {}).get("state"))

            wait_for(lambda: state() == "completed", 90, "the update to complete")
        finally:
            stop.set()
            sampler.join(5)
        assert versions("ro-ha") == {"2": 6}
        # stop-first: never two tasks of one slot at once, before, during or after the failover.
        assert doubles == []
