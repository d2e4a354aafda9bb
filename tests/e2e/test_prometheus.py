"""A real Prometheus with ``deploy/prometheus/`` against a real shoal with three agents.

Prometheus (Debian's ``prometheus``) runs with the shipped configuration,
rewritten only for the manager's address, the paths and shorter intervals.
It must find every manager and agent through shoal's service discovery
(``/prometheus/sd``), scrape them all, load the alerting rules, and answer
every query of the Grafana dashboard (``deploy/grafana/shoal.json``) with
data, asked through its HTTP API as Grafana would, template variables
substituted. The cluster first does what the dashboard shows: a rollout, a
task killed and restarted, a Sync.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import Cluster, free_port, processes_with_env, task_processes, wait_for
from tests.engines import missing

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NODES = {"n1": "127.0.0.2", "n2": "127.0.0.3", "n3": "127.0.0.4"}
# What Grafana puts in for its own variables, and the dashboard's templated ones.
VARIABLES = {"$__rate_interval": "15s", "$service": "web", "$node": "n1"}


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Cluster, int]]:
    cluster = Cluster(tmp_path)
    metrics_port = free_port()
    try:
        cluster.start_manager(["--metrics-listen", f"127.0.0.1:{metrics_port}"])
        for name, host in NODES.items():
            # Port 0: the agent reports the port it was given, discovery lists that.
            cluster.start_agent(name, extra_args=["--metrics-listen", f"{host}:0"])
        yield cluster, metrics_port
    finally:
        cluster.stop_all()
        for pid in processes_with_env("E2E_RUN", str(tmp_path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def prometheus_config(root: Path, metrics_port: int) -> Path:
    """``deploy/prometheus/prometheus.yml`` pointed at this cluster, with short intervals."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / path) for path in config["rule_files"]]
    (job,) = config["scrape_configs"]
    for sd in job["http_sd_configs"]:
        sd["url"] = f"http://127.0.0.1:{metrics_port}/prometheus/sd"
        sd["refresh_interval"] = "1s"
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(tmp_path: Path, cluster: tuple[Cluster, int]) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        missing("prometheus", "Debian's prometheus package is not installed")
    assert binary is not None
    _, metrics_port = cluster
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={prometheus_config(tmp_path, metrics_port)}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply,
            ):
                return bool(reply.status == 200)
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            return False

        wait_for(ready, 30, "Prometheus to be ready", interval=0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def make_history(cluster: Cluster, root: Path) -> None:
    """A service rolled out to a new revision, one of its tasks killed, a Sync."""
    sleep = ["/bin/sh", "-c", "exec sleep 600"]
    fast = {"update": {"parallelism": 0, "monitor": "1s"}}
    cluster.apply(cluster.service("web", sleep, 3, **fast), "web.yaml")
    cluster.wait_running("web", 3)
    revision_2 = {"env": {"E2E_RUN": str(root), "REVISION": "2"}}
    cluster.apply(cluster.service("web", sleep, 3, template=revision_2, **fast), "web.yaml")
    cluster.cli("rollout", "status", "web", timeout=90)
    cluster.wait_running("web", 3)
    # One task each on the three nodes (the scheduler spreads): kill n1's.
    (victim,) = [t for t in cluster.running("web") if t["nodeId"] == "n1"]
    for pid, env in task_processes("web").items():
        if env["SHOAL_TASK_ID"] == victim["id"]:
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: victim["id"] not in {t["id"] for t in cluster.running("web")}, 30, "the kill")
    cluster.wait_running("web", 3)
    specs = root / "synced"
    specs.mkdir()
    (specs / "synced.yaml").write_text(cluster.service("synced", sleep, 1))
    cluster.apply(
        json.dumps(
            {
                "apiVersion": "shoal/v1",
                "kind": "Sync",
                "metadata": {"name": "apps"},
                "spec": {"source": {"path": str(specs)}, "interval": "2s"},
            }
        ),
        "sync.yaml",
    )
    cluster.wait_running("synced", 1)


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "shoal.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"a template variable the test does not know: {expr}"
            queries.append((panel["title"], expr))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(METRIC, LABEL): the variable's choices come from METRIC.
            metric = variable["definition"].removeprefix("label_values(").split(",")[0]
            queries.append((f"variable {variable['name']}", metric))
    return queries


def query(url: str, expr: str) -> list[Any]:
    reply = get_json(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert reply["status"] == "success", reply
    result: list[Any] = reply["data"]["result"]
    return result


def test_prometheus_finds_every_target_and_answers_every_dashboard_query(
    cluster: tuple[Cluster, int], prometheus: str, tmp_path: Path
) -> None:
    shoal, metrics_port = cluster
    make_history(shoal, tmp_path)

    def targets() -> list[dict[str, Any]] | None:
        active = get_json(f"{prometheus}/api/v1/targets?state=active")["data"]["activeTargets"]
        if len(active) == 1 + len(NODES) and all(t["health"] == "up" for t in active):
            return list(active)
        return None

    wait_for(targets, 30, "every target discovered and up", interval=0.5)
    active = targets()
    assert active is not None
    assert {t["scrapePool"] for t in active} == {"shoal"}
    by_role = {(t["labels"]["role"], t["labels"].get("node")): t for t in active}
    assert set(by_role) == {("manager", None)} | {("agent", name) for name in NODES}
    assert by_role["manager", None]["labels"]["instance"] == f"127.0.0.1:{metrics_port}"
    for name, host in NODES.items():
        target = by_role["agent", name]
        assert target["labels"]["instance"].startswith(f"{host}:")
        assert target["labels"]["instance"] != f"{host}:0"  # the port it was given
        assert target["discoveredLabels"]["__meta_shoal_node_id"] == name

    rules = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"]: rule["health"] for group in rules for rule in group["rules"]}
    assert "ShoalNoLeader" in loaded and set(loaded.values()) == {"ok"}, loaded

    # Rates need a few samples; then every query must answer with at least one series.
    pending = dashboard_queries()
    deadline = time.monotonic() + 45
    while pending and time.monotonic() < deadline:
        pending = [(title, expr) for title, expr in pending if not query(prometheus, expr)]
        if pending:
            time.sleep(1)
    assert pending == [], f"dashboard queries without data: {pending}"

    # The data is the cluster's: the values a user would read on the dashboard.
    def scalar(expr: str) -> float:
        (sample,) = query(prometheus, expr)
        return float(sample["value"][1])

    assert scalar('sum(shoal_service_desired_tasks{service="web"})') == 3.0
    assert scalar('sum(up{role="agent"})') == 3.0
    assert scalar("sum(shoal_manager_leader)") == 1.0
    assert scalar('max(shoal_service_revision{service="web"})') == 2.0
    assert scalar('sum(shoal_service_task_restarts_total{service="web"})') >= 1.0
    (rollout,) = query(prometheus, 'shoal_service_rollout_state{service="web"} == 1')
    assert rollout["metric"]["state"] == "completed"
    assert scalar('sum(shoal_agent_task_exits_total{node="n1", outcome="failed"})') >= 1.0
    # Heartbeats travel on the agents' sessions, which are gRPC calls.
    assert scalar("sum(shoal_heartbeats_total)") > 0
    assert scalar('sum(shoal_grpc_server_started_total{grpc_method="Session"})') >= len(NODES)
