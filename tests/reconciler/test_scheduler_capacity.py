"""The scheduler's capacity bound: a node takes at most ``--max-tasks`` tasks, the rest wait.

Memory store and informer; the test calls ``reconcile`` itself and reads the
store. What cannot be placed waits ``pending`` with a message, and the service
gets one ``Unschedulable`` event per reason, not one per task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from shoal.models import (
    Node,
    NodeDescription,
    NodeState,
    NodeStatus,
    RuntimeInfo,
    Task,
    TaskState,
    TaskStatus,
)
from shoal.models.service import TaskTemplate
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.scheduler import Scheduler
from shoal.store import MemoryStore
from shoal.store.typed import Change, TypedStore, decode


def node(node_id: str, max_tasks: int | None) -> Node:
    return Node(
        id=node_id,
        description=NodeDescription(
            hostname=node_id,
            runtimes=[RuntimeInfo(name="sim", available=True)],
            max_tasks=max_tasks,
        ),
        status=NodeStatus(state=NodeState.READY),
    )


def pending(slot: int, service: str = "big") -> Task:
    return Task(
        id=f"{service}-{slot}",
        service=service,
        slot=slot,
        template=TaskTemplate(runtime="sim", command=["work"]),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        status=TaskStatus(state=TaskState.PENDING, message="waiting for a node"),
    )


class World:
    def __init__(self, store: MemoryStore, informer: Informer) -> None:
        self.store = store
        self.informer = informer
        self.events = EventRecorder()
        self.scheduler = Scheduler(informer, self.events)
        # Every change reaches the scheduler, as the leading manager routes them.
        informer.subscribe(lambda old, new: list(self.scheduler.keys_for(old, new)))

    async def tasks(self) -> list[Task]:
        kvs, _ = await self.store.range("/tasks/")
        return [t for t in (decode(kv) for kv in kvs) if isinstance(t, Task)]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    try:
        yield World(store, informer)
    finally:
        await informer.aclose()


async def test_a_node_takes_at_most_its_max_tasks_and_the_rest_wait_with_one_event(
    world: World,
) -> None:
    await world.informer.commit([Change.put(node("n1", 5), 0), Change.put(node("n2", 3), 0)])
    await world.informer.commit([Change.put(pending(i), 0) for i in range(1, 21)])

    await world.scheduler.reconcile("pending")

    tasks = await world.tasks()
    placed = [t for t in tasks if t.status.state == TaskState.ASSIGNED]
    assert sorted(t.node_id or "" for t in placed) == ["n1"] * 5 + ["n2"] * 3
    waiting = [t for t in tasks if t.status.state == TaskState.PENDING]
    assert len(waiting) == 12
    assert {t.status.message for t in waiting} == {
        "no suitable node (1 node(s): task limit reached (--max-tasks 3); "
        "1 node(s): task limit reached (--max-tasks 5))"
    }
    events = world.events.for_object("service/big")
    assert [(e.reason, e.message.split(":")[0]) for e in events] == [
        ("Unschedulable", "12 tasks pending")
    ]

    # Another pass with nothing new: no new event, no write.
    revision = world.informer.revision
    await world.scheduler.reconcile("pending")
    assert world.informer.revision == revision
    assert len(world.events.for_object("service/big")) == 1


async def test_a_freed_place_is_taken_by_a_waiting_task(world: World) -> None:
    await world.informer.commit([Change.put(node("n1", 2), 0)])
    await world.informer.commit([Change.put(pending(i), 0) for i in range(1, 4)])
    await world.scheduler.reconcile("pending")
    first = next(e for e in world.informer.tasks.values() if e.obj.node_id == "n1")

    done = first.obj.model_copy(update={"status": TaskStatus(state=TaskState.COMPLETE)})
    await world.informer.commit([Change.put(done, first.revision)])
    await world.scheduler.reconcile("pending")

    live = [
        t for t in await world.tasks() if t.node_id == "n1" and t.status.state == TaskState.ASSIGNED
    ]
    assert len(live) == 2


async def test_a_node_without_a_limit_takes_everything(world: World) -> None:
    await world.informer.commit([Change.put(node("old-agent", None), 0)])
    await world.informer.commit([Change.put(pending(i), 0) for i in range(1, 301)])

    await world.scheduler.reconcile("pending")

    assert {t.status.state for t in await world.tasks()} == {TaskState.ASSIGNED}
