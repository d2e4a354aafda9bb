"""Manager metrics computed at scrape time from the informer and the leader's state.

Counting tasks by state on every change would put work on the hot path; a
collector that walks the cache when Prometheus scrapes costs nothing between
scrapes. Scrapes are served from the metrics listener's threads while the
event loop keeps changing the cache, so the collector first takes snapshots
(``list()`` of a dict view copies it in one step under the GIL).

The cluster's state (tasks, services, rollouts, nodes, heartbeats, Syncs) is
exported by the leader only: every manager holds the same copy of it, and a
sum over all managers' series would count it once per manager. So
``sum(shoal_service_desired_tasks)`` means the same with one manager or five,
and after a failover the new leader's series take over. What is this
manager's own (whether it leads, the calls it served, its store latency, its
reconciles) every manager exports.

Label sets stay bounded by what operators create: services, nodes, Syncs and
fixed enumerations (states, conditions); never a task.

Reconcile duration, outcomes and queue depth live in
``shoal.reconciler.loop.LoopMetrics``; gRPC calls in ``shoal.manager.rpcmetrics``;
store write latency in ``shoal.store.metered``.
"""

from __future__ import annotations

import typing
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shoal.manager.election import Election
from shoal.models import DesiredState, NodeState, TaskState
from shoal.models.rollout import UpdateState
from shoal.models.sync import ConditionStatus, HealthState
from shoal.reconciler.informer import Informer
from shoal.reconciler.nodemonitor import HeartbeatTracker

SYNC_CONDITIONS = ("Ready", "Reconciling", "Stalled")
CONDITION_STATUSES: tuple[ConditionStatus, ...] = typing.get_args(ConditionStatus)
HEALTH_STATES: tuple[HealthState, ...] = typing.get_args(HealthState)


def _timestamp(at: datetime | None) -> float | None:
    return at.timestamp() if at is not None else None


