"""The status writer on its own: merged writes, state order, one conflicting task.

A memory store and an informer; the test submits reports as agents' calls
would and reads the result back from the store.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from shoal.errors import ConflictError
from shoal.manager.statuswriter import StatusWriter
from shoal.models import Task, TaskState, TaskStatus
from shoal.store.typed import TASKS, Change
from tests.reconciler.world import World, open_world, service

pytestmark = pytest.mark.looptime


def status(state: TaskState) -> TaskStatus:
    return TaskStatus(state=state, timestamp=datetime.now(UTC), message=state.value)


async def placed_tasks(world: World, count: int, node_id: str = "n1") -> list[Task]:
    template = service().spec.template
    tasks = [
        Task(
            id=f"t{i}",
            service="web",
            slot=i + 1,
            node_id=node_id,
            template=template,
            created_at=datetime.now(UTC),
            status=status(TaskState.ASSIGNED),
        )
        for i in range(count)
    ]
    await world.put(*tasks)
    return tasks


async def stored_state(world: World, task_id: str) -> TaskState:
    kv = await world.store.get(TASKS + task_id)
    assert kv is not None
    return Task.from_wire(kv.value).status.state


async def test_concurrent_calls_share_transactions_and_all_land() -> None:
    async with open_world() as world:
        await placed_tasks(world, 20)
        writer = StatusWriter(world.informer)
        _, before = await world.store.range("/tasks/")
        await asyncio.gather(
            *(writer.submit("n1", {f"t{i}": status(TaskState.RUNNING)}) for i in range(20))
        )
        for i in range(20):
            assert await stored_state(world, f"t{i}") == TaskState.RUNNING
        _, after = await world.store.range("/tasks/")
        assert after - before < 20  # merged: fewer transactions than calls
        await writer.aclose()


async def test_of_two_waiting_reports_the_further_state_wins() -> None:
    async with open_world() as world:
        await placed_tasks(world, 1)
        writer = StatusWriter(world.informer)
        # Both reach the writer before it writes: the late "starting" (a resend) must
        # not overwrite the "running" queued before it.
        await asyncio.gather(
            writer.submit("n1", {"t0": status(TaskState.RUNNING)}),
            writer.submit("n1", {"t0": status(TaskState.STARTING)}),
        )
        assert await stored_state(world, "t0") == TaskState.RUNNING
        await writer.aclose()


async def test_reports_never_move_a_task_backwards_or_touch_another_nodes_task() -> None:
    async with open_world() as world:
        await placed_tasks(world, 2)
        writer = StatusWriter(world.informer)
        await writer.submit("n1", {"t0": status(TaskState.RUNNING)})
        await writer.submit("n1", {"t0": status(TaskState.STARTING)})
        await writer.submit("n2", {"t1": status(TaskState.FAILED)})  # t1 is not on n2
        assert await stored_state(world, "t0") == TaskState.RUNNING
        assert await stored_state(world, "t1") == TaskState.ASSIGNED
        await writer.aclose()


async def test_one_conflicting_task_fails_only_its_own_call() -> None:
    async with open_world() as world:
        tasks = await placed_tasks(world, 8)
        # The cache stops following the store, and somebody else changes t3 behind
        # its back: every write that compares t3's revision loses, for good.
        await world.informer.aclose()
        await world.store.put(
            TASKS + "t3", tasks[3].model_copy(update={"attempt": 9}).to_json_bytes()
        )
        writer = StatusWriter(world.informer)
        calls = [writer.submit("n1", {f"t{i}": status(TaskState.RUNNING)}) for i in range(8)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [isinstance(r, ConflictError) for r in results] == [i == 3 for i in range(8)]
        for i in range(8):
            expected = TaskState.ASSIGNED if i == 3 else TaskState.RUNNING
            assert await stored_state(world, f"t{i}") == expected
        await writer.aclose()


async def test_a_report_for_a_deleted_task_is_dropped_quietly() -> None:
    async with open_world() as world:
        await placed_tasks(world, 1)
        await world.informer.commit([Change.delete(TASKS + "t0", None)])
        writer = StatusWriter(world.informer)
        await writer.submit("n1", {"t0": status(TaskState.RUNNING)})
        assert await world.store.get(TASKS + "t0") is None
        await writer.aclose()
