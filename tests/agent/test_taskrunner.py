"""The task runner on its own, with the ``sim`` runtime: when it starts, adopts, or gives up.

The runner gets a task as the manager's assignment set has it and reports what
it observes; the test collects the reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoal.agent.taskrunner import TaskRunner
from shoal.models import DesiredState, Task, TaskState, TaskStatus
from shoal.runtimes.base import RuntimeSettings
from shoal.runtimes.sim import SimRuntime
from tests.reconciler.world import service

pytestmark = pytest.mark.looptime


class Reports:
    def __init__(self) -> None:
        self.states: list[TaskState] = []
        self.last: TaskStatus | None = None
        self.changed = asyncio.Event()

    def __call__(self, task_id: str, status: TaskStatus) -> None:
        self.states.append(status.state)
        self.last = status
        self.changed.set()

    async def until(self, state: TaskState) -> None:
        while state not in self.states:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[SimRuntime]:
    sim = SimRuntime(RuntimeSettings(state_dir=tmp_path, node_name="n1"))
    yield sim
    await sim.aclose()


def task(state: TaskState, desired: DesiredState = DesiredState.RUNNING) -> Task:
    return Task(
        id="t1",
        service="web",
        slot=0,
        node_id="n1",
        template=service(mode="global").spec.template,
        desired_state=desired,
        created_at=datetime.now(UTC),
        status=TaskStatus(state=state),
    )


async def test_a_task_not_yet_assigned_waits_for_its_assignment(runtime: SimRuntime) -> None:
    reports = Reports()
    runner = TaskRunner(task(TaskState.PENDING), runtime, reports, "n1", None)
    await asyncio.sleep(5)
    assert reports.states == []  # neither started nor declared lost
    assert runner.handle is None
    runner.update(task(TaskState.ASSIGNED))
    await reports.until(TaskState.RUNNING)
    assert reports.states == [TaskState.ACCEPTED, TaskState.STARTING, TaskState.RUNNING]
    assert runner.handle is not None and (await runtime.inspect(runner.handle)).running
    await runner.remove()


async def test_a_task_shut_down_before_its_assignment_never_starts(runtime: SimRuntime) -> None:
    reports = Reports()
    runner = TaskRunner(task(TaskState.PENDING), runtime, reports, "n1", None)
    await asyncio.sleep(1)
    runner.update(task(TaskState.PENDING, DesiredState.SHUTDOWN))
    await reports.until(TaskState.SHUTDOWN)
    assert reports.states == [TaskState.SHUTDOWN]
    assert runner.handle is None
    await runner.remove()


async def test_a_started_task_without_a_handle_is_lost(runtime: SimRuntime) -> None:
    reports = Reports()
    runner = TaskRunner(task(TaskState.RUNNING), runtime, reports, "n1", None)
    await reports.until(TaskState.FAILED)
    assert reports.last is not None and reports.last.error == "lost"
    await runner.remove()


async def test_a_running_task_with_a_handle_is_adopted(runtime: SimRuntime) -> None:
    first = Reports()
    runner = TaskRunner(task(TaskState.ASSIGNED), runtime, first, "n1", None)
    await first.until(TaskState.RUNNING)
    await runner.aclose()  # the agent goes away; the task keeps running
    (handle,) = await runtime.recover()
    again = Reports()
    adopted = TaskRunner(task(TaskState.RUNNING), runtime, again, "n1", handle)
    await asyncio.sleep(1)
    assert TaskState.FAILED not in again.states
    assert (await runtime.inspect(handle)).running
    await adopted.remove()
