"""``Exec`` routing on its own: the Control stream, the dispatcher and ``PublishExec``.

The agent's side is played by the test: it reads the session the way an agent
does and publishes chunks through ``Dispatcher.publish_exec``; tasks live in a
memory store. What the real engines do is in ``tests/e2e/test_exec.py``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import (
    AuthError,
    ExecUnsupportedError,
    NodeUnavailableError,
    NotFoundError,
    ShoalError,
)
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.execapi import ExecApi
from shoal.models import Task, TaskState, TaskStatus
from shoal.runtimes.base import RuntimeSettings, TaskHandle
from shoal.runtimes.sim import SimRuntime
from shoal.security.authz import Caller, acting_as
from tests.manager.test_dispatcher import Session, open_session
from tests.reconciler.world import World, open_world, service

pytestmark = pytest.mark.looptime

RUNTIMES = {"process": False, "sim": False, "docker": True}


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with open_world() as opened:
        yield opened


@pytest.fixture
def dispatcher(world: World) -> Dispatcher:
    from shoal.reconciler.nodemonitor import HeartbeatTracker

    return Dispatcher(world.informer, HeartbeatTracker(), world.events, 1.0)


def task(task_id: str, runtime: str, state: TaskState = TaskState.RUNNING) -> Task:
    template = service().spec.template.model_copy(update={"runtime": runtime})
    return Task(
        id=task_id,
        service="web",
        slot=1,
        node_id="n1",
        template=template,
        created_at=datetime.now(UTC),
        status=TaskStatus(state=state),
    )


async def exec_request(session: Session) -> dict[str, Any]:
    while (message := await session.next())["type"] != "exec":
        pass
    return message


async def chunks(*messages: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for message in messages:
        yield message


def node_caller(name: str) -> Caller:
    return Caller(name, "worker", datetime.now(UTC))


async def collect(api: ExecApi, request: dict[str, Any]) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        return [item async for item in api.exec(request, None)]  # type: ignore[arg-type]

    return await asyncio.wait_for(read(), 30)  # virtual time


async def test_output_and_exit_code_come_back_to_the_caller_in_order(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(task("t-docker-1", "docker"))
    session = await open_session(dispatcher, "n1")
    api = ExecApi(world.informer, dispatcher, RUNTIMES)
    caller = asyncio.create_task(collect(api, {"task": "t-docker", "command": ["ls", "/"]}))
    asked = await exec_request(session)
    assert (asked["taskId"], asked["command"]) == ("t-docker-1", ["ls", "/"])
    exec_id = asked["execId"]
    with acting_as(node_caller("n1")):
        await dispatcher.publish_exec(
            chunks(
                {"execId": exec_id},
                {
                    "execId": exec_id,
                    "stream": "stdout",
                    "data": base64.b64encode(b"bin\n").decode(),
                },
                {"execId": exec_id, "stream": "stderr", "data": base64.b64encode(b"oops").decode()},
                {"execId": exec_id, "exitCode": 3},
            ),
            None,  # type: ignore[arg-type]
        )
    items = await asyncio.wait_for(caller, 5)
    assert [(i.get("stream"), i.get("data"), i.get("exitCode")) for i in items] == [
        ("stdout", base64.b64encode(b"bin\n").decode(), None),
        ("stderr", base64.b64encode(b"oops").decode(), None),
        (None, None, 3),
    ]
    # The caller is done: the agent is told, and the subscription is gone.
    assert (await session.next()) == {"type": "exec-cancel", "execId": exec_id}
    assert dispatcher.execs == {}
    session.pump.cancel()


async def test_a_caller_that_goes_away_cancels_the_exec(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(task("t1", "docker"))
    session = await open_session(dispatcher, "n1")
    api = ExecApi(world.informer, dispatcher, RUNTIMES)
    caller = asyncio.create_task(collect(api, {"task": "t1", "command": ["sleep", "100"]}))
    asked = await exec_request(session)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert (await session.next()) == {"type": "exec-cancel", "execId": asked["execId"]}
    assert dispatcher.execs == {}
    session.pump.cancel()


async def test_a_node_that_goes_away_ends_the_exec_with_an_error(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(task("t1", "docker"))
    session = await open_session(dispatcher, "n1")
    api = ExecApi(world.informer, dispatcher, RUNTIMES)
    caller = asyncio.create_task(collect(api, {"task": "t1", "command": ["sleep", "100"]}))
    await exec_request(session)
    session.pump.cancel()  # the agent's session stream ends
    with pytest.raises(ShoalError, match="the session of node n1 ended"):
        await caller
    assert dispatcher.execs == {}


async def test_only_the_tasks_node_may_answer(world: World, dispatcher: Dispatcher) -> None:
    await world.put(task("t1", "docker"))
    session = await open_session(dispatcher, "n1")
    api = ExecApi(world.informer, dispatcher, RUNTIMES)
    caller = asyncio.create_task(collect(api, {"task": "t1", "command": ["id"]}))
    exec_id = (await exec_request(session))["execId"]
    forged = chunks({"execId": exec_id, "stream": "stdout", "data": "aGk="})
    with acting_as(node_caller("n2")), pytest.raises(AuthError, match="another node"):
        await dispatcher.publish_exec(forged, None)  # type: ignore[arg-type]
    assert not caller.done()
    caller.cancel()
    session.pump.cancel()


@pytest.mark.parametrize(
    ("runtime", "state", "error", "message"),
    [
        pytest.param(
            "process",
            TaskState.RUNNING,
            ExecUnsupportedError,
            "exec needs a container task; this task runs on the process runtime",
            id="process-task",
        ),
        pytest.param("docker", TaskState.COMPLETE, ShoalError, "is not running", id="ended-task"),
    ],
)
async def test_tasks_that_cannot_exec_are_refused_before_anything_is_sent(
    world: World,
    dispatcher: Dispatcher,
    runtime: str,
    state: TaskState,
    error: type[Exception],
    message: str,
) -> None:
    await world.put(task("t1", runtime, state))
    session = await open_session(dispatcher, "n1")
    api = ExecApi(world.informer, dispatcher, RUNTIMES)
    with pytest.raises(error, match=message):
        await collect(api, {"task": "t1", "command": ["true"]})
    assert dispatcher.execs == {}
    await asyncio.sleep(2)
    sent = []
    while not session.messages.empty():
        sent.append(session.messages.get_nowait())
    assert all(m["type"] != "exec" for m in sent)
    session.pump.cancel()


async def test_unknown_task_disconnected_node_and_bad_requests(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(task("t1", "docker"))
    api = ExecApi(world.informer, dispatcher, RUNTIMES)
    with pytest.raises(NotFoundError):
        await collect(api, {"task": "nope", "command": ["true"]})
    with pytest.raises(NodeUnavailableError, match="node n1 is not connected"):
        await collect(api, {"task": "t1", "command": ["true"]})
    for bad in ({"task": "t1"}, {"task": "t1", "command": []}, {"task": "", "command": ["x"]}):
        with pytest.raises(ValueError):
            await collect(api, bad)
    assert dispatcher.execs == {}


async def test_runtimes_without_containers_refuse_exec(tmp_path: Path) -> None:
    runtime = SimRuntime(RuntimeSettings(state_dir=tmp_path, node_name="n1"))
    handle = TaskHandle(task_id="t1", runtime="sim", data={})
    with pytest.raises(ExecUnsupportedError, match="this task runs on the sim runtime"):
        async for _ in runtime.exec_stream(handle, ["true"]):
            pass
