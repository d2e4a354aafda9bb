"""``Logs`` on the manager's side (``shoal.manager.logstream``): the lines of several
tasks in the order they were written, ``since``, and agents too old to stamp lines.

Agents are played by the test: it opens their sessions on a real dispatcher (as
the gRPC server would), reads the logs request each one is sent, and answers
through ``PublishLogs``; tasks live in a memory store; time is virtual.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shoal.logtimes import format_time, parse_time
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.logstream import LogScope, ServiceLogs
from shoal.models import TaskState
from shoal.reconciler.nodemonitor import HeartbeatTracker
from tests.manager.test_dispatcher import Peer, Session, open_session, task
from tests.reconciler.world import World, node, open_world, service

pytestmark = pytest.mark.looptime

START = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with open_world() as opened:
        await opened.put(
            service("web", 2),
            node("n1"),
            node("n2"),
            task("t1", "n1", TaskState.RUNNING, slot=1),
            task("t2", "n2", TaskState.RUNNING, slot=2),
        )
        yield opened


@pytest.fixture
def dispatcher(world: World) -> Dispatcher:
    return Dispatcher(world.informer, HeartbeatTracker(), world.events, 1.0)


async def logs_request(session: Session) -> dict[str, Any]:
    while (message := await session.next())["type"] != "logs":
        pass
    return message


async def publish(dispatcher: Dispatcher, subscription: str, lines: list[dict[str, Any]]) -> None:
    """One agent's answer: one batch, then the end of its stream."""

    async def messages() -> AsyncIterator[dict[str, Any]]:
        yield {"subscriptionId": subscription, "lines": lines}

    await dispatcher.publish_logs(messages(), Peer())  # type: ignore[arg-type]


def at(seconds: int) -> str:
    return format_time(START + timedelta(seconds=seconds))


async def collect(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item async for item in stream]


async def test_lines_of_two_tasks_come_in_the_order_they_were_written(
    world: World, dispatcher: Dispatcher
) -> None:
    n1, n2 = await open_session(dispatcher, "n1"), await open_session(dispatcher, "n2")
    logs = ServiceLogs(world.informer, dispatcher)
    shown = asyncio.create_task(collect(logs.stream(LogScope(world.informer, "web"), False, None)))
    ask1, ask2 = await logs_request(n1), await logs_request(n2)
    # n1 answers first, though n2's task wrote in between.
    await publish(
        dispatcher,
        ask1["subscriptionId"],
        [
            {"taskId": "t1", "line": "a", "time": at(1)},
            {"taskId": "t1", "line": "c", "time": at(3)},
        ],
    )
    await publish(
        dispatcher, ask2["subscriptionId"], [{"taskId": "t2", "line": "b", "time": at(2)}]
    )
    items = await asyncio.wait_for(shown, 5)
    assert [(i["taskId"], i["line"]) for i in items] == [("t1", "a"), ("t2", "b"), ("t1", "c")]
    assert [parse_time(i["time"]) for i in items] == [
        START + timedelta(seconds=s) for s in (1, 2, 3)
    ]
    n1.pump.cancel()
    n2.pump.cancel()


async def test_since_goes_to_the_agents_and_older_lines_are_left_out(
    world: World, dispatcher: Dispatcher
) -> None:
    n1, n2 = await open_session(dispatcher, "n1"), await open_session(dispatcher, "n2")
    logs = ServiceLogs(world.informer, dispatcher)
    since = START + timedelta(seconds=2)
    scope = LogScope(world.informer, "web")
    shown = asyncio.create_task(collect(logs.stream(scope, False, None, since=since)))
    ask1, ask2 = await logs_request(n1), await logs_request(n2)
    assert parse_time(ask1["since"]) == since
    # An agent that ignores ``since`` (an old one) still has its older lines dropped.
    await publish(
        dispatcher,
        ask1["subscriptionId"],
        [
            {"taskId": "t1", "line": "old", "time": at(1)},
            {"taskId": "t1", "line": "new", "time": at(5)},
        ],
    )
    await publish(
        dispatcher, ask2["subscriptionId"], [{"taskId": "t2", "line": "edge", "time": at(2)}]
    )
    items = await asyncio.wait_for(shown, 5)
    assert [i["line"] for i in items] == ["edge", "new"]
    n1.pump.cancel()
    n2.pump.cancel()


async def test_a_line_without_a_time_is_stamped_when_it_arrives(
    world: World, dispatcher: Dispatcher
) -> None:
    n1, n2 = await open_session(dispatcher, "n1"), await open_session(dispatcher, "n2")
    logs = ServiceLogs(world.informer, dispatcher)
    scope = LogScope(world.informer, "web")
    shown = asyncio.create_task(collect(logs.stream(scope, False, None)))
    ask1, ask2 = await logs_request(n1), await logs_request(n2)
    before = datetime.now(UTC)
    await publish(
        dispatcher, ask1["subscriptionId"], [{"taskId": "t1", "line": "from an old agent"}]
    )
    await publish(dispatcher, ask2["subscriptionId"], [])
    (item,) = await asyncio.wait_for(shown, 5)
    assert item["line"] == "from an old agent"
    assert before <= parse_time(item["time"]) <= datetime.now(UTC)
    n1.pump.cancel()
    n2.pump.cancel()


