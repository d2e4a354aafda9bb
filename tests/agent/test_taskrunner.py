"""The task runner on its own, with the ``sim`` runtime: when it starts, adopts, or gives up.

The runner gets a task as the manager's assignment set has it and reports what
it observes; the test collects the reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def task(
    state: TaskState,
    desired: DesiredState = DesiredState.RUNNING,
    task_id: str = "t1",
    **template: Any,
) -> Task:
    return Task(
        id=task_id,
        service="web",
        slot=0,
        node_id="n1",
        template=service(mode="global", **template).spec.template,
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
    # A sim task starts at once: accepted, starting and running in one go, of which
    # the reporter gets the newest only (it would send no other).
    assert reports.states == [TaskState.RUNNING]
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


async def test_a_slow_start_is_reported_starting_before_running(runtime: SimRuntime) -> None:
    reports = Reports()
    runner = TaskRunner(
        task(TaskState.ASSIGNED, sim={"startDelay": "5s"}), runtime, reports, "n1", None
    )
    await reports.until(TaskState.STARTING)
    assert reports.states == [TaskState.STARTING]
    await reports.until(TaskState.RUNNING)
    assert reports.states == [TaskState.STARTING, TaskState.RUNNING]
    await runner.remove()


@pytest.mark.looptime(False)  # a sim task runs out by the wall clock (its journal's)
@pytest.mark.parametrize(
    ("sim", "state", "exit_code"),
    [
        pytest.param({"runFor": "0.3s"}, TaskState.COMPLETE, 0, id="runs-out"),
        pytest.param({"runFor": "0.3s", "exitCode": 3}, TaskState.FAILED, 3, id="fails"),
        pytest.param({}, TaskState.SHUTDOWN, 143, id="stopped"),
    ],
)
async def test_a_sim_task_ends_as_its_runtime_says(
    runtime: SimRuntime, sim: dict[str, Any], state: TaskState, exit_code: int
) -> None:
    reports = Reports()
    runner = TaskRunner(task(TaskState.ASSIGNED, sim=sim), runtime, reports, "n1", None)
    await reports.until(TaskState.RUNNING)
    if state == TaskState.SHUTDOWN:
        runner.update(task(TaskState.RUNNING, DesiredState.SHUTDOWN, sim=sim))
    await reports.until(state)
    assert reports.states == [TaskState.RUNNING, state]
    assert reports.last is not None and reports.last.exit_code == exit_code
    assert runner.done
    await runner.remove()


async def test_a_sim_task_costs_its_runner_one_asyncio_task(runtime: SimRuntime) -> None:
    """No watcher tasks for a runtime that tells of its tasks' exits itself: a sim fleet
    runs thousands of tasks per process."""
    before = len(asyncio.all_tasks())
    reports = Reports()
    runners = [
        TaskRunner(task(TaskState.ASSIGNED, task_id=f"t{i}"), runtime, reports, "n1", None)
        for i in range(10)
    ]
    while reports.states.count(TaskState.RUNNING) < 10:
        await reports.until(TaskState.RUNNING)
        reports.changed.clear()
        await asyncio.sleep(0.1)
    assert len(asyncio.all_tasks()) - before == 10
    for runner in runners:
        await runner.remove()
    assert len(asyncio.all_tasks()) == before


async def test_a_start_is_in_the_journal_before_it_is_reported(
    runtime: SimRuntime, tmp_path: Path
) -> None:
    """An agent killed after the report still adopts the task: the start was written first."""
    journal = tmp_path / "journal.jsonl"
    seen: dict[TaskState, str] = {}

    def report(task_id: str, status: TaskStatus) -> None:
        seen[status.state] = journal.read_text() if journal.exists() else ""

    runner = TaskRunner(task(TaskState.ASSIGNED), runtime, report, "n1", None)
    for _ in range(100):
        if TaskState.RUNNING in seen:
            break
        await asyncio.sleep(0.1)
    entries = [json.loads(line) for line in seen[TaskState.RUNNING].splitlines()]
    assert [(e["op"], e["id"]) for e in entries] == [("start", "t1")]
    await runner.remove()


async def test_a_runtime_answer_no_status_can_carry_fails_the_task_with_its_reason(
    runtime: SimRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    inspect = runtime.inspect

    async def garbled(handle: Any) -> Any:  # a plugin answering a pid that is no number
        observed = await inspect(handle)
        return dataclasses.replace(observed, pid="not-a-pid")

    monkeypatch.setattr(runtime, "inspect", garbled)
    reports = Reports()
    TaskRunner(task(TaskState.ASSIGNED), runtime, reports, "n1", None)
    await reports.until(TaskState.FAILED)
    assert reports.last is not None and reports.last.message.startswith("agent error: ")
    await asyncio.sleep(5)
    assert reports.states == [TaskState.FAILED]  # and nothing after it


async def test_waits_given_up_on_a_sim_task_are_not_kept(runtime: SimRuntime) -> None:
    reports = Reports()
    runner = TaskRunner(task(TaskState.ASSIGNED), runtime, reports, "n1", None)
    await reports.until(TaskState.RUNNING)
    assert runner.handle is not None
    kept = len(runtime._task(runner.handle).exits)  # the runner's own wait
    for _ in range(100):  # `shoal logs -f` and agent shutdowns give their waits up
        wait = runtime.exited(runner.handle)
        await asyncio.sleep(0)
        wait.cancel()
    await asyncio.sleep(0)
    assert len(runtime._task(runner.handle).exits) == kept
