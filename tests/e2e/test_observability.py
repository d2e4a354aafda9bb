"""What an operator sees: ``shoal up`` as a user runs it, and Prometheus /metrics.

``shoal up`` runs with its own state directory and the client commands find it
through the endpoint file there (no ``--server``). Metrics are scraped over
HTTP and parsed with prometheus_client's own text parser, as Prometheus would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.cluster import (
    Cluster,
    cluster_at,
    free_port,
    processes_with_env,
    shoal_cmd,
    wait_for,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample at ``/metrics``: (name, labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(key)[label] for metric, key in samples if metric == name and label in dict(key)}


# ------------------------------------------------------------------ shoal up


class LocalUp:
    """``shoal up`` in a state directory, and client commands that find it alone."""

    def __init__(self, state_dir: Path, node: str) -> None:
        self.state_dir = state_dir
        self.node = node
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k != "SHOAL_SERVER"}
        self.env["SHOAL_STATE_DIR"] = str(state_dir)
        self.log = state_dir.parent / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                shoal_cmd(
                    "up",
                    "--state-dir",
                    str(self.state_dir),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--metrics-listen",
                    f"127.0.0.1:{self.metrics_port}",
                    "--name",
                    self.node,
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            shoal_cmd(*args), capture_output=True, text=True, timeout=60, env=self.env, cwd=REPO
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"shoal {' '.join(args)} failed ({result.returncode}): {result.stderr}\n"
                f"--- shoal up log:\n{self.log.read_text(errors='replace')}"
            )
        return result

    def task_processes(self) -> dict[int, dict[str, str]]:
        # hello's processes carry no E2E_RUN marker; the node name is ours alone.
        return {
            pid: env
            for pid, env in processes_with_env("SHOAL_SERVICE", "hello").items()
            if env.get("SHOAL_NODE") == self.node
        }

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.task_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def local_up(tmp_path: Path) -> Iterator[LocalUp]:
    up = LocalUp(tmp_path / "state", f"ob-up-{os.getpid()}")
    try:
        yield up
    finally:
        up.close()


def test_shoal_up_serves_clients_without_server_flag_and_exports_metrics(
    local_up: LocalUp,
) -> None:
    local_up.start()
    wait_for(lambda: local_up.cli("version", check=False).returncode == 0, 20, "shoal up to answer")

    applied = local_up.cli("apply", "-f", "examples/hello.yaml")
    assert "service/hello created" in applied.stdout
    rollout = local_up.cli("rollout", "status", "hello", "--timeout", "30s")
    assert "service/hello rolled out: 3/3 running" in rollout.stdout
    table = local_up.cli("get", "tasks").stdout.splitlines()
    assert table[0].split()[:2] == ["NAME", "SERVICE"]
    rows = [line.split() for line in table[1:]]
    assert len(rows) == 3 and all(row[1] == "hello" and "running" in row for row in rows)
    assert {row[3] for row in rows} == {local_up.node}
    wait_for(lambda: len(local_up.task_processes()) >= 3, 10, "hello's processes")

    samples = scrape(local_up.metrics_port)
    controllers = label_values(samples, "shoal_reconcile_duration_seconds_count", "controller")
    assert {"orchestrator", "scheduler"} <= controllers
    assert (
        value(samples, "shoal_reconcile_total", controller="orchestrator", outcome="done") or 0
    ) > 0
    assert {"orchestrator", "scheduler"} <= label_values(
        samples, "shoal_workqueue_depth", "controller"
    )
    assert value(samples, "shoal_tasks", state="running") == 3.0
    assert value(samples, "shoal_service_desired_tasks", service="hello") == 3.0
    assert value(samples, "shoal_service_running_tasks", service="hello") == 3.0
    assert value(samples, "shoal_nodes", state="ready") == 1.0
    # The local agent's metrics come out of the same endpoint.
    assert (value(samples, "shoal_agent_task_starts_total", runtime="process") or 0) >= 3
    assert value(samples, "shoal_agent_tasks") == 3.0
    # Prometheus' discovery lists the one endpoint, as the manager it is.
    sd = f"http://127.0.0.1:{local_up.metrics_port}/prometheus/sd"
    with urllib.request.urlopen(sd, timeout=5) as reply:
        targets = json.loads(reply.read())
    assert [(t["targets"], t["labels"]["role"]) for t in targets] == [
        ([f"127.0.0.1:{local_up.metrics_port}"], "manager")
    ]

    deleted = local_up.cli("delete", "service", "hello")
    assert "service/hello deleted" in deleted.stdout
    wait_for(lambda: not local_up.task_processes(), 10, "hello's processes to exit")

    assert local_up.proc is not None
    local_up.proc.send_signal(signal.SIGTERM)
    assert local_up.proc.wait(5) == 0
    assert not (local_up.state_dir / "manager.json").exists()


# ------------------------------------------------------------ agent metrics


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with cluster_at(tmp_path) as running:
        yield running


def test_agent_metrics_listen_counts_starts_and_exits(cluster: Cluster) -> None:
    port = free_port()
    cluster.start_agent("ob-n1", extra_args=["--metrics-listen", f"127.0.0.1:{port}"])

    cluster.apply(cluster.service("ob-sleep", ["sleep", "300"], replicas=2))
    cluster.apply(
        cluster.service(
            "ob-fail", ["sh", "-c", "exit 3"], replicas=1, restartPolicy={"condition": "none"}
        ),
        name="fail.yaml",
    )
    cluster.wait_running("ob-sleep", 2)
    wait_for(
        lambda: any(t["status"]["state"] == "failed" for t in cluster.tasks("ob-fail", all=True)),
        10,
        "ob-fail's task to fail",
    )

    def exported() -> Samples | None:
        samples = scrape(port)
        failed = value(samples, "shoal_agent_task_exits_total", runtime="process", outcome="failed")
        return samples if failed == 1.0 else None

    wait_for(exported, 5, "the failed exit to be counted")
    samples = scrape(port)
    assert value(samples, "shoal_agent_task_starts_total", runtime="process") == 3.0
    # An agent's endpoint is its own: the manager's metrics are not there.
    assert not label_values(samples, "shoal_reconcile_total", "controller")
    assert value(samples, "shoal_tasks", state="running") is None
