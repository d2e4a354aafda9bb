"""The Dispatcher service: the manager's side of every agent session.

An agent opens one ``Session`` stream. Its first request registers the node
(the caller's node certificate must name it, node description written, node ``ready``); the stream
then carries, in order:

1. ``{"type": "session", "sessionId", "heartbeatPeriod", "streamHeartbeats": true,
   "streamStatus": true}``;
2. ``{"type": "assignments", "full": true, "tasks": [...]}``: every task the
   scheduler assigned to this node, history included (the agent stops and
   removes what it runs but is not in this set); a global task whose node is
   set but which is still ``pending`` is not the agent's yet;
3. incremental ``{"type": "assignments", "full": false, "tasks", "removed"}``
   messages, sent when a task appears, disappears, or changes in a way the
   agent acts on (desired state, ended): a lone change within milliseconds; a
   node whose tasks keep changing (a large apply places a few at a time on
   every node) is held up to ``shoal.batching.HOLD`` to gather them, and
   everything held goes as soon as the changes stop (``KeyedFlusher``);
4. ``{"type": "logs", ...}`` requests when somebody runs ``shoal logs``, and
   ``{"type": "exec", "execId", "taskId", "command"}`` when somebody runs
   ``shoal exec`` (``{"type": "exec-cancel", "execId"}`` when they go away).

The session is a duplex stream: after registering, the agent sends
``{"type": "heartbeat"}`` on it every heartbeat period, and the first and then
every ``ANSWER_EVERY``-th is answered with ``{"type": "heartbeat",
"heartbeatPeriod"}`` among the messages above (the agent's sign that this
manager still hears it; it leaves a manager only after 16 periods without any
message from it, 4 of them for the unanswered heartbeats, so an answer every 4
periods is plenty, and a thousand nodes cost the manager a quarter of the
writes). An agent that says it takes any message for that sign (``"hearsAny":
true`` in its first message) is answered only when nothing else was sent to it
for ``ANSWER_EVERY`` periods, or when it was last answered ``ANSWER_EVERY`` ** 2
periods ago: a node busy with assignments and status answers needs few heartbeat
answers, and still gets the current manager list (``shoal.manager.routing``)
that only the session message and heartbeat answers carry. A status batch counts
as a heartbeat of its node (``"beatsOnStatus": true`` in the session message),
so an agent that sent one within the period sends no heartbeat. So a node
holds one connection to the manager, not one for its session and another for
its heartbeats (each mutual-TLS connection costs the manager about 95 KB).
Heartbeats are read on the event loop, which the long reconcile passes hand
back every 10 ms or so (``shoal.reconciler.pacing``); whatever still holds it
(a long call, a stall of the whole process) is measured by the node monitor's
awake clock and never counted as the nodes' silence. Agents older than this send ``Heartbeat``
calls instead (same answers) and half-close the stream after registering.
Heartbeats only touch memory. Status comes back in batches on the same
stream, ``{"type": "status", "batch", "updates"}``, each answered
``{"type": "status", "batch"}`` once written (with ``"error": {"code",
"message"}`` if it could not be; older agents send ``UpdateTaskStatus``
calls), and the ``StatusWriter`` merges the batches of all agents into shared
transactions; a report is applied only if it moves the
task's state forward, so late or repeated reports are harmless. Log lines come back
through ``PublishLogs`` and are routed to the waiting ``shoal logs`` call; a
command's output comes back through ``PublishExec`` (``{"execId", "stream",
"data"}`` chunks, base64, then ``{"execId", "exitCode"}`` or ``{"execId",
"error"}``), only from the node the exec was asked of.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc.aio
import orjson
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as MetricCounter

from shoal.api.transport import (
    MALFORMED,
    ClientStream,
    Method,
    Payload,
    Rejected,
    ServerStream,
    Unary,
    read_more,
    status_for,
)
from shoal.batching import KeyedFlusher
from shoal.errors import AuthError, NodeUnavailableError, ShoalError
from shoal.manager.endpoints import EndpointIndex, EndpointPush
from shoal.manager.statuswriter import StatusWriter
from shoal.models import (
    Node,
    NodeDescription,
    NodeState,
    NodeStatus,
    Task,
    TaskState,
    TaskStatus,
)
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.nodemonitor import HeartbeatTracker
from shoal.reconciler.pacing import Pacer
from shoal.security.authz import current_caller
from shoal.store.retry import retry_on_conflict
from shoal.store.typed import Change, Object

log = structlog.get_logger(__name__)

# Messages waiting for one agent; lines waiting for one log reader.
OUTBOX_LIMIT = 10_000
# How long a closed session's stream may take to end by itself (its writer may be
# stuck on an agent that does not read) before its handler is cancelled.
CLOSE_GRACE = 1.0
LOG_QUEUE_LIMIT = 10_000
# How long an agent's log batch may wait for a reader that does not read.
LOG_PUT_TIMEOUT = 30.0
# Output chunks of one ``shoal exec`` waiting for its caller.
EXEC_QUEUE_LIMIT = 256
# A session's heartbeats answered: the first, then every this many (module docstring).
ANSWER_EVERY = 4


class SessionError(ShoalError):
    """The agent's session is unknown or expired; it must register again."""


