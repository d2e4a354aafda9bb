"""The event log (``shoal.reconciler.events``) on the memory store with a manual clock.

The flusher's own timer is set far off, so each test writes (``flush``) and
trims when it says, and reads what another manager's log would read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from shoal.clock import ManualClock
from shoal.models.node import Availability, Node, NodeDescription, NodeSpec
from shoal.models.task import Task, TaskState, TaskStatus
from shoal.reconciler.events import (
    PREFIX,
    EventFilter,
    EventRecorder,
    EventSettings,
    node_update_event,
    record_task_change,
)
from shoal.store import MemoryStore, Store

QUIET = dict(flush_interval=3600.0)


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    store = MemoryStore(max_txn_ops=128)
    yield store
    await store.aclose()


async def open_log(
    store: Store, clock: ManualClock, leader: bool = True, **settings: float
) -> EventRecorder:
    log = EventRecorder(EventSettings(**{**QUIET, **settings}), clock)  # type: ignore[arg-type]
    await log.start(store, trims=lambda: leader)
    return log


async def settle(log: EventRecorder, store: Store) -> None:
    """Wait until ``log``'s watch has seen every write to the store."""
    target = await store.revision()
    for _ in range(200):
        if log.revision >= target:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the event watch is at {log.revision}, the store at {target}")


async def test_events_are_kept_in_the_store_and_served_by_another_manager(
    store: MemoryStore,
) -> None:
    clock = ManualClock()
    leader = await open_log(store, clock)
    leader.record("node/n1", "NodeDown", "no heartbeat for 6s", warning=True)
    leader.record("service/web", "Scaled", "replicas set to 3")
    await leader.flush()
    kvs, _ = await store.range(PREFIX)
    assert len(kvs) == 2
    await leader.aclose()  # the leader is gone; a new manager lists the same history

    follower = await open_log(store, clock, leader=False)
    assert [(e.object, e.reason, e.type) for e in follower.events()] == [
        ("node/n1", "NodeDown", "Warning"),
        ("service/web", "Scaled", "Normal"),
    ]
    assert follower.events()[0].node == "n1"
    assert follower.events()[1].service == "web"
    await follower.aclose()


async def test_a_repeat_updates_the_last_event_with_its_count(store: MemoryStore) -> None:
    clock = ManualClock()
    log = await open_log(store, clock)
    log.record("service/web", "Unschedulable", "no node has 4 cpus")
    await log.flush()
    clock.advance(30)
    log.record("service/web", "Unschedulable", "no node has 4 cpus")
    log.record("service/web", "Unschedulable", "no node has 4 cpus")
    await log.flush()
    await settle(log, store)
    kvs, _ = await store.range(PREFIX)
    assert len(kvs) == 1
    (event,) = log.events()
    assert event.count == 3
    assert event.time == clock.now()
    assert event.first_time is not None and event.first_time < event.time
    log.record("service/web", "Unschedulable", "no node has 8 cpus")
    await log.flush()
    assert len((await store.range(PREFIX))[0]) == 2
    await log.aclose()


async def test_an_update_takes_the_place_of_the_objects_last_event_of_its_reason(
    store: MemoryStore,
) -> None:
    clock = ManualClock()
    log = await open_log(store, clock)
    log.record("service/web", "Unschedulable", "3 tasks pending: full", update=True)
    await log.flush()
    log.record("service/web", "Unschedulable", "5 tasks pending: full", update=True)
    await log.flush()
    await settle(log, store)
    assert len((await store.range(PREFIX))[0]) == 1
    (event,) = log.events()
    assert (event.message, event.count) == ("5 tasks pending: full", 2)
    # Another event came between: the next update is an event of its own.
    log.record("service/web", "Deleted", "deleted")
    log.record("service/web", "Unschedulable", "1 task pending: full", update=True)
    assert [(e.reason, e.message) for e in log.for_object("service/web")] == [
        ("Unschedulable", "5 tasks pending: full"),
        ("Deleted", "deleted"),
        ("Unschedulable", "1 task pending: full"),
    ]
    await log.aclose()


async def test_the_leader_trims_past_the_limit_oldest_first(store: MemoryStore) -> None:
    clock = ManualClock()
    log = await open_log(store, clock, limit=5)
    follower = await open_log(store, clock, leader=False, limit=5)
    for number in range(8):
        log.record(f"service/s{number}", "Created", "created")
        clock.advance(1)
    await log.flush()
    await settle(log, store)
    assert await log.trim() == 3
    await settle(follower, store)
    kvs, _ = await store.range(PREFIX)
    assert len(kvs) == 5
    assert [e.object for e in follower.events()] == [f"service/s{n}" for n in range(3, 8)]
    await follower.aclose()
    await log.aclose()


