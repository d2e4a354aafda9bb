"""Tasks born placed: the orchestrator gives new tasks their nodes as it creates them.

The orchestrator calls ``Scheduler.place_new`` with the tasks a pass creates:
each is written once, already ``assigned`` to the node the scheduler would
have chosen (same filters, spread, ports, ``--max-tasks``), or ``pending`` for
the scheduler's passes when it fits nowhere. The node loads have one source of
truth, the scheduler's index: a placement decided but not written yet is
reserved there, so a scheduling pass (or another orchestrator pass) running
while that write is in flight never gives the same room away twice, and a
write that fails frees its room again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from shoal.errors import StoreUnavailableError
from shoal.models import Node, Task, TaskState, TaskStatus
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.loop import ControllerRunner, LoopMetrics
from shoal.reconciler.orchestrator import Orchestrator
from shoal.reconciler.scheduler import KEY, Scheduler
from shoal.store import MemoryStore
from shoal.store.base import Compare, Op, TxnResult
from shoal.store.typed import TASKS, Object, TypedStore
from tests.reconciler.world import World, node, service


class HeldStore(MemoryStore):
    """A memory store whose next transaction can be held (or failed) at will."""

    def __init__(self) -> None:
        super().__init__()
        self.held: asyncio.Event | None = None
        self.waiting = asyncio.Event()
        self.fail_next = False

    def hold_next(self) -> asyncio.Event:
        self.held = asyncio.Event()
        self.waiting.clear()
        return self.held

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        held, self.held = self.held, None
        if held is not None:
            self.waiting.set()
            await held.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailableError("the store went away")
        return await super().txn(compares, success, failure)


class Plane:
    """A leader's orchestrator and scheduler on one informer, changes routed to both."""

    def __init__(self, store: HeldStore, informer: Informer) -> None:
        self.store = store
        self.informer = informer
        self.world = World(store, informer)
        events = EventRecorder()
        self.events = events
        self.scheduler = Scheduler(informer, events)
        self.orchestrator = Orchestrator(
            informer, events, clock=self.world.clock, placer=self.scheduler
        )
        self.leading = True
        # The scheduler keys each change asked for (its passes are the test's to run).
        self.scheduler_keys: list[str] = []

        def route(old: Object | None, new: Object | None) -> None:
            if self.leading:
                self.scheduler_keys.extend(self.scheduler.keys_for(old, new))

        informer.subscribe(route)

    def tasks(self, name: str = "web") -> list[Task]:
        return self.world.tasks(name)

    def per_node(self, name: str | None = None) -> dict[str, int]:
        live = (
            e.obj
            for e in self.informer.all_tasks()
            if (name is None or e.obj.service == name)
            and e.obj.node_id
            and e.obj.desired_state == "running"
        )
        return dict(Counter(t.node_id or "" for t in live))


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    store = HeldStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    try:
        yield Plane(store, informer)
    finally:
        await informer.aclose()
        await store.aclose()


def limited(node_id: str, max_tasks: int, runtimes: tuple[str, ...] = ("sim",)) -> Node:
    base = node(node_id, runtimes=runtimes)
    description = base.description.model_copy(update={"max_tasks": max_tasks})
    return base.model_copy(update={"description": description})


def pending(task_id: str, name: str, slot: int = 1) -> Task:
    return Task(
        id=task_id,
        service=name,
        slot=slot,
        template=service(name).spec.template,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        status=TaskStatus(state=TaskState.PENDING, message="waiting for a node"),
    )


async def one_room_two_takers(plane: Plane) -> None:
    """Node n1 with room for one task; ``waits-1`` pending since before; ``web`` of one
    replica, not reconciled yet: both want n1's one place."""
    await plane.world.put(limited("n1", 1))
    await plane.world.put(service("waits", 1))
    await plane.world.put(pending("waits-1", "waits"))
    await plane.world.put(service("web", 1))


async def test_new_tasks_are_written_once_assigned_and_spread_over_the_nodes(
    plane: Plane,
) -> None:
    await plane.world.put(node("n1"), node("n2"), node("n3"))
    await plane.world.put(service("web", 7))
    plane.scheduler_keys.clear()
    await plane.orchestrator.reconcile("web")
    tasks = plane.tasks()
    assert len(tasks) == 7
    assert {t.status.state for t in tasks} == {TaskState.ASSIGNED}
    per_node = plane.per_node()
    assert sorted(per_node.values()) == [2, 2, 3]
    # One write each (no pending version first), and nothing left for a scheduling pass.
    for task in tasks:
        kv = await plane.store.get(TASKS + task.id)
        assert kv is not None and kv.version == 1
    assert plane.scheduler_keys == []
    # A second service spreads over what the first left: fewest tasks in total first.
    await plane.world.put(service("api", 2))
    await plane.orchestrator.reconcile("api")
    (busiest,) = [n for n, count in per_node.items() if count == 3]
    assert sorted(plane.per_node("api")) == sorted(set(per_node) - {busiest})