class ClusterCollector(Collector):
    """The cluster's state as the leader sees it; see the module docstring."""

    def __init__(
        self,
        informer: Informer,
        leading: Callable[[], bool] = lambda: True,
        heartbeats: HeartbeatTracker | None = None,
        restarts: Counter[str] | None = None,
    ) -> None:
        self.informer = informer
        self.leading = leading
        self.heartbeats = heartbeats
        self.restarts = restarts if restarts is not None else Counter()

    def collect(self) -> Iterator[Metric]:
        restarts = CounterMetricFamily(
            "shoal_service_task_restarts",
            "Tasks this manager started to replace an ended or lost task of the same slot "
            "(restart policy, node down; not updates), by service.",
            labels=["service"],
        )
        # Every service from 0 (a counter that appears at its first increment hides
        # that increment from rate()), and what was counted for one since deleted.
        counts = dict(self.restarts)
        for service in sorted({*counts, *list(self.informer.services)}):
            restarts.add_metric([service], counts.get(service, 0))
        yield restarts
        if not self.leading():
            return
        yield from self._tasks_and_services()
        yield from self._nodes()
        yield from self._syncs()

    def _tasks_and_services(self) -> Iterator[Metric]:
        by_state: Counter[str] = Counter()
        running: Counter[str] = Counter()
        live: Counter[str] = Counter()
        active: Counter[str] = Counter()
        for entry in list(self.informer.tasks.values()):
            task = entry.obj
            by_state[task.status.state.value] += 1
            if task.desired_state == DesiredState.RUNNING:
                live[task.service] += 1
                if not task.status.state.terminal:
                    active[task.service] += 1
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
        revision = GaugeMetricFamily(
            "shoal_service_revision",
            "The revision of the service's template (the one its tasks should run).",
            labels=["service"],
        )
        rollout = GaugeMetricFamily(
            "shoal_service_rollout_state",
            "1 for the state the service's latest rollout is in, 0 for the others "
            "(services that never rolled out have none).",
            labels=["service", "state"],
        )
        updated = GaugeMetricFamily(
            "shoal_service_rollout_updated_tasks",
            "Slots the latest rollout has moved to its revision so far.",
            labels=["service"],
        )
        total = GaugeMetricFamily(
            "shoal_service_rollout_tasks",
            "Slots the latest rollout moves to its revision in all.",
            labels=["service"],
        )
        for name, service_entry in sorted(list(self.informer.services.items())):
            service = service_entry.obj
            spec = service.spec
            if spec.is_job:  # a job wants its tasks of the current run, none once it ended
                want = active[name]
            elif spec.mode == "global":
                want = live[name]
            else:
                want = spec.replica_count
            desired.add_metric([name], want)
            actual.add_metric([name], running[name])
            status = service.status
            if status is None:
                continue
            if status.revision is not None:
                revision.add_metric([name], status.revision)
            if status.update is not None:
                for update_state in UpdateState:
                    held = status.update.state == update_state
                    rollout.add_metric([name, update_state.value], float(held))
                updated.add_metric([name], status.update.updated)
                total.add_metric([name], status.update.total)
        yield from (desired, actual, revision, rollout, updated, total)

    def _nodes(self) -> Iterator[Metric]:
        nodes = list(self.informer.nodes.values())
        family = GaugeMetricFamily("shoal_nodes", "Nodes by state.", labels=["state"])
        node_states = Counter(e.obj.status.state.value for e in nodes)
        for node_state in NodeState:
            family.add_metric([node_state.value], node_states[node_state.value])
        yield family
        state = GaugeMetricFamily(
            "shoal_node_state",
            "1 for the node's state (ready, down, unknown), 0 for the others.",
            labels=["node", "state"],
        )
        for entry in sorted(nodes, key=lambda e: e.obj.id):
            for node_state in NodeState:
                held = float(entry.obj.status.state == node_state)
                state.add_metric([entry.obj.id, node_state.value], held)
        yield state
        if self.heartbeats is None:
            return
        age = GaugeMetricFamily(
            "shoal_node_heartbeat_age_seconds",
            "Seconds since the leader last heard the node's heartbeat (time this manager was "
            "stalled not counted; since it began leading for a node not heard yet).",
            labels=["node"],
        )
        for entry in sorted(nodes, key=lambda e: e.obj.id):
            age.add_metric([entry.obj.id], max(0.0, self.heartbeats.silent_for(entry.obj.id)))
        yield age
        yield CounterMetricFamily(
            "shoal_heartbeats",
            "Agents' heartbeats this manager received (on their session streams, or as calls "
            "from older agents).",
            value=self.heartbeats.heard,
        )

    def _syncs(self) -> Iterator[Metric]:
        condition = GaugeMetricFamily(
            "shoal_sync_condition",
            "1 for each condition's current status (True, False, Unknown), 0 for the others.",
            labels=["sync", "condition", "status"],
        )
        health = GaugeMetricFamily(
            "shoal_sync_health",
            "1 for the health of what the Sync applied (Healthy, Progressing, Degraded).",
            labels=["sync", "health"],
        )
        suspended = GaugeMetricFamily(
            "shoal_sync_suspended", "1 while the Sync is suspended.", labels=["sync"]
        )
        interval = GaugeMetricFamily(
            "shoal_sync_interval_seconds", "How often the Sync fetches its source.", labels=["sync"]
        )
        attempted = GaugeMetricFamily(
            "shoal_sync_last_attempt_timestamp_seconds",
            "When the Sync last fetched and compared its source (Unix time).",
            labels=["sync"],
        )
        applied = GaugeMetricFamily(
            "shoal_sync_last_applied_timestamp_seconds",
            "When the Sync last changed the cluster (an apply, a drift correction; Unix time).",
            labels=["sync"],
        )
        for name, sync_entry in sorted(list(self.informer.syncs.items())):
            sync = sync_entry.obj
            suspended.add_metric([name], float(sync.spec.suspend))
            interval.add_metric([name], sync.spec.interval)
            status = sync.status
            if status is None:
                continue
            for kind in SYNC_CONDITIONS:
                current = status.condition(kind)
                for value in CONDITION_STATUSES:
                    held = current is not None and current.status == value
                    condition.add_metric([name, kind, value], float(held))
            if status.health is not None:
                for state in HEALTH_STATES:
                    health.add_metric([name, state], float(status.health == state))
            if (at := _timestamp(status.last_attempted_at)) is not None:
                attempted.add_metric([name], at)
            if (at := _timestamp(status.last_applied_at)) is not None:
                applied.add_metric([name], at)
        yield from (condition, health, suspended, interval, attempted, applied)


class ElectionCollector(Collector):
    """Whether this manager leads, how many managers it knows, leader changes it saw."""

    def __init__(self, election: Election) -> None:
        self.election = election

    def collect(self) -> Iterator[Metric]:
        election = self.election
        leader = GaugeMetricFamily(
            "shoal_manager_leader", "1 while this manager leads the cluster, else 0."
        )
        leader.add_metric([], float(election.is_leader))
        yield leader
        managers = GaugeMetricFamily(
            "shoal_managers", "Managers this manager knows to be running (itself included)."
        )
        managers.add_metric([], len({*election.managers, election.me.id}))
        yield managers
        changes = CounterMetricFamily(
            "shoal_leader_changes",
            "Leadership terms this manager saw begin since it started (a new leader, or the "
            "same one elected again).",
        )
        changes.add_metric([], election.leader_changes)
        yield changes
