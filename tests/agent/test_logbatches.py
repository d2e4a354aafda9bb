"""The agent's side of ``Logs`` (``_log_batches``), with the ``sim`` runtime: each
line goes out with the time it was written, and ``since`` leaves older ones out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.agent import _log_batches
from shoal.agent.taskrunner import TaskRunner
from shoal.logtimes import parse_time
from shoal.models import TaskState
from shoal.runtimes.base import RuntimeSettings
from shoal.runtimes.sim import SimRuntime
from tests.agent.test_taskrunner import Reports, task

pytestmark = pytest.mark.looptime


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[SimRuntime]:
    sim = SimRuntime(RuntimeSettings(state_dir=tmp_path, node_name="n1"))
    yield sim
    await sim.aclose()


async def lines_sent(runner: TaskRunner, since: datetime | None = None) -> list[dict[str, Any]]:
    sent = [m async for m in _log_batches("sub", [runner], False, None, since)]
    assert all(m["subscriptionId"] == "sub" for m in sent)
    return [line for m in sent for line in m["lines"]]


async def test_each_line_goes_out_with_when_it_was_written(runtime: SimRuntime) -> None:
    before = datetime.now(UTC)
    reports = Reports()
    runner = TaskRunner(task(TaskState.ASSIGNED), runtime, reports, "n1", None)
    await reports.until(TaskState.RUNNING)
    (line,) = await lines_sent(runner)
    assert line["taskId"] == "t1" and line["line"] == "sim task t1 started"
    started = parse_time(line["time"])
    assert before <= started <= datetime.now(UTC)
    assert await lines_sent(runner, since=started) == [line]
    assert await lines_sent(runner, since=started + timedelta(milliseconds=1)) == []
    await runner.remove()


async def test_following_marks_where_the_history_ends(runtime: SimRuntime) -> None:
    reports = Reports()
    runner = TaskRunner(task(TaskState.ASSIGNED), runtime, reports, "n1", None)
    await reports.until(TaskState.RUNNING)
    sent = _log_batches("sub", [runner], True, None)
    opening = await anext(sent)
    assert opening == {"subscriptionId": "sub", "lines": [], "marksHistory": True}
    history = await anext(sent)
    assert [line["line"] for line in history["lines"]] == ["sim task t1 started"]
    assert history["historyEnd"] is True
    assert runner.handle is not None
    await runtime.stop(runner.handle, "SIGTERM", 1.0)
    rest = [m async for m in sent]
    assert [line["line"] for m in rest for line in m["lines"]] == ["sim task t1 killed by SIGTERM"]
    assert not any("historyEnd" in m for m in rest)
    await runner.remove()
