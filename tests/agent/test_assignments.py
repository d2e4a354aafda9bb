"""The agent's assignment handling on its own (sim runtime, virtual time): what a
manager's ``assignments`` messages make it start, keep, resend and stop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.agent import Agent, AgentSettings
from shoal.models import DesiredState, Task, TaskState, TaskStatus
from shoal.runtimes.base import RuntimeSettings
from shoal.runtimes.sim import SimRuntime
from tests.reconciler.world import service

pytestmark = pytest.mark.looptime


@pytest.fixture
async def agent(tmp_path: Path) -> Any:
    agent = Agent(
        AgentSettings(
            managers=["127.0.0.1:1"],
            token="",
            state_dir=tmp_path,
            name="n1",
            runtimes=frozenset({"sim"}),
        )
    )
    sim = SimRuntime(RuntimeSettings(state_dir=tmp_path / "sim", node_name="n1"))
    await sim.recover()
    agent.runtimes["sim"] = sim
    yield agent
    for runner in agent.runners.values():
        await runner.aclose()
    await sim.aclose()


def wire(
    task_id: str, state: TaskState, desired: DesiredState = DesiredState.RUNNING
) -> dict[str, Any]:
    now = datetime.now(UTC)
    return Task(
        id=task_id,
        service="web",
        slot=1,
        node_id="n1",
        template=service().spec.template,
        desired_state=desired,
        created_at=now,
        status=TaskStatus(state=state, timestamp=now, message=state.value),
    ).to_wire()


def assignments(*tasks: dict[str, Any], full: bool = False) -> dict[str, Any]:
    return {"type": "assignments", "full": full, "tasks": list(tasks), "removed": []}


async def reported(agent: Agent, task_id: str) -> TaskState:
    """The newest state reported for ``task_id`` (what the next batch would carry), taken."""
    for _ in range(100):
        status = agent.reporter._pending.pop(task_id, None)
        if status is not None:
            return status.state
        await asyncio.sleep(0.1)
    raise AssertionError(f"{task_id} was never reported")


async def test_a_full_set_sent_again_keeps_the_runners_and_resends_what_was_not_seen(
    agent: Agent,
) -> None:
    await agent._assign(assignments(wire("t1", TaskState.ASSIGNED), full=True))
    assert await reported(agent, "t1") == TaskState.RUNNING
    runner = agent.runners["t1"]  # its report went, and was lost with the session
    # The next session's full set: the manager still has it assigned.
    await agent._assign(assignments(wire("t1", TaskState.ASSIGNED), full=True))
    assert agent.runners["t1"] is runner and not runner.done
    assert await reported(agent, "t1") == TaskState.RUNNING  # said again
    # Once the manager has seen it running, nothing more is said.
    await agent._assign(assignments(wire("t1", TaskState.RUNNING), full=True))
    await asyncio.sleep(1)
    assert agent.reporter._pending == {}
    assert agent.runners["t1"].task.status.state == TaskState.RUNNING


async def test_a_task_sent_again_for_shutdown_is_stopped(agent: Agent) -> None:
    await agent._assign(assignments(wire("t1", TaskState.ASSIGNED)))
    assert await reported(agent, "t1") == TaskState.RUNNING
    await agent._assign(assignments(wire("t1", TaskState.RUNNING, DesiredState.SHUTDOWN)))
    assert await reported(agent, "t1") == TaskState.SHUTDOWN
    assert agent.runners["t1"].done


async def test_a_full_set_without_a_task_removes_it(agent: Agent) -> None:
    await agent._assign(assignments(wire("t1", TaskState.ASSIGNED), wire("t2", TaskState.ASSIGNED)))
    assert await reported(agent, "t2") == TaskState.RUNNING
    await agent._assign(assignments(wire("t2", TaskState.RUNNING), full=True))
    assert set(agent.runners) == {"t2"}
