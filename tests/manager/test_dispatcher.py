"""The dispatcher's assignment sets and diffs, on its own: what an agent is sent, and when.

The test opens a session the way the gRPC server would (the RPC handler is
called directly) and reads what it yields; tasks change in a memory store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc.aio
import pytest

from shoal.api.transport import decode, encode
from shoal.batching import COALESCE
from shoal.manager.dispatcher import ANSWER_EVERY, CLOSE_GRACE, Dispatcher, SessionError
from shoal.models import DesiredState, NodeState, Task, TaskState, TaskStatus
from shoal.reconciler.nodemonitor import HeartbeatTracker
from shoal.store.typed import TASKS, Change
from tests.reconciler.world import World, node, open_world, service

pytestmark = pytest.mark.looptime


class Peer:
    """What the handler asks of a gRPC context: the peer, and what the agent sends after
    its first message (``sent``; ``None`` half-closes)."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    async def read(self) -> object:
        message = await self.sent.get()
        return grpc.aio.EOF if message is None else message


@dataclass
class Session:
    messages: asyncio.Queue[dict[str, Any]]
    pump: asyncio.Task[None]
    context: Peer

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.messages.get(), 5)

    async def quiet(self) -> bool:
        """Nothing more arrives for a while (virtual time)."""
        await asyncio.sleep(2)
        return self.messages.empty()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with open_world() as opened:
        yield opened


@pytest.fixture
def dispatcher(world: World) -> Dispatcher:
    return Dispatcher(world.informer, HeartbeatTracker(), world.events, 1.0)


async def open_session(
    dispatcher: Dispatcher, node_id: str, catalog: bool = False, hears_any: bool = False
) -> Session:
    """A session as an agent opens it (by default one that takes no endpoint catalog, and
    takes only heartbeat answers for a sign of the manager, as older agents do)."""
    request = {
        "nodeId": node_id,
        "description": node(node_id).description.to_wire(),
        "catalog": catalog,
    }
    if hears_any:
        request["hearsAny"] = True
    context = Peer()
    stream = dispatcher.session(request, context)  # type: ignore[arg-type]
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        async for message in stream:  # assignments carry encoded tasks: read them as sent
            wire = message.get("type") == "assignments"
            messages.put_nowait(decode(encode(message)) if wire else message)

    session = Session(messages, asyncio.create_task(pump()), context)
    assert (await session.next())["type"] == "session"
    return session


def task(task_id: str, node_id: str | None, state: TaskState, slot: int = 1) -> Task:
    return Task(
        id=task_id,
        service="web",
        slot=slot,
        node_id=node_id,
        template=service().spec.template,
        created_at=datetime.now(UTC),
        status=TaskStatus(state=state),
    )


async def change(world: World, task_id: str, **update: Any) -> None:
    entry = world.informer.tasks[task_id]
    await world.informer.commit([Change.put(entry.obj.model_copy(update=update), entry.revision)])


def ids(message: dict[str, Any]) -> list[str]:
    return sorted(t["id"] for t in message["tasks"])


