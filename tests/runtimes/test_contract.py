"""The runtime contract stated in terms every runtime can honour, ``sim`` included.

``test_conformance.py`` checks the contract with shell scripts (signals,
forked children, log rotation) that only runtimes executing real programs can
run. This file states the same lifecycle through *workloads* ("runs until
stopped", "exits with 3 after a moment", "cannot start") that each runtime
expresses its own way, so a runtime that executes nothing real, like ``sim``,
is held to the same start / inspect / wait / stop / remove / recover / logs
rules. Add a runtime here by teaching ``workload`` its spelling.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from shoal.errors import TaskRejectedError
from shoal.models import TaskTemplate
from shoal.runtimes.base import Runtime, TaskHandle, TaskLaunch
from tests.engines import ENGINES, TEST_IMAGE
from tests.runtimes.conftest import RUNTIMES

CONTRACT_RUNTIMES = [*RUNTIMES, pytest.param("sim", id="sim")]
LIMIT = 10.0

pytestmark = pytest.mark.parametrize("runtime_name", CONTRACT_RUNTIMES)


def workload(runtime_name: str, task_id: str, kind: str, code: int = 0) -> TaskLaunch:
    """A launch that behaves as ``kind`` says: forever, exits, rejected."""
    template: dict[str, Any] = {"runtime": runtime_name}
    if runtime_name == "sim":
        template["command"] = ["sim"]
        template["sim"] = {
            "forever": {},
            "exits": {"runFor": "200ms", "exitCode": code},
            "rejected": {"reject": True},
        }[kind]
    else:
        template["command"] = {
            "forever": ["sleep", "60"],
            "exits": ["sh", "-c", f"sleep 0.2; exit {code}"],
            "rejected": ["no-such-program-here"],
        }[kind]
    if runtime_name in ENGINES:
        # The test image, with an init as pid 1 so that sleep gets SIGTERM as on a
        # host; "cannot start" is an image that exists nowhere.
        rejected = kind == "rejected"
        template.update(
            image="shoal-test/no-such-image:none" if rejected else TEST_IMAGE,
            imagePullPolicy="never",
            init=True,
            command=["sleep", "60"] if rejected else template["command"],
        )
    return TaskLaunch(
        task_id=task_id,
        service="svc",
        slot=1,
        template=TaskTemplate.model_validate(template),
        env={"SHOAL_TASK_ID": task_id},
    )


async def within(awaitable: Any) -> Any:
    async with asyncio.timeout(LIMIT):
        return await awaitable


async def test_describe_names_the_runtime(runtime: Runtime) -> None:
    info = await runtime.describe()
    assert info.available
    assert info.name == runtime.name


async def test_started_task_runs_and_its_handle_survives_json(
    runtime: Runtime, runtime_name: str
) -> None:
    handle = await runtime.start(workload(runtime_name, "t1", "forever"))
    assert (handle.task_id, handle.runtime) == ("t1", runtime.name)
    assert TaskHandle.from_json(json.loads(json.dumps(handle.to_json()))) == handle

    observation = await runtime.inspect(handle)
    assert observation.running
    assert observation.exit is None
    assert observation.started_at is not None
    await runtime.stop(handle, "SIGKILL", 0.0)


@pytest.mark.parametrize("code", [0, 3])
async def test_exit_code_is_recorded(runtime: Runtime, runtime_name: str, code: int) -> None:
    handle = await runtime.start(workload(runtime_name, "t1", "exits", code))
    status = await within(runtime.wait(handle))
    assert status.exit_code == code
    assert status.succeeded is (code == 0)
    observation = await runtime.inspect(handle)
    assert not observation.running
    assert observation.exit == status


@pytest.mark.parametrize(
    ("signal_name", "code"),
    [pytest.param("SIGTERM", 143, id="term"), pytest.param("SIGKILL", 137, id="kill")],
)
async def test_stop_ends_the_task_with_the_signal(
    runtime: Runtime, runtime_name: str, signal_name: str, code: int
) -> None:
    handle = await runtime.start(workload(runtime_name, "t1", "forever"))
    began = time.monotonic()
    await within(runtime.stop(handle, signal_name, 5.0))
    assert time.monotonic() - began < 2.0

    status = await within(runtime.wait(handle))
    assert (status.exit_code, status.signal) == (code, code - 128)
    assert not (await runtime.inspect(handle)).running


async def test_stop_of_an_exited_task_changes_nothing(runtime: Runtime, runtime_name: str) -> None:
    handle = await runtime.start(workload(runtime_name, "t1", "exits", 4))
    status = await within(runtime.wait(handle))
    await runtime.stop(handle, "SIGTERM", 5.0)
    assert (await runtime.inspect(handle)).exit == status


async def test_a_task_that_cannot_start_is_rejected(runtime: Runtime, runtime_name: str) -> None:
    with pytest.raises(TaskRejectedError):
        await runtime.start(workload(runtime_name, "t1", "rejected"))
    assert await runtime.recover() == []


async def test_restarted_runtime_recovers_and_still_controls_the_task(
    new_runtime: Callable[..., Runtime], runtime_name: str
) -> None:
    first = new_runtime()
    handle = await first.start(workload(runtime_name, "t1", "forever"))
    started_at = (await first.inspect(handle)).started_at

    second = new_runtime()  # the agent restarted
    recovered = await second.recover()
    assert [h.task_id for h in recovered] == ["t1"]
    observation = await second.inspect(recovered[0])
    assert observation.running
    assert observation.started_at == started_at

    await within(second.stop(recovered[0], "SIGKILL", 0.0))
    assert (await within(second.wait(recovered[0]))).exit_code == 137


async def test_recovery_knows_how_a_task_ended_while_the_agent_was_away(
    new_runtime: Callable[..., Runtime], runtime_name: str
) -> None:
    first = new_runtime()
    handle = await first.start(workload(runtime_name, "t1", "exits", 5))
    await asyncio.sleep(0.6)  # ends while nobody watches

    second = new_runtime()
    recovered = await second.recover()
    assert [h.task_id for h in recovered] == [handle.task_id]
    status = await within(second.wait(recovered[0]))
    assert status.exit_code == 5


async def test_removed_task_is_not_recovered(runtime: Runtime, runtime_name: str) -> None:
    kept = await runtime.start(workload(runtime_name, "kept", "forever"))
    gone = await runtime.start(workload(runtime_name, "gone", "exits", 0))
    await within(runtime.wait(gone))
    await runtime.remove(gone)
    assert [h.task_id for h in await runtime.recover()] == [kept.task_id]
    await runtime.stop(kept, "SIGKILL", 0.0)


async def test_logs_follow_ends_when_the_task_exits(runtime: Runtime, runtime_name: str) -> None:
    handle = await runtime.start(workload(runtime_name, "t1", "exits", 0))

    async def follow() -> list[str]:
        return [line async for line in runtime.logs(handle, follow=True)]

    await within(follow())
    assert not (await runtime.inspect(handle)).running
    assert [line async for line in runtime.logs(handle, tail=0)] == []