async def test_trimming_is_batched(store: MemoryStore) -> None:
    clock = ManualClock()
    # Not the trimmer in the background: the test trims pass by pass.
    log = await open_log(store, clock, leader=False, limit=10, flush_batch=100, max_pending=1000)
    for number in range(400):
        log.record(f"task/t{number}", "TaskRunning", "running")
    while log.pending:
        await log.flush()
    await settle(log, store)
    assert len((await store.range(PREFIX))[0]) == 400
    assert await log.trim() == 100  # at most one batch a pass
    assert await log.trim() == 100
    while await log.trim():
        pass
    assert len((await store.range(PREFIX))[0]) == 10
    await log.aclose()


async def test_events_older_than_the_ttl_go(store: MemoryStore) -> None:
    clock = ManualClock()
    log = await open_log(store, clock, ttl=600)
    log.record("service/old", "Created", "created")
    clock.advance(300)
    log.record("service/new", "Created", "created")
    await log.flush()
    await settle(log, store)
    assert await log.trim() == 0
    clock.advance(301)
    assert await log.trim() == 1
    await settle(log, store)
    assert [e.object for e in log.events()] == ["service/new"]
    assert len((await store.range(PREFIX))[0]) == 1
    await log.aclose()


def _task(state: TaskState, **status: object) -> Task:
    return Task.model_validate(
        {
            "id": "abcdef0123456789",
            "service": "web",
            "slot": 1,
            "nodeId": "n1",
            "template": {"runtime": "process", "command": ["sleep", "60"]},
            "createdAt": datetime(2026, 1, 1, tzinfo=UTC),
            "status": TaskStatus.model_validate({"state": state, **status}).to_wire(),
        }
    )


async def test_filters_by_service_node_type_and_time(store: MemoryStore) -> None:
    clock = ManualClock()
    log = await open_log(store, clock)
    log.record("service/web", "Scaled", "replicas set to 2")
    record_task_change(log, _task(TaskState.RUNNING), _task(TaskState.FAILED, exitCode=3))
    clock.advance(600)
    log.record("node/n2", "NodeDown", "silent", warning=True)
    log.record("service/db", "Scaled", "replicas set to 1")
    await log.flush()
    await settle(log, store)

    def objects(selector: EventFilter) -> list[str]:
        return [e.object for e in log.events(selector)]

    assert objects(EventFilter(service="web")) == ["service/web", "task/web.1.abcdef01"]
    assert objects(EventFilter(node="n1")) == ["task/web.1.abcdef01"]
    assert objects(EventFilter(type="Warning")) == ["task/web.1.abcdef01", "node/n2"]
    since = EventFilter.from_wire({"sinceSeconds": 60}, clock.now())
    assert objects(since) == ["node/n2", "service/db"]
    assert [e.object for e in log.events(limit=1)] == ["service/db"]
    with pytest.raises(ValueError, match="type"):
        EventFilter.from_wire({"type": "Error"}, clock.now())
    with pytest.raises(ValueError, match="sinceSeconds"):
        EventFilter.from_wire({"sinceSeconds": "ten"}, clock.now())
    await log.aclose()


async def test_watch_from_a_cursor_then_as_written(store: MemoryStore) -> None:
    clock = ManualClock()
    log = await open_log(store, clock)
    log.record("service/a", "Created", "created")
    await log.flush()
    await settle(log, store)
    cursor = log.events()[-1].cursor
    log.record("service/b", "Created", "created")
    log.record("node/n1", "NodeReady", "agent registered")
    await log.flush()
    await settle(log, store)

    seen: list[str] = []
    watch = log.watch(cursor, EventFilter(type="Normal"))

    async def follow() -> None:
        async for event in watch:
            seen.append(event.object)
            if len(seen) == 3:
                return

    async def caught_up() -> None:
        while len(seen) < 2:  # noqa: ASYNC110 - the follower appends; nothing to wait on
            await asyncio.sleep(0.001)

    follower = asyncio.create_task(follow())
    await asyncio.wait_for(caught_up(), 2.0)
    assert seen == ["service/b", "node/n1"]  # a is before the cursor
    log.record("node/n2", "NodeDown", "silent", warning=True)  # filtered out
    log.record("service/c", "Created", "created")
    await log.flush()
    await asyncio.wait_for(follower, 2.0)
    assert seen == ["service/b", "node/n1", "service/c"]
    await log.aclose()