async def test_the_full_set_holds_what_is_assigned_to_the_node_and_nothing_else(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(
        task("mine", "n1", TaskState.RUNNING),
        task("old", "n1", TaskState.FAILED, slot=2),
        task("global-pending", "n1", TaskState.PENDING, slot=0),
        task("theirs", "n2", TaskState.ASSIGNED),
        task("unplaced", None, TaskState.PENDING, slot=3),
    )
    session = await open_session(dispatcher, "n1")
    full = await session.next()
    assert full["full"] is True
    # History included; a global task that is still pending is not the agent's yet.
    assert ids(full) == ["mine", "old"]
    session.pump.cancel()


async def test_a_global_task_reaches_its_agent_when_it_is_assigned(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(task("g", "n1", TaskState.PENDING, slot=0))
    session = await open_session(dispatcher, "n1")
    assert ids(await session.next()) == []
    assert await session.quiet()
    await change(world, "g", status=TaskStatus(state=TaskState.ASSIGNED))
    update = await session.next()
    assert update["full"] is False and ids(update) == ["g"]
    assert update["tasks"][0]["status"]["state"] == "assigned"
    session.pump.cancel()


async def test_diffs_carry_what_the_agent_acts_on_and_not_its_own_reports(
    world: World, dispatcher: Dispatcher
) -> None:
    session = await open_session(dispatcher, "n1")
    assert ids(await session.next()) == []
    await world.put(task("t1", "n1", TaskState.ASSIGNED))
    assert ids(await session.next()) == ["t1"]
    await change(world, "t1", status=TaskStatus(state=TaskState.RUNNING))  # its own report
    assert await session.quiet()
    await change(world, "t1", desired_state=DesiredState.SHUTDOWN)
    update = await session.next()
    assert ids(update) == ["t1"] and update["tasks"][0]["desiredState"] == "shutdown"
    await world.informer.commit([Change.delete(TASKS + "t1", None)])
    assert (await session.next())["removed"] == ["t1"]
    session.pump.cancel()


async def test_a_task_moved_to_another_node_is_removed_from_the_first(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(task("t1", "n1", TaskState.ASSIGNED))
    first = await open_session(dispatcher, "n1")
    second = await open_session(dispatcher, "n2")
    assert ids(await first.next()) == ["t1"]
    assert ids(await second.next()) == []
    await change(world, "t1", node_id="n2")
    assert (await first.next())["removed"] == ["t1"]
    assert ids(await second.next()) == ["t1"]
    first.pump.cancel()
    second.pump.cancel()


async def test_a_burst_of_changes_reaches_the_agent_in_few_messages(
    world: World, dispatcher: Dispatcher
) -> None:
    session = await open_session(dispatcher, "n1")
    assert ids(await session.next()) == []
    await world.put(*(task(f"t{i}", "n1", TaskState.ASSIGNED, slot=i + 1) for i in range(50)))
    got: list[str] = []
    messages = 0
    while len(got) < 50:
        got += ids(await session.next())
        messages += 1
    assert sorted(got) == sorted(f"t{i}" for i in range(50))
    assert messages == 1  # one commit, one coalesced message
    session.pump.cancel()


async def test_a_node_given_tasks_one_after_another_gets_them_in_few_messages(
    world: World, dispatcher: Dispatcher
) -> None:
    session = await open_session(dispatcher, "n1")
    assert ids(await session.next()) == []
    for i in range(20):  # a long apply: a task for this node every 20 ms
        await world.put(task(f"t{i}", "n1", TaskState.ASSIGNED, slot=i + 1))
        await asyncio.sleep(0.02)
    got: list[str] = []
    messages = 0
    while len(got) < 20:
        got += ids(await session.next())
        messages += 1
    # The first at once; the rest held while they kept coming, sent once they stopped.
    assert messages == 2
    assert sorted(got) == sorted(f"t{i}" for i in range(20))
    assert await session.quiet()
    started = asyncio.get_running_loop().time()
    await world.put(task("lone", "n1", TaskState.ASSIGNED, slot=99))  # after a quiet time
    assert ids(await session.next()) == ["lone"]
    assert asyncio.get_running_loop().time() - started == pytest.approx(COALESCE)
    session.pump.cancel()


async def test_what_a_session_held_reaches_the_next_session_of_its_node(
    world: World, dispatcher: Dispatcher
) -> None:
    first = await open_session(dispatcher, "n1")
    assert ids(await first.next()) == []
    await world.put(task("t0", "n1", TaskState.ASSIGNED))
    assert ids(await first.next()) == ["t0"]
    await world.put(task("t1", "n1", TaskState.ASSIGNED, slot=2))  # held: n1 just got one
    second = await open_session(dispatcher, "n1")  # the agent registered again meanwhile
    assert ids(await second.next()) == ["t0", "t1"]
    assert await second.quiet()
    first.pump.cancel()
    second.pump.cancel()


async def test_a_session_whose_update_cannot_be_built_ends_and_the_others_go_on(
    world: World,
) -> None:
    def deliveries(tasks: list[Task]) -> None:
        if any(t.node_id == "n1" for t in tasks):
            raise RuntimeError("the secret store failed")

    dispatcher = Dispatcher(
        world.informer, HeartbeatTracker(), world.events, 1.0, deliveries=deliveries
    )
    first = await open_session(dispatcher, "n1")
    second = await open_session(dispatcher, "n2")
    assert ids(await first.next()) == [] and ids(await second.next()) == []
    await world.put(task("t1", "n1", TaskState.ASSIGNED), task("t2", "n2", TaskState.ASSIGNED))
    assert ids(await second.next()) == ["t2"]
    with pytest.raises(SessionError, match="could not be built; register again"):
        await asyncio.wait_for(first.pump, 5)  # n1 registers again, and gets its full set
    await world.put(task("t3", "n2", TaskState.ASSIGNED, slot=3))  # the flusher lives on
    assert ids(await second.next()) == ["t3"]
    second.pump.cancel()


async def test_a_task_that_came_and_went_while_a_session_opened_is_not_left_to_its_agent(
    world: World, dispatcher: Dispatcher
) -> None:
    other = await open_session(dispatcher, "n2")  # the flusher runs for other nodes
    assert ids(await other.next()) == []
    request = {"nodeId": "n1", "description": node("n1").description.to_wire(), "catalog": False}
    stream = dispatcher.session(request, Peer())  # type: ignore[arg-type]
    assert (await stream.__anext__())["type"] == "session"  # written; the next not yet
    await world.put(task("t1", "n1", TaskState.ASSIGNED))  # the flusher runs meanwhile
    await asyncio.sleep(0.1)
    await world.informer.commit([Change.delete(TASKS + "t1", None)])  # diffed after the set
    known: set[str] = set()  # what the agent is told it runs, message after message
    with contextlib.suppress(TimeoutError):
        while True:
            message = decode(encode(await asyncio.wait_for(stream.__anext__(), 2)))
            if message["full"]:
                known = set(ids(message))
            known = (known | set(ids(message))) - set(message.get("removed", []))
    assert known == set()
    await stream.aclose()
    other.pump.cancel()


async def test_secret_bytes_go_only_to_the_node_of_a_task_about_to_start(world: World) -> None:
    from shoal.manager.secretstore import SecretStore
    from shoal.security.datakey import DataKey

    store = SecretStore(world.informer, DataKey.generate(), world.events)
    await world.informer.commit([Change.put(store.seal("secret", "db", b"hunter2", {}), 0)])
    dispatcher = Dispatcher(
        world.informer, HeartbeatTracker(), world.events, 1.0, deliveries=store.deliveries
    )
    user = service(secrets=[{"source": "db"}]).spec.template

    def with_secret(task_id: str, node_id: str, state: TaskState) -> Task:
        return task(task_id, node_id, state).model_copy(update={"template": user})

    await world.put(with_secret("running", "n1", TaskState.RUNNING))
    first = await open_session(dispatcher, "n1")
    second = await open_session(dispatcher, "n2")
    assert "files" not in await first.next()  # running already: nothing to deliver again
    assert "files" not in await second.next()
    await world.put(with_secret("new", "n1", TaskState.ASSIGNED))
    update = await first.next()
    assert ids(update) == ["new"]
    assert update["files"] == {"secrets": {"db": "aHVudGVyMg=="}, "configs": {}}
    assert "hunter2" not in str(update["tasks"]) and "aHVudGVyMg" not in str(update["tasks"])
    assert await second.quiet()  # the other node gets nothing
    first.pump.cancel()
    second.pump.cancel()


async def test_heartbeats_on_the_session_are_heard_and_answered(world: World) -> None:
    now = [0.0]
    tracker = HeartbeatTracker(clock=lambda: now[0], probe_period=1e9)  # never stalled
    dispatcher = Dispatcher(world.informer, tracker, world.events, 1.0)
    session = await open_session(dispatcher, "n1")
    assert (await session.next())["type"] == "assignments"
    now[0] = 5.0
    assert tracker.silent_for("n1") == 5.0
    session.context.sent.put_nowait({"type": "heartbeat"})
    assert await session.next() == {"type": "heartbeat", "heartbeatPeriod": 1.0}
    assert tracker.silent_for("n1") == 0.0
    session.context.sent.put_nowait({"type": "a kind of a newer agent"})  # ignored
    # Every heartbeat is heard; the first and then every ANSWER_EVERY-th is answered
    # (the agent takes any message for a sign of the manager: a thousand nodes'
    # answers were a quarter of the manager's idle CPU).
    for beat in range(2, 2 * ANSWER_EVERY + 1):
        now[0] = 4.0 + beat
        session.context.sent.put_nowait({"type": "heartbeat"})
        await asyncio.sleep(0.1)
        assert tracker.silent_for("n1") == 0.0
        answered = not session.messages.empty()
        assert answered == (beat % ANSWER_EVERY == 1), beat
        if answered:
            assert (await session.next())["type"] == "heartbeat"
    assert tracker.heard == 2 * ANSWER_EVERY

    # Marked down meanwhile (its heartbeats came too late): the session ends, and
    # the agent must register again.
    await world.put(node("n1", state=NodeState.DOWN))
    session.context.sent.put_nowait({"type": "heartbeat"})
    with pytest.raises(SessionError, match="node n1 is down; register again"):
        await asyncio.wait_for(session.pump, 5)
    assert session.messages.empty()
    assert "n1" not in dispatcher.sessions


def drained(session: Session) -> list[str]:
    """The types of the messages that arrived so far."""
    kinds = []
    while not session.messages.empty():
        kinds.append(session.messages.get_nowait()["type"])
    return kinds


async def test_an_agent_hearing_any_message_is_answered_only_when_nothing_else_went(
    world: World, dispatcher: Dispatcher
) -> None:
    session = await open_session(dispatcher, "n1", hears_any=True)
    assert (await session.next())["type"] == "assignments"
    for beat in range(12):  # busy: it is sent a task every period
        await world.put(task(f"t{beat}", "n1", TaskState.ASSIGNED, slot=beat + 1))
        session.context.sent.put_nowait({"type": "heartbeat"})
        await asyncio.sleep(1.0)
    busy = drained(session)
    assert busy.count("assignments") == 12
    assert "heartbeat" not in busy  # the assignments said it all
    for _ in range(4 * ANSWER_EVERY):  # quiet: heartbeats alone
        session.context.sent.put_nowait({"type": "heartbeat"})
        await asyncio.sleep(1.0)
    assert drained(session) == ["heartbeat"] * 4  # one every ANSWER_EVERY periods
    assert dispatcher.heartbeats.heard == 12 + 4 * ANSWER_EVERY
    session.pump.cancel()


async def test_a_busy_agent_hearing_any_message_still_learns_the_managers_now_and_then(
    world: World, dispatcher: Dispatcher
) -> None:
    # Only the session message and heartbeat answers carry the manager list: a node
    # that always has something else to hear must still get an answer now and then.
    session = await open_session(dispatcher, "n1", hears_any=True)
    assert (await session.next())["type"] == "assignments"
    periods = 3 * ANSWER_EVERY**2 + 1  # answered at periods 16, 32 and 48
    for beat in range(periods):
        await world.put(task(f"t{beat}", "n1", TaskState.ASSIGNED, slot=beat + 1))
        session.context.sent.put_nowait({"type": "heartbeat"})
        await asyncio.sleep(1.0)
    busy = drained(session)
    assert busy.count("assignments") == periods
    assert busy.count("heartbeat") == 3  # one every ANSWER_EVERY ** 2 periods
    session.pump.cancel()


async def test_a_node_held_unknown_keeps_its_session_and_is_heard(world: World) -> None:
    # Its heartbeats came late (the guard held it, or it waited its turn to be
    # declared down); its tasks were left alone, so it needs no new session.
    now = [0.0]
    tracker = HeartbeatTracker(clock=lambda: now[0], probe_period=1e9)
    dispatcher = Dispatcher(world.informer, tracker, world.events, 1.0)
    session = await open_session(dispatcher, "n1")
    assert (await session.next())["type"] == "assignments"
    await world.put(node("n1", state=NodeState.UNKNOWN))
    now[0] = 5.0

    session.context.sent.put_nowait({"type": "heartbeat"})

    assert (await session.next())["type"] == "heartbeat"
    assert tracker.silent_for("n1") == 0.0
    assert dispatcher.sessions["n1"] is not None and not session.pump.done()
    session.pump.cancel()


async def test_a_closed_session_ends_its_stream_and_says_why(
    world: World, dispatcher: Dispatcher
) -> None:
    session = await open_session(dispatcher, "n1")
    assert (await session.next())["type"] == "assignments"
    dispatcher.close_sessions()  # this manager stopped leading
    with pytest.raises(SessionError, match="stopped leading"):
        await asyncio.wait_for(session.pump, 5)


async def test_a_closed_session_ends_even_while_its_agent_reads_nothing(
    world: World, dispatcher: Dispatcher
) -> None:
    # The RPC's writer is stuck on an agent that stopped reading (flow control), so
    # the stream never comes back for its next message: its handler is cancelled,
    # and the agent, its stream gone, registers again instead of heartbeating into
    # a session nobody hears.
    other = await open_session(dispatcher, "n2")  # the flusher runs for other nodes
    assert ids(await other.next()) == []
    request = {"nodeId": "n1", "description": node("n1").description.to_wire(), "catalog": False}
    stream = dispatcher.session(request, Peer())  # type: ignore[arg-type]
    unread = asyncio.Event()

    async def handler() -> None:
        async for message in stream:
            if message["type"] == "assignments":
                await unread.wait()  # the write to the agent never completes

    job = asyncio.create_task(handler())
    await asyncio.sleep(0.5)
    assert "n1" in dispatcher.sessions
    dispatcher.close_sessions()
    await asyncio.sleep(CLOSE_GRACE + 0.5)
    assert job.cancelled()
    await stream.aclose()


async def test_an_agent_that_half_closes_keeps_its_session(
    world: World, dispatcher: Dispatcher
) -> None:
    """An agent older than heartbeats on the session sends one message, then half-closes."""
    session = await open_session(dispatcher, "n1")
    assert (await session.next())["type"] == "assignments"
    session.context.sent.put_nowait(None)
    assert await session.quiet()
    assert not session.pump.done() and "n1" in dispatcher.sessions
    session.pump.cancel()


async def test_status_batches_on_the_session_are_written_then_answered(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(task("t1", "n1", TaskState.ASSIGNED), task("t2", "n2", TaskState.ASSIGNED))
    session = await open_session(dispatcher, "n1")
    assert ids(await session.next()) == ["t1"]
    running = TaskStatus(state=TaskState.RUNNING).to_wire()
    session.context.sent.put_nowait(
        {"type": "status", "batch": 1, "updates": [{"taskId": "t1", "status": running}]}
    )
    assert await session.next() == {"type": "status", "batch": 1}
    assert world.informer.tasks["t1"].obj.status.state == TaskState.RUNNING

    # Another node's task: no say over it (written nothing, answered all the same).
    session.context.sent.put_nowait(
        {"type": "status", "batch": 2, "updates": [{"taskId": "t2", "status": running}]}
    )
    assert await session.next() == {"type": "status", "batch": 2}
    assert world.informer.tasks["t2"].obj.status.state == TaskState.ASSIGNED

    # A malformed batch is answered with the field at fault; the session goes on.
    session.context.sent.put_nowait({"type": "status", "batch": 3, "updates": [{"status": {}}]})
    answer = await session.next()
    assert answer["batch"] == 3
    assert answer["error"]["code"] == "INVALID_ARGUMENT"
    assert "taskId" in answer["error"]["message"]
    assert "n1" in dispatcher.sessions
    session.pump.cancel()


async def test_a_status_batch_is_as_good_as_a_heartbeat(world: World) -> None:
    """The session message says so, and an agent then sends no heartbeat within a
    period after a batch: the batch must keep its node from being declared down."""
    now = [0.0]
    tracker = HeartbeatTracker(clock=lambda: now[0], probe_period=1e9)
    dispatcher = Dispatcher(world.informer, tracker, world.events, 1.0)
    other = await open_session(dispatcher, "n2")  # the flusher runs for other nodes
    assert ids(await other.next()) == []
    request = {"nodeId": "n1", "description": node("n1").description.to_wire(), "catalog": False}
    stream = dispatcher.session(request, Peer())  # type: ignore[arg-type]
    assert (await anext(stream))["beatsOnStatus"] is True
    await stream.aclose()

    session = await open_session(dispatcher, "n1")
    assert (await session.next())["type"] == "assignments"
    now[0] = 5.0
    session.context.sent.put_nowait({"type": "status", "batch": 1, "updates": []})
    assert await session.next() == {"type": "status", "batch": 1}
    assert tracker.silent_for("n1") == 0.0
    assert tracker.heard == 0  # shoal_heartbeats_total counts heartbeats only

    # A node marked down is not revived by a late batch: its session ends, so an agent
    # that sends only batches (and no heartbeat) registers again all the same.
    await world.put(node("n1", state=NodeState.DOWN))
    now[0] = 9.0
    session.context.sent.put_nowait({"type": "status", "batch": 2, "updates": []})
    with pytest.raises(SessionError, match="node n1 is down; register again"):
        await asyncio.wait_for(session.pump, 5)
    assert tracker.silent_for("n1") == 4.0
    assert "n1" not in dispatcher.sessions


async def test_closing_the_dispatcher_leaves_no_flusher_behind(
    world: World, dispatcher: Dispatcher
) -> None:
    """A manager that closes stops the dispatcher's flusher; nothing it started runs on."""
    session = await open_session(dispatcher, "n1")
    await session.next()
    flushers = [t for t in asyncio.all_tasks() if t.get_name() == "dispatcher-flush"]
    assert len(flushers) == 1
    await dispatcher.aclose()
    assert flushers[0].done()
    session.pump.cancel()