@dataclass(eq=False)  # identity: sessions live in sets
class AgentSession:
    """One connected agent: what to send it, and what it was sent.

    The outbox is bounded: an agent that does not read its stream (stuck, or
    hostile) cannot make the manager queue without end. When the outbox is full
    the session is closed; the agent registers again and receives the full
    assignment set, which is exactly what it missed.

    A closed session's stream ends at once, with the reason (FAILED_PRECONDITION):
    heartbeats on it are no longer recorded, so an agent left on it would be
    declared down. A stream whose writer is stuck (the agent does not read) is
    ended by cancelling its handler after ``CLOSE_GRACE``.
    """

    id: str
    node_id: str
    outbox: asyncio.Queue[Payload | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=OUTBOX_LIMIT)
    )
    dirty: set[str] = field(default_factory=set)
    sent: dict[str, tuple[str, bool]] = field(default_factory=dict)
    closed: bool = False
    reason: str = ""  # why it was closed, for the agent
    handler: asyncio.Task[Any] | None = None  # the RPC serving its stream
    # Whether the agent asked for the endpoint catalog, and whether it got the full one.
    catalog: bool = True
    catalog_ready: bool = False
    beats: int = 0  # heartbeats read on the stream (older agents: every ANSWER_EVERY-th answered)
    # The agent takes any message for a sign that this manager hears it (module docstring),
    # and when the last message was queued for it (loop time).
    hears_any: bool = False
    sent_at: float = -math.inf
    answered_at: float = -math.inf  # when a heartbeat answer (or the session) was last sent

    def send(self, message: Payload) -> None:
        if self.closed:
            return
        try:
            self.outbox.put_nowait(message)
            self.sent_at = asyncio.get_running_loop().time()
        except asyncio.QueueFull:
            log.warning("agent.outbox_full", node=self.node_id, limit=OUTBOX_LIMIT)
            self.close(f"{OUTBOX_LIMIT} messages unread; register again")

    def close(self, reason: str = "") -> None:
        """End the session: its stream ends (with ``reason``) and the agent registers again."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        with contextlib.suppress(asyncio.QueueFull):  # full: the stream sees ``closed``
            self.outbox.put_nowait(None)
        if self.handler is not None and not self.handler.done():
            asyncio.get_running_loop().call_later(CLOSE_GRACE, self._end)

    def _end(self) -> None:
        if self.handler is not None and not self.handler.done():
            log.warning("agent.session_cancelled", node=self.node_id, reason=self.reason)
            self.handler.cancel()


@dataclass(frozen=True, slots=True)
class HistoryMark:
    """Where one node's agent is in a followed log's history (``shoal.manager.logstream``).

    ``opened``: its stream opened; ``promised``: True when the agent will mark the end
    of its tasks' history (older agents do not); ``ended``: it has sent the whole of it.
    """

    opened: bool = False
    promised: bool = False
    ended: bool = False


@dataclass
class LogSubscription:
    """Lines on their way to one ``shoal logs`` call; bounded, so agents wait for it.

    Each node's stream puts its lines, a ``HistoryMark`` when it opens and, from an
    agent that promised one, when its history has been sent, and ``None`` at its end.
    """

    id: str
    queue: asyncio.Queue[Payload | HistoryMark | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=LOG_QUEUE_LIMIT)
    )


@dataclass
class ExecSubscription:
    """The output of one ``shoal exec`` on its way to the caller; bounded like logs."""

    id: str
    node_id: str
    queue: asyncio.Queue[Payload | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=EXEC_QUEUE_LIMIT)
    )


def peer_host(peer: str) -> str:
    """The host of a gRPC peer (``ipv4:10.0.0.5:41234``, ``ipv6:%5B::1%5D:41234``); "" if none."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    return rest.rpartition(":")[0].removeprefix("[").removesuffix("]")


