"""Manager metrics computed at scrape time from the informer.

Counting tasks by state on every change would put work on the hot path; a
collector that walks the cache when Prometheus scrapes costs nothing between
scrapes. Scrapes are served from prometheus-client's HTTP thread while the
event loop keeps changing the cache, so the collector first takes snapshots
(``list()`` of a dict view copies it in one step under the GIL).

Reconcile duration, outcomes and queue depth live in
``shoal.reconciler.loop.LoopMetrics``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shoal.models import DesiredState, NodeState, TaskState
from shoal.reconciler.informer import Informer


class ClusterCollector(Collector):
    """Tasks by state, desired vs running per service, nodes by state."""

    def __init__(self, informer: Informer) -> None:
        self.informer = informer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state: Counter[str] = Counter()
        running: Counter[str] = Counter()
        live: Counter[str] = Counter()
        for entry in list(self.informer.tasks.values()):
            task = entry.obj
            by_state[task.status.state.value] += 1
            if task.desired_state == DesiredState.RUNNING:
                live[task.service] += 1
                if task.status.state == TaskState.RUNNING:
                    running[task.service] += 1
        tasks = GaugeMetricFamily("shoal_tasks", "Tasks in the store by state.", labels=["state"])
        for state in TaskState:
            tasks.add_metric([state.value], by_state[state.value])
        yield tasks
        desired = GaugeMetricFamily(
            "shoal_service_desired_tasks", "Tasks a service should run.", labels=["service"]
        )
        actual = GaugeMetricFamily(
            "shoal_service_running_tasks",
            "Tasks of a service that are running.",
            labels=["service"],
        )
        for name, service in list(self.informer.services.items()):
            spec = service.obj.spec
            want = live[name] if spec.mode == "global" else spec.replica_count
            desired.add_metric([name], want)
            actual.add_metric([name], running[name])
        yield desired
        yield actual
        nodes = GaugeMetricFamily("shoal_nodes", "Nodes by state.", labels=["state"])
        node_states = Counter(e.obj.status.state.value for e in list(self.informer.nodes.values()))
        for node_state in NodeState:
            nodes.add_metric([node_state.value], node_states[node_state.value])
        yield nodes
