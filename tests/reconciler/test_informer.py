"""The informer on its own: write-through, echoes, relist, and a watch that survives bugs.

A memory store behind it; ``SlowRangeStore`` answers ranges late, as a store
far away does, so a write can land while a relist is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from shoal.models import DesiredState, Node, Task, TaskState, TaskStatus
from shoal.models.service import TaskTemplate
from shoal.reconciler.informer import Informer
from shoal.store import KeyValue, MemoryStore
from shoal.store.base import Event
from shoal.store.typed import NODES, TASKS, Change, Object, TypedStore
from tests.reconciler.world import node

pytestmark = pytest.mark.looptime


class SlowRangeStore(MemoryStore):
    """Takes its snapshot at once but answers a range only when ``reply`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.reply = asyncio.Event()
        self.in_flight = asyncio.Event()

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        answer = await super().range(prefix)
        if self.hold:
            self.in_flight.set()
            await self.reply.wait()
        return answer


class BrokenWatchStore(MemoryStore):
    """A backend whose watch raises an error it should not (a missed mapping) once."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = 1

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        inner = super().watch(prefix, start_revision)

        async def events() -> AsyncIterator[list[Event]]:
            async for batch in inner:
                if self.broken:
                    self.broken -= 1
                    raise RuntimeError("a bug in the backend")
                yield batch

        return events()


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Poll ``condition`` in (virtual) loop time; fail after ``within`` seconds."""

    async def poll() -> None:
        while not condition():  # noqa: ASYNC110 - nothing to wait on for a restart count
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), within)


def labelled(node_id: str, value: str) -> Node:
    return node(node_id, labels={"v": value})


async def test_write_through_is_visible_at_once_and_its_echo_changes_nothing() -> None:
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    seen: list[tuple[Object | None, Object | None]] = []
    informer.subscribe(lambda old, new: seen.append((old, new)))
    await informer.commit([Change.put(labelled("n1", "a"), 0)])
    assert informer.nodes["n1"].obj.labels == {"v": "a"}  # before any watch event
    assert len(seen) == 1
    await asyncio.sleep(1)  # the watch delivers the echo of our own write meanwhile
    assert len(seen) == 1
    await informer.aclose()
    await store.aclose()


async def test_changes_by_others_arrive_through_the_watch() -> None:
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    other = TypedStore(store)  # another writer, not through this informer
    await other.commit([Change.put(labelled("n1", "a"), 0)])
    await until(lambda: "n1" in informer.nodes)
    await store.delete(NODES + "n1")
    await until(lambda: "n1" not in informer.nodes)
    await informer.aclose()
    await store.aclose()


async def test_relist_keeps_writes_committed_while_the_range_was_in_flight() -> None:
    store = SlowRangeStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    await informer.commit([Change.put(labelled("n1", "old"), 0)])

    store.hold = True
    relist = asyncio.create_task(informer.catch_up())
    await store.in_flight.wait()  # the snapshot is taken; its answer is on its way
    entry = informer.nodes["n1"]
    await informer.commit(
        [Change.put(labelled("n1", "new"), entry.revision), Change.put(labelled("n2", "new"), 0)]
    )
    store.reply.set()
    await relist

    # The snapshot predates both writes: it must neither roll n1 back nor delete n2.
    assert informer.nodes["n1"].obj.labels == {"v": "new"}
    assert "n2" in informer.nodes
    await informer.aclose()
    await store.aclose()


async def test_relist_removes_what_was_deleted_and_adds_what_was_created_meanwhile() -> None:
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    await informer.commit([Change.put(labelled("n1", "a"), 0)])
    await informer.aclose()  # stop following: the cache misses what happens next
    await store.delete(NODES + "n1")
    await TypedStore(store).commit([Change.put(labelled("n2", "b"), 0)])
    assert "n1" in informer.nodes
    await informer.catch_up()
    assert set(informer.nodes) == {"n2"}
    await store.aclose()


async def test_the_watch_survives_an_unexpected_error_and_misses_nothing() -> None:
    store = BrokenWatchStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    other = TypedStore(store)
    await other.commit([Change.put(labelled("n1", "a"), 0)])  # the batch the bug eats
    await until(lambda: informer.restarts["informer-watch"] == 1)
    await other.commit([Change.put(labelled("n2", "b"), 0)])
    await until(lambda: {"n1", "n2"} <= set(informer.nodes))
    await informer.aclose()
    await store.aclose()


async def test_an_undecodable_object_is_skipped_not_fatal() -> None:
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    await store.put(NODES + "bad", b'{"id": "bad"}')  # no description: not a Node
    await TypedStore(store).commit([Change.put(labelled("n1", "a"), 0)])
    await until(lambda: "n1" in informer.nodes)
    assert "bad" not in informer.nodes
    assert informer.restarts["informer-watch"] == 0
    await informer.aclose()
    await store.aclose()


async def test_relist_does_not_revive_objects_deleted_while_its_range_was_in_flight() -> None:
    store = SlowRangeStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    count = 1500  # enough deleted keys for the informer to start forgetting tombstones
    await informer.commit([Change.put(labelled(f"n{i}", "a"), 0) for i in range(count)])
    store.hold = True
    relist = asyncio.create_task(informer.catch_up())
    await store.in_flight.wait()  # its snapshot still holds every node
    await informer.commit([Change.delete(NODES + f"n{i}", None) for i in range(count)])
    await informer.commit([Change.put(labelled("marker", "b"), 0)])
    # The memory store's watch delivers within a few loop turns: give it a (virtual)
    # second, so the watch has passed the deletes before the range answers.
    await asyncio.sleep(1)
    store.reply.set()
    await relist
    assert set(informer.nodes) == {"marker"}
    await informer.aclose()
    await store.aclose()


async def test_event_churn_leaves_no_trace_in_the_cache() -> None:
    """Events are written and trimmed by the thousand under ``/events/``: the informer
    caches none of them and keeps no tombstone per trimmed event (memory that would
    grow with the event rate, and scans of it on every watch batch)."""
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    await informer.commit([Change.put(labelled("n1", "a"), 0)])
    for i in range(2000):
        await store.put(f"/events/{i:06d}", b'{"reason": "Started"}')
        await store.delete(f"/events/{i:06d}")
    await store.put(NODES + "n2", labelled("n2", "b").to_json_bytes())
    await until(lambda: "n2" in informer.nodes)
    assert len(informer._applied) == 2  # the two nodes: nothing of the events
    await informer.aclose()
    await store.aclose()


def _task(task_id: str, service: str, state: TaskState, desired: DesiredState) -> Task:
    return Task(
        id=task_id,
        service=service,
        slot=int(task_id[1:]),
        node_id="n1",
        template=TaskTemplate(runtime="sim", command=["work"]),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        desired_state=desired,
        status=TaskStatus(state=state),
    )


async def test_each_service_s_live_and_running_tasks_are_counted_as_they_change() -> None:
    """``get services`` reads these counts instead of walking every task of the service
    (10,000 tasks polled ten times a second were 5 % of a busy manager's CPU)."""
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    run, stop = DesiredState.RUNNING, DesiredState.SHUTDOWN
    await informer.commit(
        [
            Change.put(_task("t1", "web", TaskState.RUNNING, run), None),
            Change.put(_task("t2", "web", TaskState.PENDING, run), None),
            Change.put(_task("t3", "web", TaskState.RUNNING, stop), None),  # stopping
            Change.put(_task("t4", "db", TaskState.RUNNING, run), None),
        ]
    )
    assert informer.task_counts("web") == (2, 1)
    assert informer.task_counts("db") == (1, 1)
    assert informer.task_counts("none") == (0, 0)
    # Moves: one starts running, one is told to stop; another writer's change too.
    await informer.commit([Change.put(_task("t2", "web", TaskState.RUNNING, run), None)])
    await informer.commit([Change.put(_task("t1", "web", TaskState.RUNNING, stop), None)])
    assert informer.task_counts("web") == (1, 1)
    other = TypedStore(store)
    await other.commit([Change.put(_task("t5", "web", TaskState.RUNNING, run), None)])
    await until(lambda: informer.task_counts("web") == (2, 2))
    # Deleted: through the watch, and through a relist that finds them gone.
    await store.delete(TASKS + "t2")
    await until(lambda: informer.task_counts("web") == (1, 1))
    await store.delete(TASKS + "t4")
    await informer.catch_up()
    assert informer.task_counts("db") == (0, 0)
    assert "db" not in informer._live and "db" not in informer._running
    # The counts agree with what the cache holds.
    tasks = [e.obj for e in informer.tasks_of_service("web")]
    live = [t for t in tasks if t.desired_state == run]
    assert informer.task_counts("web") == (
        len(live),
        sum(t.status.state == TaskState.RUNNING for t in live),
    )
    await informer.aclose()
    await store.aclose()
