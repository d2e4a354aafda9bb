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
    DesiredState,
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
from shoal.reconciler.loop import Done
from shoal.reconciler.scheduler import PASS, Scheduler
from shoal.store import MemoryStore
from shoal.store.typed import Change, Object, TypedStore, decode
from tests.reconciler.world import service


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
        # Every change reaches the scheduler, as the leading manager routes them;
        # ``woken`` counts the changes that would have queued a pass.
        self.woken = 0
        informer.subscribe(self._route)

    def _route(self, old: Object | None, new: Object | None) -> None:
        if list(self.scheduler.keys_for(old, new)):
            self.woken += 1

    async def settle(self, most: int = 10) -> int:
        """Run passes until the scheduler is done; how many it took."""
        for passes in range(1, most + 1):
            if await self.scheduler.reconcile("pending") == Done():
                return passes
        raise AssertionError(f"the scheduler was not done after {most} passes")

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


# ------------------------------------------------ many more tasks than room

FULL = "no suitable node (1 node(s): task limit reached (--max-tasks 5))"


def many(first: int, last: int) -> list[Change]:
    """Pending tasks of slots ``first..last`` (copies of one, so thousands are cheap)."""
    one = pending(first)
    return [
        Change.put(one.model_copy(update={"id": f"big-{i}", "slot": i}), 0)
        for i in range(first, last + 1)
    ]


async def test_more_waiting_tasks_than_a_pass_takes_all_get_their_reason_and_it_settles(
    world: World,
) -> None:
    count = PASS + 1000
    await world.informer.commit([Change.put(node("n1", 5), 0)])
    await world.informer.commit(many(1, count))

    assert await world.settle() <= 4

    tasks = await world.tasks()
    assert sorted(t.slot for t in tasks if t.status.state == TaskState.ASSIGNED) == [1, 2, 3, 4, 5]
    waiting = [t for t in tasks if t.status.state == TaskState.PENDING]
    assert len(waiting) == count - 5
    assert {t.status.message for t in waiting} == {FULL}
    # Nothing changed since: a pass writes nothing, and nothing wakes one.
    revision, woken = world.informer.revision, world.woken
    assert await world.scheduler.reconcile("pending") == Done()
    assert (world.informer.revision, world.woken) == (revision, woken)


async def test_waiting_tasks_are_looked_at_again_when_room_frees_or_a_node_joins(
    world: World,
) -> None:
    await world.informer.commit([Change.put(node("n1", 5), 0)])
    await world.informer.commit(many(1, PASS + 500))
    await world.settle()
    woken = world.woken

    # A task ended on n1: its place goes to the lowest waiting slot.
    first = world.informer.tasks["big-1"]
    done = first.obj.model_copy(update={"status": TaskStatus(state=TaskState.COMPLETE)})
    await world.informer.commit([Change.put(done, first.revision)])
    assert world.woken == woken + 1
    await world.settle()
    assert world.informer.tasks["big-6"].obj.status.state == TaskState.ASSIGNED
    assert world.informer.tasks["big-7"].obj.status.state == TaskState.PENDING

    # A node joins: it takes the next five.
    await world.informer.commit([Change.put(node("n2", 5), 0)])
    await world.settle()
    placed = {t.slot: t.node_id for t in await world.tasks() if t.node_id}
    assert [placed.get(slot) for slot in range(7, 13)] == ["n2"] * 5 + [None]
    assert {
        t.status.message for t in await world.tasks() if t.status.state == TaskState.PENDING
    } == {"no suitable node (2 node(s): task limit reached (--max-tasks 5))"}


async def test_a_service_placed_differently_has_its_waiting_tasks_looked_at_again(
    world: World,
) -> None:
    nowhere = service("big", 3, constraints=["node.labels.zone == a"])
    await world.informer.commit([Change.put(nowhere, 0), Change.put(node("n1", 5), 0)])
    await world.informer.commit([Change.put(pending(i), 0) for i in range(1, 4)])
    await world.settle()
    assert {t.status.state for t in await world.tasks()} == {TaskState.PENDING}

    entry = world.informer.services["big"]
    woken = world.woken
    anywhere = service("big", 3)
    await world.informer.commit([Change.put(anywhere, entry.revision)])
    assert world.woken == woken + 1
    await world.settle()
    assert {t.status.state for t in await world.tasks()} == {TaskState.ASSIGNED}


async def test_tasks_arriving_in_several_commits_make_one_event_that_counts_them_all(
    world: World,
) -> None:
    await world.informer.commit([Change.put(node("n1", 5), 0)])
    for first in range(1, 1001, 250):  # as the orchestrator writes a large service
        await world.informer.commit(many(first, first + 249))
        await world.settle()

    events = world.events.for_object("service/big")
    assert [(e.reason, e.message) for e in events] == [
        ("Unschedulable", f"995 tasks pending: {FULL}")
    ]


async def test_a_deleted_services_waiting_tasks_are_not_placed_on_freed_room(
    world: World,
) -> None:
    await world.informer.commit([Change.put(service("big", 8), 0), Change.put(node("n1", 5), 0)])
    await world.informer.commit([Change.put(pending(i), 0) for i in range(1, 9)])
    await world.settle()
    await world.informer.commit([Change.delete("/services/big", None)])
    await world.settle()
    woken = world.woken
    # The orchestrator shuts the placed tasks down: room frees on n1, for nobody.
    for entry in [e for e in world.informer.tasks.values() if e.obj.node_id]:
        stopping = entry.obj.model_copy(update={"desired_state": DesiredState.SHUTDOWN})
        await world.informer.commit([Change.put(stopping, entry.revision)])
    assert world.woken == woken
    await world.settle()
    assert [t.slot for t in await world.tasks() if t.status.state == TaskState.PENDING] == [
        6,
        7,
        8,
    ]