def _reader_ended(session: AgentSession, job: asyncio.Task[None]) -> None:
    """A session whose messages can no longer be read is over (the agent registers again)."""
    if not job.cancelled() and job.exception() is not None:
        log.error("agent.session_read_failed", node=session.node_id, error=repr(job.exception()))
        session.close("its messages could not be read; register again")


def _reports(request: Payload) -> dict[str, TaskStatus]:
    """The reports of a status batch (``updates``: task id and status each)."""
    return {str(u["taskId"]): TaskStatus.from_wire(u["status"]) for u in request["updates"]}


def _placed(task: Task) -> bool:
    """Whether the scheduler has given the task to its node (a global task has its
    node from birth, but is the agent's only once it is ``assigned``)."""
    return task.status.state.order >= TaskState.ASSIGNED.order


def _wire(tasks: list[Task]) -> list[orjson.Fragment]:
    """The tasks of an assignment message as the JSON they travel as, encoded by pydantic
    straight to bytes: a third less time than a dict for orjson to encode again, and a
    quarter of its memory while the message waits in the session's outbox."""
    return [orjson.Fragment(task.to_json_bytes()) for task in tasks]


def _fingerprint(task: Task) -> tuple[str, bool]:
    """What the agent acts on; other changes (its own status reports) are not echoed."""
    return (task.desired_state.value, task.status.state.terminal)


