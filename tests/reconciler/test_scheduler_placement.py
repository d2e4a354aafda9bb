"""The scheduler's placement features: spread preferences (nested), maxReplicasPerNode,
generic resources (units given, told, held and released).

Tasks are written pending into a memory store with nodes, as the orchestrator
makes them; one ``reconcile`` places what fits and says why the rest waits.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.models import DesiredState, Node, Service, Task, TaskState, TaskStatus
from shoal.reconciler.scheduler import Scheduler
from shoal.store.typed import Change
from tests.reconciler.world import World, node

_ids = iter(range(1_000_000))


@pytest.fixture
def scheduler(world: World) -> Scheduler:
    sched = Scheduler(world.informer, world.events)
    world.informer.subscribe(lambda old, new: list(sched.keys_for(old, new)))  # keep its index
    return sched


def a_service(
    replicas: int,
    *,
    preferences: tuple[str, ...] = (),
    max_per_node: int = 0,
    generic: dict[str, int] | None = None,
) -> Service:
    template: dict[str, Any] = {"runtime": "sim", "command": ["work"]}
    if generic:
        template["resources"] = {"reservations": {"generic": generic}}
    return Service.model_validate(
        {
            "metadata": {"name": "web", "generation": 1},
            "spec": {
                "replicas": replicas,
                "template": template,
                "placement": {
                    "preferences": [{"spread": f"node.labels.{p}"} for p in preferences],
                    "maxReplicasPerNode": max_per_node,
                },
            },
        }
    )


async def add(world: World, svc: Service, count: int, first_slot: int = 1) -> list[Task]:
    await world.put(svc)
    tasks = [
        Task(
            id=f"web-{next(_ids):06d}",
            service="web",
            slot=first_slot + i,
            template=svc.spec.template,
            created_at=datetime.now(UTC),
            status=TaskStatus(state=TaskState.PENDING),
        )
        for i in range(count)
    ]
    await world.put(*tasks)
    return tasks


def labelled(node_id: str, **labels: str) -> Node:
    return node(node_id, labels=labels)


def with_units(node_id: str, **units: list[str]) -> Node:
    plain = node(node_id)
    return plain.model_copy(
        update={"description": plain.description.model_copy(update={"generic_resources": units})}
    )


def assigned(world: World) -> list[Task]:
    return [t for t in world.tasks() if t.status.state == TaskState.ASSIGNED]


def per_node(world: World) -> Counter[str]:
    return Counter(t.node_id or "" for t in assigned(world))


def per_label(world: World, label: str) -> Counter[str | None]:
    nodes = {n: e.obj for n, e in world.informer.nodes.items()}
    return Counter(nodes[t.node_id or ""].labels.get(label) for t in assigned(world))


def waiting(world: World) -> list[str]:
    return [t.status.message for t in world.tasks() if t.status.state == TaskState.PENDING]


def unschedulable(world: World) -> list[str]:
    return [
        e.message for e in world.events.for_object("service/web") if e.reason == "Unschedulable"
    ]


# ------------------------------------------------------------------ spread


async def test_spread_is_even_over_zones_whatever_their_sizes(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(labelled("n1", zone="a"), labelled("n2", zone="a"), labelled("n3", zone="b"))
    await add(world, a_service(6, preferences=("zone",)), 6)
    await scheduler.reconcile("pending")
    assert per_label(world, "zone") == {"a": 3, "b": 3}
    assert per_node(world) == {"n3": 3, "n1": 2, "n2": 1}


async def test_without_preferences_the_same_nodes_split_by_node(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(labelled("n1", zone="a"), labelled("n2", zone="a"), labelled("n3", zone="b"))
    await add(world, a_service(6), 6)
    await scheduler.reconcile("pending")
    assert per_label(world, "zone") == {"a": 4, "b": 2}


async def test_nested_preferences_spread_zones_then_racks_and_label_less_nodes_are_a_group(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(
        labelled("a1", zone="a", rack="r1"),
        labelled("a2", zone="a", rack="r1"),
        labelled("a3", zone="a", rack="r2"),
        labelled("b1", zone="b", rack="r1"),
        labelled("x1"),  # no zone: a group of its own
        labelled("x2"),
    )
    await add(world, a_service(12, preferences=("zone", "rack")), 12)
    await scheduler.reconcile("pending")
    assert per_label(world, "zone") == {"a": 4, "b": 4, None: 4}
    # Zone a: even over its racks (2 + 2), not over its nodes (which would be 2 on r2 ... 1).
    in_a = Counter(
        world.informer.nodes[t.node_id or ""].obj.labels["rack"]
        for t in assigned(world)
        if t.node_id and t.node_id.startswith("a")
    )
    assert in_a == {"r1": 2, "r2": 2}
    assert per_node(world)["a3"] == 2 and per_node(world)["a1"] == per_node(world)["a2"] == 1
    assert per_node(world)["x1"] == per_node(world)["x2"] == 2


async def test_spread_counts_the_tasks_already_placed(world: World, scheduler: Scheduler) -> None:
    await world.put(labelled("n1", zone="a"))
    svc = a_service(2, preferences=("zone",))
    await add(world, svc, 2)
    await scheduler.reconcile("pending")
    assert per_label(world, "zone") == {"a": 2}
    # Zone b joins and the service scales to 4: both new tasks go to b.
    await world.put(labelled("n2", zone="b"))
    await add(world, svc, 2, first_slot=3)
    await scheduler.reconcile("pending")
    assert per_label(world, "zone") == {"a": 2, "b": 2}


async def test_a_preference_never_keeps_a_task_from_a_node_with_room(
    world: World, scheduler: Scheduler
) -> None:
    # Zone b's node takes one task (maxReplicasPerNode): the rest go to zone a.
    await world.put(labelled("n1", zone="a"), labelled("n2", zone="a"), labelled("n3", zone="b"))
    await add(world, a_service(3, preferences=("zone",), max_per_node=1), 3)
    await scheduler.reconcile("pending")
    assert per_node(world) == {"n1": 1, "n2": 1, "n3": 1}
    assert waiting(world) == []


# ------------------------------------------------------ maxReplicasPerNode


async def test_max_replicas_per_node_leaves_the_rest_pending_with_the_reason(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(node("n1"), node("n2"))
    await add(world, a_service(3, max_per_node=1), 3)
    await scheduler.reconcile("pending")
    assert per_node(world) == {"n1": 1, "n2": 1}
    (message,) = waiting(world)
    assert message == (
        "no suitable node (2 node(s): max replicas per node reached (maxReplicasPerNode 1))"
    )
    assert unschedulable(world) == [f"1 task pending: {message}"]
    # A third node takes the waiting task.
    await world.put(node("n3"))
    await scheduler.reconcile("pending")
    assert per_node(world) == {"n1": 1, "n2": 1, "n3": 1}


async def test_max_replicas_per_node_counts_only_live_tasks(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(node("n1"))
    svc = a_service(2, max_per_node=1)
    await add(world, svc, 2)
    await scheduler.reconcile("pending")
    (running,) = assigned(world)
    await world.report(running, TaskState.FAILED)
    await scheduler.reconcile("pending")
    (now_assigned,) = assigned(world)
    assert now_assigned.id != running.id


async def test_many_waiting_tasks_make_one_event(world: World, scheduler: Scheduler) -> None:
    await world.put(node("n1"))
    await add(world, a_service(50, max_per_node=2), 50)
    await scheduler.reconcile("pending")
    assert len(assigned(world)) == 2
    (event,) = unschedulable(world)
    assert event.startswith("48 tasks pending: no suitable node (1 node(s): max replicas")


# -------------------------------------------------------- generic resources


async def test_each_task_gets_units_of_its_own_and_the_rest_waits(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(with_units("n1", gpu=["0", "1"]), node("n2"))
    await add(world, a_service(3, generic={"gpu": 1}), 3)
    await scheduler.reconcile("pending")
    placed = assigned(world)
    assert {t.node_id for t in placed} == {"n1"}
    assert sorted(t.resources["gpu"] for t in placed) == [["0"], ["1"]]
    assert all("with gpu " in t.status.message for t in placed)
    (message,) = waiting(world)
    assert message == (
        "no suitable node (1 node(s): insufficient gpu (1 needed, 0 of 2 free); "
        "1 node(s): no gpu resource)"
    )


async def test_units_are_released_when_the_task_ends_not_when_it_is_told_to_stop(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(with_units("n1", gpu=["GPU-a", "GPU-b"]))
    await add(world, a_service(2, generic={"gpu": 2}), 2)
    await scheduler.reconcile("pending")
    (holder,) = assigned(world)
    assert holder.resources == {"gpu": ["GPU-a", "GPU-b"]}
    # Told to stop (a rolling update, a drain): it still runs and holds its GPUs.
    running = await world.report(holder, TaskState.RUNNING)
    entry = world.informer.tasks[running.id]
    stopping = running.model_copy(update={"desired_state": DesiredState.SHUTDOWN})
    await world.informer.commit([Change.put(stopping, entry.revision)])
    await scheduler.reconcile("pending")
    assert [t.id for t in assigned(world)] == []
    assert "0 of 2 free" in waiting(world)[0]
    # Stopped: the units go to the waiting task.
    await world.report(stopping, TaskState.SHUTDOWN)
    await scheduler.reconcile("pending")
    (second,) = assigned(world)
    assert second.id != holder.id and second.resources == {"gpu": ["GPU-a", "GPU-b"]}


async def test_a_new_term_rebuilds_which_units_are_held(world: World, scheduler: Scheduler) -> None:
    await world.put(with_units("n1", gpu=["0", "1", "2"]))
    await add(world, a_service(2, generic={"gpu": 1}), 2)
    await scheduler.reconcile("pending")
    held = sorted(u for t in assigned(world) for u in t.resources["gpu"])
    assert held == ["0", "1"]
    # A new leader's scheduler (or this one, next term) learns from the store alone.
    fresh = Scheduler(world.informer, world.events)
    world.informer.subscribe(lambda old, new: list(fresh.keys_for(old, new)))
    await add(world, a_service(3, generic={"gpu": 1}), 1, first_slot=3)
    await fresh.reconcile("pending")
    (third,) = [t for t in assigned(world) if t.slot == 3]
    assert third.resources == {"gpu": ["2"]}


async def test_tasks_without_generic_reservations_ignore_units(
    world: World, scheduler: Scheduler
) -> None:
    await world.put(with_units("n1", gpu=["0"]))
    await add(world, a_service(3), 3)
    await scheduler.reconcile("pending")
    assert len(assigned(world)) == 3
    assert all(t.resources == {} for t in assigned(world))