async def test_following_sorts_the_history_then_passes_new_lines_on(
    world: World, dispatcher: Dispatcher
) -> None:
    n1, n2 = await open_session(dispatcher, "n1"), await open_session(dispatcher, "n2")
    logs = ServiceLogs(world.informer, dispatcher)
    stream = logs.stream(LogScope(world.informer, "web"), True, None)
    first = asyncio.ensure_future(stream.__anext__())
    ask1, ask2 = await logs_request(n1), await logs_request(n2)
    assert ask1["follow"] is True

    async def send(subscription: str, lines: list[dict[str, Any]]) -> None:
        subscription_obj = dispatcher.subscriptions[subscription]
        for line in lines:
            await subscription_obj.queue.put(line)

    await send(ask1["subscriptionId"], [{"taskId": "t1", "line": "h3", "time": at(3)}])
    await send(ask2["subscriptionId"], [{"taskId": "t2", "line": "h1", "time": at(1)}])
    got = [await asyncio.wait_for(first, 5)]
    got.append(await asyncio.wait_for(stream.__anext__(), 5))
    assert [i["line"] for i in got] == ["h1", "h3"]
    # After the history, lines go on as they come (an earlier stamp no longer reorders).
    await send(ask1["subscriptionId"], [{"taskId": "t1", "line": "live", "time": at(0)}])
    assert (await asyncio.wait_for(stream.__anext__(), 5))["line"] == "live"
    await stream.aclose()
    n1.pump.cancel()
    n2.pump.cancel()


async def test_a_reader_that_does_not_read_is_told_how_many_lines_it_lost(
    world: World, dispatcher: Dispatcher
) -> None:
    """A slow reader of a chatty service holds at most ``limit`` lines on the manager:
    the agent is not held up, and what did not fit is dropped, with a line that says how
    many; the stream then goes on."""
    n1, n2 = await open_session(dispatcher, "n1"), await open_session(dispatcher, "n2")
    logs = ServiceLogs(world.informer, dispatcher, limit=100)
    stream = logs.stream(LogScope(world.informer, "web"), True, None)
    first = asyncio.ensure_future(stream.__anext__())
    ask1, ask2 = await logs_request(n1), await logs_request(n2)
    await publish(dispatcher, ask2["subscriptionId"], [])
    subscription = dispatcher.subscriptions[ask1["subscriptionId"]]
    await subscription.queue.put({"taskId": "t1", "line": "history", "time": at(0)})
    assert (await asyncio.wait_for(first, 5))["line"] == "history"
    # The reader stops reading; the task writes 1,000 lines, and the agent sends them all.
    lines = [{"taskId": "t1", "line": f"line {n}", "time": at(1)} for n in range(1000)]
    for line in lines:
        await asyncio.wait_for(subscription.queue.put(line), 5)
    await asyncio.sleep(5)
    assert subscription.queue.empty()  # taken from the agent: it is not held up
    got = [await asyncio.wait_for(stream.__anext__(), 5) for _ in range(101)]
    assert [g["line"] for g in got[:100]] == [f"line {n}" for n in range(100)]
    marker = got[100]
    assert (marker["taskId"], marker["task"]) == ("t1", got[0]["task"])
    assert "900 lines dropped" in marker["line"]
    await subscription.queue.put({"taskId": "t1", "line": "after", "time": at(2)})
    assert (await asyncio.wait_for(stream.__anext__(), 5))["line"] == "after"
    await stream.aclose()
    n1.pump.cancel()
    n2.pump.cancel()


class Agent:
    """One node's ``PublishLogs`` call, fed message by message by the test."""

    def __init__(self, dispatcher: Dispatcher, subscription: str) -> None:
        self.subscription = subscription
        self.messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def stream() -> AsyncIterator[dict[str, Any]]:
            while (message := await self.messages.get()) is not None:
                yield {"subscriptionId": subscription, **message}

        self.call = asyncio.create_task(dispatcher.publish_logs(stream(), Peer()))  # type: ignore[arg-type]

    def send(self, **message: Any) -> None:
        self.messages.put_nowait({"lines": [], **message})


def line(task_id: str, text: str, seconds: int) -> dict[str, Any]:
    return {"taskId": task_id, "line": text, "time": at(seconds)}