class SessionMetrics:
    """Messages on the agents' sessions, by direction and kind, and the tasks or status
    updates they carried: how many tasks one message carries is what batching buys."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        labels = ["direction", "type"]
        messages = MetricCounter(
            "shoal_session_messages_total",
            "Messages on agent sessions (sent: to agents, full assignment sets included; "
            "received: from them), by type.",
            labels,
            registry=registry,
        )
        items = MetricCounter(
            "shoal_session_message_items_total",
            "Tasks in the assignment messages sent and status updates in the batches received.",
            labels,
            registry=registry,
        )
        self.assignments = messages.labels("sent", "assignments")
        self.assigned = items.labels("sent", "assignments")
        self.answers = messages.labels("sent", "heartbeat")
        self.status_answers = messages.labels("sent", "status")
        self.heartbeats = messages.labels("received", "heartbeat")
        self.batches = messages.labels("received", "status")
        self.updates = items.labels("received", "status")


class Dispatcher:
    """Agent sessions, heartbeats, assignments, status and log routing."""

    def __init__(
        self,
        informer: Informer,
        heartbeats: HeartbeatTracker,
        events: EventRecorder,
        heartbeat_period: float,
        deliveries: Callable[[list[Task]], Payload | None] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.informer = informer
        self.heartbeats = heartbeats
        self.events = events
        self.heartbeat_period = heartbeat_period
        # The secret and config bytes of tasks about to start (shoal.manager.secretstore):
        # they ride in the assignment message, never in the task record.
        self.deliveries = deliveries or (lambda tasks: None)
        self.sessions: dict[str, AgentSession] = {}  # by node id
        self.subscriptions: dict[str, LogSubscription] = {}
        self.execs: dict[str, ExecSubscription] = {}
        self.status_writer = StatusWriter(informer)
        self.metrics = SessionMetrics(registry)
        # Sessions with changed tasks; one flusher turns them into messages, so a
        # scheduling pass over a thousand nodes costs one wake-up, not a thousand,
        # and a node given many tasks over a long apply few messages.
        self._flusher: KeyedFlusher[AgentSession] = KeyedFlusher()
        self._flush_job: asyncio.Task[None] | None = None
        informer.subscribe(self._on_change)
        # The endpoint catalog (shoal.manager.endpoints): pushed to the sessions that want it.
        self.endpoints = EndpointIndex(informer)
        self.endpoint_push = EndpointPush(self.endpoints, lambda: self.sessions.values())

    def close_sessions(self) -> None:
        """End every agent session (this manager stopped leading); agents reconnect."""
        for session in list(self.sessions.values()):
            session.close("this manager stopped leading; find the leader")

    async def aclose(self) -> None:
        """Stop the flusher and the endpoint catalog's pushes (the manager is closing)."""
        job, self._flush_job = self._flush_job, None
        if job is not None:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
        await self.endpoint_push.aclose()

    def methods(self) -> dict[str, Method]:
        return {
            "Session": ServerStream(self.session, duplex=True),
            "Heartbeat": Unary(self.heartbeat),
            "UpdateTaskStatus": Unary(self.update_task_status),
            "PublishLogs": ClientStream(self.publish_logs),
            "PublishExec": ClientStream(self.publish_exec),
        }

    def _on_change(self, old: Object | None, new: Object | None) -> None:
        task = new if isinstance(new, Task) else old if isinstance(old, Task) else None
        if task is None:
            return
        if (
            isinstance(old, Task)
            and isinstance(new, Task)
            and old.node_id == new.node_id
            and _placed(old) == _placed(new)
            and _fingerprint(old) == _fingerprint(new)
        ):
            return  # nothing the agent acts on (its own status reports, mostly)
        for node_id in {getattr(old, "node_id", None), getattr(new, "node_id", None)}:
            session = self.sessions.get(node_id) if node_id else None
            if session:
                session.dirty.add(task.id)
                self._flusher.poke(session)

    async def _flush(self, due: list[AgentSession]) -> None:
        """Send each session due its changes (``shoal.batching``: a lone change at once, a
        node that keeps changing held, everything when the changes stop)."""
        pace = Pacer()
        for session in due:
            try:
                update = None if session.closed else self._incremental(session)
            except Exception:  # this node's, not every node's: it registers again
                log.exception("agent.assignments_failed", node=session.node_id)
                session.close("its assignments could not be built; register again")
                continue
            if update:
                session.send(update)
                self.metrics.assignments.inc()
                self.metrics.assigned.inc(len(update["tasks"]))
            await pace()  # a thousand sessions' messages: let heartbeats in

    # ----------------------------------------------------------------- RPCs

    async def session(
        self, request: Payload, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Payload]:
        # The node's certificate names it (checked by shoal.security.authz): no token here.
        node_id = str(request["nodeId"])
        description = NodeDescription.from_wire(request["description"])
        address = await self._register(node_id, description, str(context.peer()))
        session = AgentSession(
            id=secrets.token_hex(8),
            node_id=node_id,
            catalog=request.get("catalog") is not False,
            hears_any=request.get("hearsAny") is True,
        )
        # The full set and its record are built before the session is published, with
        # no await between: a change from then on is diffed against that record, and its
        # message is queued behind the full set (built after, a change made while the
        # session message was written was diffed against an empty record, and a task
        # created and deleted meanwhile reached the agent after the set, never removed).
        tasks = [e.obj for e in self.informer.tasks_on_node(node_id) if _placed(e.obj)]
        session.sent = {t.id: _fingerprint(t) for t in tasks}
        full: Payload = {"type": "assignments", "full": True, "tasks": _wire(tasks)}
        files = self.deliveries(tasks)
        if files:
            full["files"] = files
        previous = self.sessions.get(node_id)
        if previous:
            previous.close("a newer session of this node replaced it")
        self.sessions[node_id] = session
        session.handler = asyncio.current_task()
        self.heartbeats.registered(node_id)
        log.info("agent.session", node=node_id, session=session.id, peer=context.peer())
        reader: asyncio.Task[None] | None = None
        try:
            yield {
                "type": "session",
                "sessionId": session.id,
                "heartbeatPeriod": self.heartbeat_period,
                "advertiseAddress": address,
                # Heartbeats and status batches come on this stream, not as calls.
                "streamHeartbeats": True,
                "streamStatus": True,
                "beatsOnStatus": True,
            }
            reader = asyncio.create_task(self._read(session, context), name=f"session-{node_id}")
            reader.add_done_callback(lambda job: _reader_ended(session, job))
            session.sent_at = session.answered_at = asyncio.get_running_loop().time()
            yield full
            self.metrics.assignments.inc()
            self.metrics.assigned.inc(len(tasks))
            if session.catalog:  # every service's endpoints, then their changes
                yield self.endpoint_push.full(session)
                self.endpoint_push.start()
            if self._flush_job is None or self._flush_job.done():
                self._flush_job = asyncio.create_task(
                    self._flusher.run(self._flush), name="dispatcher-flush"
                )
            while not session.closed:
                message = await session.outbox.get()
                if message is None:
                    break
                yield message
            if session.reason:
                raise SessionError(session.reason)
        finally:
            session.closed = True
            if reader is not None:
                reader.cancel()
            if self.sessions.get(node_id) is session:
                del self.sessions[node_id]
            self._flusher.forget(session)
            self._end_execs_on(node_id)
            log.info("agent.session_ended", node=node_id, session=session.id)

    async def _read(self, session: AgentSession, context: grpc.aio.ServicerContext) -> None:
        """What the agent sends on its session after registering: heartbeats, some of them
        answered on the stream (the agent's sign that this manager still hears it; which,
        the module docstring says), and status batches, each answered once written (or with
        the error that kept it out). Either, from a node marked down, ends the session."""
        writes: set[asyncio.Task[None]] = set()
        try:
            async for message in read_more(context):
                if isinstance(message, Rejected):
                    log.warning("agent.session_message_refused", node=session.node_id)
                    session.close("a session message was refused")
                    return
                kind = message.get("type")
                if kind == "heartbeat":
                    if not self._beat(session):
                        return
                    session.beats += 1
                    self.metrics.heartbeats.inc()
                    if self._answer_due(session):
                        session.send(
                            {"type": "heartbeat", "heartbeatPeriod": self.heartbeat_period}
                        )
                        session.answered_at = session.sent_at
                        self.metrics.answers.inc()
                elif kind == "status":  # written while the next messages are read
                    if not self._beat(session, heartbeat=False):  # as good as one
                        return
                    self.metrics.batches.inc()
                    updates = message.get("updates")
                    self.metrics.updates.inc(len(updates) if isinstance(updates, list) else 0)
                    write = asyncio.create_task(self._status(session, message))
                    writes.add(write)
                    write.add_done_callback(writes.discard)
                # else: a kind a newer agent sends, not ours to judge
        finally:
            for write in writes:
                write.cancel()

    def _answer_due(self, session: AgentSession) -> bool:
        """Whether this heartbeat of ``session`` is answered (module docstring)."""
        if session.hears_any:
            now = asyncio.get_running_loop().time()
            quiet = now - session.sent_at
            unanswered = now - session.answered_at
            return (
                quiet >= (ANSWER_EVERY - 0.5) * self.heartbeat_period
                or unanswered >= (ANSWER_EVERY**2 - 0.5) * self.heartbeat_period
            )
        return session.beats % ANSWER_EVERY == 1

    async def _status(self, session: AgentSession, message: Payload) -> None:
        """Write one status batch sent on the session; answer it on the session."""
        answer: Payload = {"type": "status", "batch": message.get("batch")}
        try:
            if session.closed:
                raise SessionError(f"the session of node {session.node_id} is over")
            await self.status_writer.submit(session.node_id, _reports(message))
        except (ShoalError, ValueError, *MALFORMED) as exc:
            if isinstance(exc, MALFORMED):
                exc = ValueError(f"malformed status batch: {exc!r}")
            answer["error"] = {"code": status_for(exc).name, "message": str(exc)}
        session.send(answer)
        self.metrics.status_answers.inc()

    def _live(self, session: AgentSession) -> bool:
        """Whether ``session`` is open and its node ``ready`` or held ``unknown`` (its
        messages are its beats)."""
        entry = self.informer.nodes.get(session.node_id)
        return (
            not session.closed
            and entry is not None
            and entry.obj.status.state in (NodeState.READY, NodeState.UNKNOWN)
        )

    def _beat(self, session: AgentSession, heartbeat: bool = True) -> bool:
        """Record that ``session``'s node was heard from (a heartbeat, or a status batch,
        which stands for one but is not counted as one); False (and the session closed)
        if its node was marked down meanwhile or the session is over: the agent must
        register again. A node held ``unknown`` keeps its session: the node monitor
        writes it ready again."""
        entry = self.informer.nodes.get(session.node_id)
        if not self._live(session):
            state = "removed" if entry is None else entry.obj.status.state.value
            session.close(f"node {session.node_id} is {state}; register again")
            return False
        if heartbeat:
            self.heartbeats.beat(session.node_id)
        else:
            self.heartbeats.heard_from(session.node_id)
        return True

    def _incremental(self, session: AgentSession) -> Payload | None:
        changed: list[Task] = []
        removed: list[str] = []
        dirty, session.dirty = session.dirty, set()
        for task_id in dirty:
            entry = self.informer.tasks.get(task_id)
            if entry is None or entry.obj.node_id != session.node_id or not _placed(entry.obj):
                if session.sent.pop(task_id, None) is not None:
                    removed.append(task_id)
                continue
            fingerprint = _fingerprint(entry.obj)
            if session.sent.get(task_id) != fingerprint:
                session.sent[task_id] = fingerprint
                changed.append(entry.obj)
        if not changed and not removed:
            return None
        message: Payload = {
            "type": "assignments",
            "full": False,
            "tasks": _wire(changed),
            "removed": removed,
        }
        files = self.deliveries(changed)
        if files:
            message["files"] = files
        return message

    async def _register(self, node_id: str, description: NodeDescription, peer: str) -> str:
        """Write the node ready; returns the address others reach it at."""
        now = datetime.now(UTC)
        advertise = description.advertise_address or peer_host(peer)

        async def attempt() -> None:
            entry = self.informer.nodes.get(node_id)
            status = NodeStatus(
                state=NodeState.READY, address=peer, advertise_address=advertise, updated_at=now
            )
            if entry is None:
                node = Node(id=node_id, description=description, status=status)
                expect = 0
            else:
                node = entry.obj.model_copy(update={"description": description, "status": status})
                expect = entry.revision
            await self.informer.commit([Change.put(node, expect)])

        await retry_on_conflict(attempt, f"node {node_id} (registering)")
        self.events.record(f"node/{node_id}", "NodeReady", f"agent registered from {peer}")
        return advertise

    def _session_for(self, request: Payload) -> AgentSession:
        node_id = str(request.get("nodeId", ""))
        session = self.sessions.get(node_id)
        if session is None or session.id != request.get("sessionId") or session.closed:
            raise SessionError(f"no session {request.get('sessionId')} for node {node_id}")
        return session

    async def heartbeat(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        """A heartbeat as a call of its own (agents older than heartbeats on the session)."""
        session = self._session_for(request)
        if not self._beat(session):
            raise SessionError(f"node {session.node_id} was marked down; register again")
        return {"heartbeatPeriod": self.heartbeat_period}

    async def update_task_status(
        self, request: Payload, context: grpc.aio.ServicerContext
    ) -> Payload:
        session = self._session_for(request)
        await self.status_writer.submit(session.node_id, _reports(request))
        return {}

    async def publish_logs(
        self, requests: AsyncIterator[Payload], context: grpc.aio.ServicerContext
    ) -> Payload:
        subscription: LogSubscription | None = None
        # An agent that promised to mark the end of its history and whose stream ends
        # (or breaks) before it did is done with it all the same, and a stream that
        # breaks ends this node's part: the reader must not wait for either for ever.
        owed = False
        finished = False
        try:
            async for message in requests:
                opening = subscription is None
                subscription = self.subscriptions.get(str(message.get("subscriptionId")))
                if subscription is None:
                    break  # the reader went away
                lines = message.get("lines", ())
                if not isinstance(lines, list):
                    raise ValueError("lines: must be a list")
                items: list[Payload | HistoryMark] = list(lines)
                if opening:
                    owed = bool(message.get("marksHistory"))
                    items.insert(0, HistoryMark(opened=True, promised=owed))
                if message.get("historyEnd"):
                    items.append(HistoryMark(ended=True))
                    owed = False
                try:
                    for item in items:  # backpressure: a slow reader slows the agent down
                        async with asyncio.timeout(LOG_PUT_TIMEOUT):
                            await subscription.queue.put(item)
                except TimeoutError:
                    finished = True  # the reader stopped reading; it will never see the end
                    return {}
            if subscription is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LOG_PUT_TIMEOUT):
                        if owed:
                            await subscription.queue.put(HistoryMark(ended=True))
                        await subscription.queue.put(None)
            finished = True
            return {}
        finally:
            if subscription is not None and not finished:  # the stream broke
                with contextlib.suppress(asyncio.QueueFull):
                    if owed:
                        subscription.queue.put_nowait(HistoryMark(ended=True))
                    subscription.queue.put_nowait(None)

    async def publish_exec(
        self, requests: AsyncIterator[Payload], context: grpc.aio.ServicerContext
    ) -> Payload:
        """Output of one exec, from the node it runs on, to the waiting ``Exec`` call."""
        caller = current_caller()
        subscription: ExecSubscription | None = None
        async for message in requests:
            found = self.execs.get(str(message.get("execId")))
            if found is None:
                break  # the caller went away
            if caller is not None and caller.name != found.node_id:
                raise AuthError(f"node {caller.name} cannot answer an exec asked of another node")
            subscription = found
            item: Payload = {}
            if "data" in message:
                if message.get("stream") not in ("stdout", "stderr"):
                    raise ValueError("stream: must be stdout or stderr")
                if not isinstance(message["data"], str):
                    raise ValueError("data: must be base64 text")
                item = {"stream": message["stream"], "data": message["data"]}
            elif "exitCode" in message:
                code = message["exitCode"]
                if not isinstance(code, int) or isinstance(code, bool):
                    raise ValueError("exitCode: must be a whole number")
                item = {"exitCode": code}
            elif "error" in message:
                item = {"error": str(message["error"])}
            else:
                continue  # the opening message
            try:  # backpressure: a slow caller slows the command down
                async with asyncio.timeout(LOG_PUT_TIMEOUT):
                    await subscription.queue.put(item)
            except TimeoutError:
                return {}
        if subscription is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOG_PUT_TIMEOUT):
                    await subscription.queue.put(None)
        return {}

    # ------------------------------------------------------------ log routing

    def request_logs(
        self,
        task_ids_by_node: dict[str, list[str]],
        follow: bool,
        tail: int | None,
        since: str | None = None,
    ) -> tuple[LogSubscription, list[str]]:
        """Ask each node's agent for logs (``since``: RFC 3339, older lines are left out);
        returns the subscription and unreachable nodes."""
        subscription = LogSubscription(id=secrets.token_hex(8))
        self.subscriptions[subscription.id] = subscription
        missing: list[str] = []
        for node_id, task_ids in task_ids_by_node.items():
            session = self.sessions.get(node_id)
            if session is None:
                missing.append(node_id)
                continue
            session.send(
                {
                    "type": "logs",
                    "subscriptionId": subscription.id,
                    "taskIds": task_ids,
                    "follow": follow,
                    "tail": tail,
                    "since": since,
                }
            )
        return subscription, missing

    def request_exec(self, node_id: str, task_id: str, command: list[str]) -> ExecSubscription:
        """Ask ``node_id``'s agent to run ``command`` in the task; its output comes to the
        subscription. ``NodeUnavailableError`` if the node is not connected."""
        session = self.sessions.get(node_id)
        if session is None or session.closed:
            raise NodeUnavailableError(f"node {node_id} is not connected to the manager")
        subscription = ExecSubscription(id=secrets.token_hex(8), node_id=node_id)
        self.execs[subscription.id] = subscription
        session.send(
            {"type": "exec", "execId": subscription.id, "taskId": task_id, "command": command}
        )
        return subscription

    def _end_execs_on(self, node_id: str) -> None:
        """The node's session ended: its execs will never finish; tell their callers."""
        for subscription in [s for s in self.execs.values() if s.node_id == node_id]:
            with contextlib.suppress(asyncio.QueueFull):  # full: that caller does not read
                subscription.queue.put_nowait(
                    {"error": f"the session of node {node_id} ended while the command ran"}
                )

    def end_exec(self, subscription: ExecSubscription) -> None:
        self.execs.pop(subscription.id, None)
        session = self.sessions.get(subscription.node_id)
        if session:
            session.send({"type": "exec-cancel", "execId": subscription.id})

    def end_logs(self, subscription: LogSubscription, node_ids: list[str]) -> None:
        self.subscriptions.pop(subscription.id, None)
        for node_id in node_ids:
            session = self.sessions.get(node_id)
            if session:
                session.send({"type": "logs-cancel", "subscriptionId": subscription.id})
