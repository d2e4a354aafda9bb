"""The manager's metrics as a scrape shows them: memory store, informer, manual clock.

Each test builds the state an operator would look at (restarted tasks, a
paused rollout, a stalled Sync, a silent node, a leader change), renders the
registry in Prometheus' text format and parses it back, so names, labels and
values are checked exactly as Prometheus would read them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shoal.manager.election import Election, LeaseElection, SoleElection, manager_info
from shoal.manager.metrics import ClusterCollector, ElectionCollector
from shoal.models import Service, TaskState
from shoal.models.rollout import UpdateState, UpdateStatus
from shoal.models.service import ServiceStatus
from shoal.models.sync import Condition, Sync, SyncStatus
from shoal.reconciler.nodemonitor import HeartbeatTracker
from shoal.reconciler.orchestrator import Orchestrator
from shoal.store import MemoryStore
from shoal.store.typed import SERVICES, Change
from tests.reconciler.world import World, node, open_world, service

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(*collectors: object) -> Samples:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with open_world() as opened:
        yield opened


@pytest.fixture
def orch(world: World) -> Orchestrator:
    return Orchestrator(world.informer, world.events, clock=world.clock)


async def fail_current(world: World) -> None:
    (task,) = world.live()
    await world.report(task, TaskState.RUNNING)
    world.clock.advance(1.0)
    await world.report(task, TaskState.FAILED, exit_code=1)


async def test_task_restarts_are_counted_per_service_updates_are_not(
    world: World, orch: Orchestrator
) -> None:
    collector = ClusterCollector(world.informer, restarts=orch.restarts)
    await world.put(service(restart={"delay": "0s"}), service("db", restart={"delay": "0s"}))
    await orch.reconcile("web")
    await orch.reconcile("db")
    for _ in range(3):
        await fail_current(world)
        await orch.reconcile("web")
    samples = scrape(collector)
    assert value(samples, "shoal_service_task_restarts_total", service="web") == 3.0
    assert value(samples, "shoal_service_task_restarts_total", service="db") == 0.0

    (current,) = world.live()
    await world.report(current, TaskState.RUNNING)
    await world.put(service(restart={"delay": "0s"}, env={"V": "2"}))  # an update
    await orch.reconcile("web")
    await world.report(current, TaskState.SHUTDOWN)
    await orch.reconcile("web")
    assert world.live()[0].template.env == {"V": "2"}
    assert value(scrape(collector), "shoal_service_task_restarts_total", service="web") == 3.0

    await world.informer.commit([Change.delete(SERVICES + "web", None)])
    await orch.reconcile("web")
    assert value(scrape(collector), "shoal_service_task_restarts_total", service="web") is None


async def test_only_the_leader_exports_the_cluster_state(world: World) -> None:
    await world.put(service(replicas=3), node("n1"))
    leading = False
    collector = ClusterCollector(world.informer, lambda: leading)
    follower = names(scrape(collector))
    assert "shoal_service_desired_tasks" not in follower and "shoal_nodes" not in follower
    leading = True
    samples = scrape(collector)
    assert value(samples, "shoal_service_desired_tasks", service="web") == 3.0
    assert value(samples, "shoal_service_running_tasks", service="web") == 0.0
    assert value(samples, "shoal_nodes", state="ready") == 1.0
    assert value(samples, "shoal_node_state", node="n1", state="ready") == 1.0
    assert value(samples, "shoal_node_state", node="n1", state="down") == 0.0


def with_rollout(base: Service, state: UpdateState, updated: int, total: int) -> Service:
    """``base`` as the manager stores it in the middle (or at the end) of a rollout."""
    update = UpdateStatus(
        state=state,
        revision=2,
        previous_revision=1,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated=updated,
        total=total,
    )
    return base.model_copy(update={"status": ServiceStatus(revision=2, update=update)})


async def test_rollout_state_and_progress_per_service(world: World) -> None:
    await world.put(
        with_rollout(service("web", replicas=3), UpdateState.PAUSED, 1, 3),
        with_rollout(service("api", replicas=2), UpdateState.COMPLETED, 2, 2),
        service("db"),
    )
    samples = scrape(ClusterCollector(world.informer))
    assert value(samples, "shoal_service_rollout_state", service="web", state="paused") == 1.0
    assert value(samples, "shoal_service_rollout_state", service="web", state="updating") == 0.0
    web_states = [
        v
        for (name, labels), v in samples.items()
        if name == "shoal_service_rollout_state" and ("service", "web") in labels
    ]
    assert sorted(web_states) == [0.0] * (len(UpdateState) - 1) + [1.0]
    assert value(samples, "shoal_service_rollout_updated_tasks", service="web") == 1.0
    assert value(samples, "shoal_service_rollout_tasks", service="web") == 3.0
    assert value(samples, "shoal_service_rollout_state", service="api", state="completed") == 1.0
    assert value(samples, "shoal_service_revision", service="web") == 2.0
    # A service that never rolled out has no rollout series at all.
    assert value(samples, "shoal_service_rollout_tasks", service="db") is None


def a_sync(name: str, stalled: bool) -> Sync:
    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    conditions = [
        Condition(type="Ready", status="False" if stalled else "True", reason="r"),
        Condition(type="Stalled", status="True" if stalled else "False", reason="r"),
    ]
    return Sync.model_validate(
        {
            "metadata": {"name": name},
            "spec": {"source": {"path": "/srv/specs"}, "interval": "30s"},
        }
    ).model_copy(
        update={
            "status": SyncStatus(
                conditions=conditions,
                health="Degraded" if stalled else "Healthy",
                last_attempted_at=at,
                last_applied_at=at,
            )
        }
    )


async def test_sync_conditions_health_and_times(world: World) -> None:
    await world.informer.commit(
        [Change.put(a_sync("stuck", True), None), Change.put(a_sync("fine", False), None)]
    )
    samples = scrape(ClusterCollector(world.informer))
    stalled = {"sync": "stuck", "condition": "Stalled"}
    assert value(samples, "shoal_sync_condition", **stalled, status="True") == 1.0
    assert value(samples, "shoal_sync_condition", **stalled, status="False") == 0.0
    assert value(samples, "shoal_sync_condition", sync="fine", condition="Ready", status="True")
    # A condition the controller has not set yet: no status holds.
    reconciling = {"sync": "fine", "condition": "Reconciling"}
    assert value(samples, "shoal_sync_condition", **reconciling, status="Unknown") == 0.0
    assert value(samples, "shoal_sync_health", sync="stuck", health="Degraded") == 1.0
    assert value(samples, "shoal_sync_health", sync="stuck", health="Healthy") == 0.0
    assert value(samples, "shoal_sync_interval_seconds", sync="stuck") == 30.0
    noon = datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp()
    assert value(samples, "shoal_sync_last_attempt_timestamp_seconds", sync="stuck") == noon
    assert value(samples, "shoal_sync_suspended", sync="fine") == 0.0


async def test_heartbeat_age_per_node(world: World) -> None:
    now = [1000.0]
    tracker = HeartbeatTracker(clock=lambda: now[0], probe_period=3600.0)
    await world.put(node("n1"), node("n2"))
    tracker.beat("n1")
    now[0] += 4.0
    samples = scrape(ClusterCollector(world.informer, heartbeats=tracker))
    assert value(samples, "shoal_node_heartbeat_age_seconds", node="n1") == 4.0
    # Never heard since this manager began leading: silent since then.
    assert value(samples, "shoal_node_heartbeat_age_seconds", node="n2") == 4.0
    tracker.beat("n2")
    samples = scrape(ClusterCollector(world.informer, heartbeats=tracker))
    assert value(samples, "shoal_node_heartbeat_age_seconds", node="n2") == 0.0


async def test_sole_election_leads_and_sees_no_leader_change() -> None:
    election = SoleElection(manager_info("127.0.0.1:1"))
    await election.start(_nothing, _nothing)
    samples = scrape(ElectionCollector(election))
    assert value(samples, "shoal_manager_leader") == 1.0
    assert value(samples, "shoal_managers") == 1.0
    assert value(samples, "shoal_leader_changes_total") == 0.0
    await election.aclose()


async def _nothing() -> None:
    return None


async def wait_until(election: Election, check: Callable[[], bool]) -> None:
    """Until ``check()`` holds, woken by every change the election sees."""
    while not check():
        await asyncio.wait_for(election.changed.wait(), 10)


async def test_leader_changes_are_counted_by_every_manager() -> None:
    store = MemoryStore()
    a = LeaseElection(store, manager_info("127.0.0.1:1"), ttl=2.0)
    b = LeaseElection(store, manager_info("127.0.0.1:2"), ttl=2.0)
    try:
        await a.start(_nothing, _nothing)
        await wait_until(a, lambda: a.is_leader)
        await b.start(_nothing, _nothing)
        await wait_until(b, lambda: b.leader is not None and len(b.managers) == 2)
        # B started under a leader already in office: no change seen yet.
        assert value(scrape(ElectionCollector(b)), "shoal_leader_changes_total") == 0.0
        assert value(scrape(ElectionCollector(b)), "shoal_managers") == 2.0
        await a.aclose()
        await wait_until(b, lambda: b.is_leader)
        samples = scrape(ElectionCollector(b))
        assert value(samples, "shoal_leader_changes_total") == 1.0
        assert value(samples, "shoal_manager_leader") == 1.0
    finally:
        await b.aclose()
        await a.aclose()
        await store.aclose()