@contextlib.asynccontextmanager
async def following(
    world: World, dispatcher: Dispatcher
) -> AsyncIterator[tuple[AsyncIterator[dict[str, Any]], asyncio.Future[Any], Agent, Agent]]:
    """``Logs -f`` of web: the stream, its first item to come, and n1's and n2's agents."""
    n1, n2 = await open_session(dispatcher, "n1"), await open_session(dispatcher, "n2")
    stream = ServiceLogs(world.informer, dispatcher).stream(
        LogScope(world.informer, "web"), True, None
    )
    first = asyncio.ensure_future(stream.__anext__())
    a1 = Agent(dispatcher, (await logs_request(n1))["subscriptionId"])
    a2 = Agent(dispatcher, (await logs_request(n2))["subscriptionId"])
    try:
        yield stream, first, a1, a2
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        for agent in (a1, a2):
            agent.messages.put_nowait(None)
            await agent.call
        n1.pump.cancel()
        n2.pump.cancel()


async def test_following_holds_the_history_until_each_agent_marks_its_end(
    world: World, dispatcher: Dispatcher
) -> None:
    async with following(world, dispatcher) as (stream, first, a1, a2):
        a1.send(marksHistory=True)
        a2.send(marksHistory=True)
        a1.send(lines=[line("t1", "h3", 3)], historyEnd=True)
        a2.send(lines=[line("t2", "h1", 1)])
        # n2 is slow to read the rest of its history: far longer than any quiet window.
        await asyncio.sleep(1.5)
        assert not first.done()
        a2.send(lines=[line("t2", "h2", 2)], historyEnd=True)
        got = [await asyncio.wait_for(first, 5)]
        got += [await asyncio.wait_for(stream.__anext__(), 5) for _ in range(2)]
        assert [i["line"] for i in got] == ["h1", "h2", "h3"]
        a1.send(lines=[line("t1", "live", 0)])
        assert (await asyncio.wait_for(stream.__anext__(), 5))["line"] == "live"


async def test_a_history_longer_than_the_readers_limit_is_sent_whole(
    world: World, dispatcher: Dispatcher
) -> None:
    n1, n2 = await open_session(dispatcher, "n1"), await open_session(dispatcher, "n2")
    logs = ServiceLogs(world.informer, dispatcher, limit=100)
    shown = asyncio.create_task(collect(logs.stream(LogScope(world.informer, "web"), False, None)))
    ask1, ask2 = await logs_request(n1), await logs_request(n2)
    lines = [{"taskId": "t1", "line": f"line {n}", "time": at(1)} for n in range(1000)]
    await publish(dispatcher, ask1["subscriptionId"], lines)
    await publish(dispatcher, ask2["subscriptionId"], [])
    items = await asyncio.wait_for(shown, 5)
    assert [i["line"] for i in items] == [f"line {n}" for n in range(1000)]
    n1.pump.cancel()
    n2.pump.cancel()


async def test_an_agent_that_does_not_mark_its_history_gets_the_quiet_window(
    world: World, dispatcher: Dispatcher
) -> None:
    async with following(world, dispatcher) as (stream, first, a1, a2):
        a1.send(marksHistory=True)
        a2.send()  # an older agent: its opening message promises nothing
        a1.send(lines=[line("t1", "h3", 3)], historyEnd=True)
        a2.send(lines=[line("t2", "h1", 1)])
        got = [await asyncio.wait_for(first, 1)]
        got.append(await asyncio.wait_for(stream.__anext__(), 1))
        assert [i["line"] for i in got] == ["h1", "h3"]


async def test_an_agent_whose_stream_ends_before_its_mark_holds_nothing_back(
    world: World, dispatcher: Dispatcher
) -> None:
    async with following(world, dispatcher) as (stream, first, a1, a2):
        a1.send(marksHistory=True)
        a2.send(marksHistory=True)
        a1.send(lines=[line("t1", "h3", 3)], historyEnd=True)
        a2.send(lines=[line("t2", "h1", 1)])
        a2.messages.put_nowait(None)  # n2's stream ends (its agent restarted) before the mark
        await a2.call
        got = [await asyncio.wait_for(first, 1)]
        got.append(await asyncio.wait_for(stream.__anext__(), 1))
        assert [i["line"] for i in got] == ["h1", "h3"]


async def test_a_node_whose_stream_breaks_does_not_hold_the_reader_for_ever(
    world: World, dispatcher: Dispatcher
) -> None:
    n1, n2 = await open_session(dispatcher, "n1"), await open_session(dispatcher, "n2")
    logs = ServiceLogs(world.informer, dispatcher)
    shown = asyncio.create_task(collect(logs.stream(LogScope(world.informer, "web"), False, None)))
    ask1, ask2 = await logs_request(n1), await logs_request(n2)
    await publish(dispatcher, ask1["subscriptionId"], [line("t1", "from n1", 1)])

    async def broken() -> AsyncIterator[dict[str, Any]]:
        yield {"subscriptionId": ask2["subscriptionId"], "lines": [line("t2", "from n2", 2)]}
        raise ConnectionResetError("n2's agent went away mid-stream")

    with pytest.raises(ConnectionResetError):
        await dispatcher.publish_logs(broken(), Peer())  # type: ignore[arg-type]
    items = await asyncio.wait_for(shown, 5)
    assert [i["line"] for i in items] == ["from n1", "from n2"]
    n1.pump.cancel()
    n2.pump.cancel()