async def test_overload_aggregates_instead_of_growing(store: MemoryStore) -> None:
    clock = ManualClock()
    log = await open_log(store, clock, max_pending=10, flush_batch=10)
    for number in range(1000):
        record_task_change(
            log,
            _task(TaskState.STARTING),
            _task(TaskState.RUNNING).model_copy(update={"slot": number}),
        )
    # Ten are waiting; the other 990 were folded into one summary for the service.
    assert log.pending == 11
    metrics = {m.name: m.samples[0].value for m in log.collector().collect()}
    assert metrics["shoal_events_aggregated"] == 990
    assert metrics["shoal_events_dropped"] == 0
    while log.pending:
        await log.flush()
    await settle(log, store)
    events = log.events()
    assert len(events) == 11
    summary = events[-1]
    assert (summary.object, summary.reason, summary.count) == ("service/web", "TaskRunning", 990)
    assert "990 events like this one" in summary.message
    await log.aclose()


async def test_writes_stay_within_the_store_transaction_limit(store: MemoryStore) -> None:
    clock = ManualClock()
    log = await open_log(store, clock, flush_batch=300, max_pending=300)
    for number in range(300):
        log.record(f"task/t{number}", "TaskAssigned", "new -> assigned on n1")
    assert await log.flush() == 300  # three transactions of at most 128 (the store refuses more)
    assert len((await store.range(PREFIX))[0]) == 300
    await log.aclose()


async def test_a_failed_write_keeps_the_events_for_the_next_pass(store: MemoryStore) -> None:
    clock = ManualClock()
    log = await open_log(store, clock)
    log.record("service/web", "Scaled", "replicas set to 3")
    await store.aclose()
    with pytest.raises(Exception, match="closed"):
        await log.flush()
    assert log.pending == 1
    await log.aclose()


async def test_a_long_message_is_cut_and_an_event_the_store_refuses_blocks_nothing() -> None:
    clock = ManualClock()
    roomy = MemoryStore(max_txn_ops=128)
    log = await open_log(roomy, clock)
    log.record("sync/prod", "ValidationFailed", "x" * 20_000, warning=True)
    await log.flush()
    (stored,) = log.events()
    assert stored.message.startswith("x" * 4096) and "(15904 more characters)" in stored.message
    await log.aclose()
    await roomy.aclose()

    tight = MemoryStore(max_txn_ops=128, max_txn_bytes=2000)  # smaller than one long event
    log = await open_log(tight, clock, flush_batch=100)
    log.record("sync/prod", "ValidationFailed", "y" * 5000, warning=True)
    for number in range(50):
        log.record(f"task/t{number}", "TaskAssigned", "new -> assigned on n1")
    await log.flush()
    assert log.pending == 0
    assert len((await tight.range(PREFIX))[0]) == 50  # every small event, past the refused one
    assert log._counts.dropped == 1
    await log.aclose()
    await tight.aclose()


def test_task_and_node_events_read_as_sentences() -> None:
    log = EventRecorder()
    record_task_change(
        log, _task(TaskState.RUNNING), _task(TaskState.FAILED, exitCode=1, error="exit status 1")
    )
    record_task_change(log, _task(TaskState.ASSIGNED), _task(TaskState.RUNNING, pid=4242))
    record_task_change(log, _task(TaskState.RUNNING), _task(TaskState.RUNNING))  # no change
    failed, running = log.events()
    assert (failed.reason, failed.type) == ("TaskFailed", "Warning")
    assert failed.message == "running -> failed on n1, exit code 1: exit status 1"
    assert running.message == "assigned -> running on n1 (pid 4242)"
    node = Node(
        id="n1",
        description=NodeDescription(hostname="n1"),
        spec=NodeSpec(availability=Availability.DRAIN, labels={"zone": "a"}),
    )
    reason, message = node_update_event(node)
    assert reason == "NodeDrained"
    assert message == "availability drain; labels set by operators: zone=a"
    assert "{" not in message


def test_without_a_store_events_stay_bounded_in_memory() -> None:
    clock = ManualClock()
    log = EventRecorder(EventSettings(limit=3, ttl=60), clock)
    for number in range(5):
        log.record(f"service/s{number}", "Created", "created")
    assert [e.object for e in log.events()] == ["service/s2", "service/s3", "service/s4"]
    clock.advance(61)
    log.record("service/s5", "Created", "created")
    assert [e.object for e in log.events()] == ["service/s5"]


async def test_closing_as_the_flusher_wakes_ends_it(store: MemoryStore) -> None:
    # Python 3.11's wait_for swallows a cancel that comes as its awaitable finishes:
    # a flusher woken by a record at the moment the manager closed its log went
    # back to sleep for flush_interval, and closing waited for it.
    clock = ManualClock()
    for yields in range(4):
        log = await open_log(store, clock, flush_batch=1)
        await asyncio.sleep(0)  # the flusher is waiting for its wake-up
        log.record(f"service/s{yields}", "Created", "created")  # wakes it
        for _ in range(yields):
            await asyncio.sleep(0)
        closing = asyncio.create_task(log.aclose())
        done, _ = await asyncio.wait({closing}, timeout=5)
        assert closing in done, f"closing waited for the flusher ({yields} yields)"
