"""The scheduler on its own: every filter, spread, host ports, one heap per task shape.

Tasks are written pending (as the orchestrator makes them) into a memory store
with nodes; one ``reconcile`` places what fits and says why the rest waits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.models import Availability, Node, NodeState, Task, TaskState, TaskStatus
from shoal.reconciler.scheduler import Scheduler
from tests.reconciler.world import World, node, service

_ids = iter(range(1_000_000))


@pytest.fixture
def scheduler(world: World) -> Scheduler:
    sched = Scheduler(world.informer, world.events)
    world.informer.subscribe(lambda old, new: list(sched.keys_for(old, new)))  # keep its index
    return sched


def pending(
    name: str = "web",
    slot: int = 1,
    node_id: str | None = None,
    constraints: list[str] | None = None,
    **template: Any,
) -> Task:
    svc = service(name, constraints=constraints, **template)
    return Task(
        id=f"{name}-{next(_ids):06d}",
        service=name,
        slot=slot,
        node_id=node_id,
        template=svc.spec.template,
        created_at=datetime.now(UTC),
        status=TaskStatus(state=TaskState.PENDING),
    )


async def add_service_tasks(
    world: World, count: int, name: str = "web", **kwargs: Any
) -> list[Task]:
    await world.put(service(name, count, constraints=kwargs.get("constraints")))
    tasks = [pending(name, slot=i + 1, **kwargs) for i in range(count)]
    await world.put(*tasks)
    return tasks


def placed(world: World, name: str = "web") -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in world.tasks(name):
        if task.status.state == TaskState.ASSIGNED:
            assert task.node_id is not None
            counts[task.node_id] = counts.get(task.node_id, 0) + 1
    return counts


def waiting(world: World, name: str = "web") -> list[str]:
    return [t.status.message for t in world.tasks(name) if t.status.state == TaskState.PENDING]


async def test_replicas_spread_evenly_over_eligible_nodes(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(node("n1"), node("n2"), node("n3"))
    await add_service_tasks(world, 7)
    await scheduler.reconcile("pending")
    assert sorted(placed(world).values()) == [2, 2, 3]


async def test_spread_counts_the_service_first_then_all_tasks(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(node("n1"), node("n2"))
    await add_service_tasks(world, 3, name="other")
    await scheduler.reconcile("pending")  # other: 2 tasks on one node, 1 on the other
    await add_service_tasks(world, 1, name="web")
    await scheduler.reconcile("pending")
    busier = max(placed(world, "other"), key=lambda n: placed(world, "other")[n])
    # web has no task anywhere: the node with fewer tasks in total wins.
    assert list(placed(world, "web")) == [n for n in ("n1", "n2") if n != busier]


ZONE_A = {"zone": "a"}


@pytest.mark.parametrize(
    ("only_node", "reason"),
    [
        pytest.param(
            node("n1", labels=ZONE_A, state=NodeState.DOWN), "no node is ready", id="down"
        ),
        pytest.param(
            node("n1", labels=ZONE_A, availability=Availability.DRAIN),
            "no node is ready",
            id="drained",
        ),
        pytest.param(
            node("n1", labels=ZONE_A, availability=Availability.PAUSE),
            "no node is ready",
            id="paused",
        ),
        pytest.param(
            node("n1", labels=ZONE_A, runtimes=("process",)),
            "runtime 'sim' not available",
            id="runtime",
        ),
        pytest.param(
            node("n1", labels={"zone": "b"}), "constraint 'node.labels.zone == a'", id="constraint"
        ),
    ],
)
async def test_a_node_that_fails_a_filter_gets_nothing_and_the_task_says_why(
    world: World, scheduler: Scheduler, only_node: Node, reason: str
) -> None:
    await world.put(only_node)
    await add_service_tasks(world, 1, constraints=["node.labels.zone == a"])
    await scheduler.reconcile("pending")
    assert placed(world) == {}
    (message,) = waiting(world)
    assert reason in message
    # The same task on a node that passes every filter is placed.
    await world.put(node("n2", labels=ZONE_A))
    await scheduler.reconcile("pending")
    assert placed(world) == {"n2": 1}


async def test_reservations_fill_a_node_then_the_rest_waits(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(node("n1", cpus=2.0, memory=1 << 30), node("n2", cpus=1.0, memory=8 << 30))
    await add_service_tasks(world, 4, resources={"reservations": {"cpus": 1, "memory": "512Mi"}})
    await scheduler.reconcile("pending")
    assert placed(world) == {"n1": 2, "n2": 1}
    (message,) = waiting(world)
    assert "insufficient cpus" in message and "2 node(s)" in message


async def test_a_finished_task_frees_its_reservation(world: World, scheduler: Scheduler) -> None:
    await world.put(node("n1", cpus=1.0))
    tasks = await add_service_tasks(world, 2, resources={"reservations": {"cpus": 1}})
    await scheduler.reconcile("pending")
    assert placed(world) == {"n1": 1}
    (running,) = [t for t in world.tasks() if t.status.state == TaskState.ASSIGNED]
    await world.report(running, TaskState.FAILED)
    await scheduler.reconcile("pending")
    assert {t.id for t in world.tasks() if t.status.state == TaskState.ASSIGNED} == {
        t.id for t in tasks
    } - {running.id}


async def test_two_tasks_publishing_one_host_port_never_share_a_node(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(node("n1"), node("n2"))
    ports = {"ports": [{"published": 8080, "target": 80}]}
    await add_service_tasks(world, 3, runtime="docker", image="x", **ports)
    await world.put(*(node(n, runtimes=("docker",)) for n in ("n1", "n2")))
    await scheduler.reconcile("pending")
    assert placed(world) == {"n1": 1, "n2": 1}
    (message,) = waiting(world)
    assert "host port 8080/tcp already in use" in message


async def test_task_shapes_do_not_share_a_heap(world: World, scheduler: Scheduler) -> None:
    # A node full for big tasks still takes small ones of the same service.
    await world.put(node("n1", cpus=2.0))
    await world.put(service("web", 3))
    big = [pending(slot=i, resources={"reservations": {"cpus": 1}}) for i in (1, 2, 3)]
    small = [pending(slot=i) for i in (4, 5)]
    await world.put(*big, *small)
    await scheduler.reconcile("pending")
    assigned = {t.id for t in world.tasks() if t.status.state == TaskState.ASSIGNED}
    assert {t.id for t in small} <= assigned
    assert len(assigned & {t.id for t in big}) == 2


async def test_a_global_task_goes_to_its_own_node_or_waits(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(node("n1", cpus=1.0), node("n2", cpus=1.0))
    await world.put(service("web", mode="global"))
    await world.put(pending(slot=0, node_id="n1"))
    await world.put(pending(slot=0, node_id="n2", resources={"reservations": {"cpus": 2}}))
    await scheduler.reconcile("pending")
    assert placed(world) == {"n1": 1}
    (message,) = waiting(world)
    assert "insufficient cpus" in message


async def test_the_waiting_reason_is_written_once_not_on_every_pass(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(node("n1", state=NodeState.DOWN))
    await add_service_tasks(world, 1)
    await scheduler.reconcile("pending")
    (task,) = world.tasks()
    revision = world.informer.tasks[task.id].revision
    await scheduler.reconcile("pending")
    assert world.informer.tasks[task.id].revision == revision


async def test_nodes_added_later_get_the_waiting_tasks(world: World, scheduler: Scheduler) -> None:
    await add_service_tasks(world, 2)
    await scheduler.reconcile("pending")
    assert placed(world) == {}
    await world.put(node("n1"))
    await scheduler.reconcile("pending")
    assert placed(world) == {"n1": 2}