async def test_a_full_node_takes_what_fits_and_the_rest_waits_for_the_scheduler(
    plane: Plane,
) -> None:
    await plane.world.put(limited("n1", 2))
    await plane.world.put(service("web", 3))
    plane.scheduler_keys.clear()
    await plane.orchestrator.reconcile("web")
    states = Counter(t.status.state for t in plane.tasks())
    assert states == {TaskState.ASSIGNED: 2, TaskState.PENDING: 1}
    assert plane.scheduler_keys == [KEY]  # the pending one wakes a pass
    await plane.scheduler.reconcile(KEY)
    (waiting,) = [t for t in plane.tasks() if t.status.state == TaskState.PENDING]
    assert "task limit reached (--max-tasks 2)" in waiting.status.message
    (event,) = [e for e in plane.events.events() if e.reason == "Unschedulable"]
    assert event.message.startswith("1 task pending: no suitable node")
    assert plane.per_node() == {"n1": 2}


async def test_tasks_born_placed_never_share_a_host_port_on_a_node(plane: Plane) -> None:
    ports = {"ports": [{"published": 8080, "target": 80}]}
    await plane.world.put(node("n1", runtimes=("docker",)), node("n2", runtimes=("docker",)))
    await plane.world.put(service("web", 3, runtime="docker", image="x", **ports))
    await plane.world.put(service("api", 1, runtime="docker", image="x", **ports))
    await plane.orchestrator.reconcile("web")
    await plane.orchestrator.reconcile("api")
    assert plane.per_node() == {"n1": 1, "n2": 1}
    await plane.scheduler.reconcile(KEY)
    messages = [t.status.message for n in ("web", "api") for t in plane.tasks(n) if not t.node_id]
    assert len(messages) == 2
    assert all("host port 8080/tcp already in use" in m for m in messages)


async def test_a_scheduling_pass_while_a_placement_is_written_does_not_take_its_room(
    plane: Plane,
) -> None:
    await one_room_two_takers(plane)
    release = plane.store.hold_next()
    creating = asyncio.create_task(plane.orchestrator.reconcile("web"))
    await plane.store.waiting.wait()  # web's task is placed on n1, its write in flight
    await plane.scheduler.reconcile(KEY)
    waiting = plane.informer.tasks["waits-1"].obj
    assert waiting.node_id is None
    assert "task limit reached" in waiting.status.message
    release.set()
    await creating
    (task,) = plane.tasks()
    assert task.node_id == "n1" and task.status.state == TaskState.ASSIGNED
    assert plane.per_node() == {"n1": 1}


async def test_a_placement_while_a_scheduling_pass_is_written_does_not_take_its_room(
    plane: Plane,
) -> None:
    await one_room_two_takers(plane)
    release = plane.store.hold_next()
    passing = asyncio.create_task(plane.scheduler.reconcile(KEY))
    await plane.store.waiting.wait()  # waits-1 placed on n1, the write in flight
    await plane.orchestrator.reconcile("web")
    (task,) = plane.tasks()
    assert task.node_id is None and task.status.state == TaskState.PENDING
    release.set()
    await passing
    assert plane.informer.tasks["waits-1"].obj.node_id == "n1"
    assert plane.per_node() == {"n1": 1}


async def test_a_placement_whose_write_failed_frees_its_room(plane: Plane) -> None:
    await plane.world.put(limited("n1", 1))
    await plane.world.put(service("web", 1))
    plane.store.fail_next = True
    with pytest.raises(StoreUnavailableError):
        await plane.orchestrator.reconcile("web")
    assert plane.tasks() == []
    await plane.world.put(service("waits", 1))
    await plane.world.put(pending("waits-1", "waits"))
    await plane.scheduler.reconcile(KEY)
    assert plane.informer.tasks["waits-1"].obj.node_id == "n1"


async def test_a_manager_leading_again_places_new_tasks_by_what_changed_meanwhile(
    plane: Plane,
) -> None:
    await plane.world.put(limited("n1", 2), limited("n2", 2))
    await plane.scheduler.reconcile(KEY)  # the first term: the index is built
    plane.leading = False  # another manager leads and places two tasks on n1
    await plane.world.put(service("other", 2))
    placed = [
        pending(f"other-{i}", "other", i).model_copy(
            update={"node_id": "n1", "status": TaskStatus(state=TaskState.ASSIGNED)}
        )
        for i in (1, 2)
    ]
    await plane.world.put(*placed)
    plane.leading = True  # this manager leads again: a runner starts each controller
    runner = ControllerRunner(plane.scheduler, LoopMetrics(CollectorRegistry()))
    runner.start()
    await runner.aclose()
    await plane.world.put(service("web", 2))
    await plane.orchestrator.reconcile("web")
    assert plane.per_node("web") == {"n2": 2}
    assert plane.per_node() == {"n1": 2, "n2": 2}


async def test_without_a_placer_tasks_are_born_pending(plane: Plane) -> None:
    orchestrator = Orchestrator(plane.informer, plane.events, clock=plane.world.clock)
    await plane.world.put(node("n1"))
    await plane.world.put(service("web", 2))
    await orchestrator.reconcile("web")
    assert {t.status.state for t in plane.tasks()} == {TaskState.PENDING}
    await plane.scheduler.reconcile(KEY)
    assert {t.status.state for t in plane.tasks()} == {TaskState.ASSIGNED}
