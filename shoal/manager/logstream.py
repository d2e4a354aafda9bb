"""``Logs``: the output of a service's tasks (or of several services', or of one task),
gathered from the agents that run them.

Without ``follow`` the answer is the log of every task the service has on a
node now, and ends when each agent has sent it. With ``follow`` it follows
the **service**, not the tasks it had when the call began: every task that
starts later (a scale-up, a replacement for a task that failed, a rolling
update's new tasks) is added as soon as it runs, with its whole output so far,
and the stream goes on after the first tasks end. It ends when the caller
goes away, or when the service is deleted and its last task's log is sent.

What is shown is a ``LogScope``: one service (the above), the services a
label selector matches (followed the same way; new matching services join,
and the stream goes on until the caller goes away), or one task, named by its
id, a unique prefix of it, or its name (followed until it ends).

Each agent is asked through its session (``Dispatcher.request_logs``); a
node that is not connected is named in one line instead of its logs.

Every line carries ``time``, when it was written (RFC 3339): the agent's
stamp (see ``Runtime.timed_logs``), or, from an agent too old to stamp, the
time it arrived here. ``since`` leaves out older lines; the agents filter, and
this module again for agents that do not know ``since``. Lines of several tasks
are shown in time order: without ``follow`` all of them are gathered and sorted;
with ``follow`` the history of the tasks there at the start is held, sorted and
sent once every node has sent its own, and later lines are sent as they come.
An agent says where its tasks' history ends (``HistoryMark``: it promises to on
its stream's opening message, ``marksHistory``, and marks the end with
``historyEnd``); an agent too old to do so is taken to be done once the agents
have been quiet for ``HISTORY_QUIET``. The hold lasts ``HISTORY_HOLD`` at most,
or ``HISTORY_MARKED_HOLD`` when every node promised a mark.

A reader that does not keep up (a slow terminal, a browser tab in the
background) holds at most ``PENDING_LIMIT`` lines on this manager. With that
many waiting, the agents' lines wait for it ``BEHIND`` at most; after that,
lines are dropped until it has room again, and where they went missing the
reader gets one line per task, ``(shoal: N lines dropped here: ...)``; the
stream goes on. So a reader that is only busy loses nothing, and one that does
not read neither grows the manager's memory nor holds the agents up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

from shoal.api.transport import Payload
from shoal.errors import NotFoundError
from shoal.logtimes import format_time, parse_time
from shoal.manager.dispatcher import Dispatcher, HistoryMark, LogSubscription
from shoal.models import TaskState
from shoal.models.task import Task
from shoal.reconciler.informer import Informer
from shoal.selectors import Selector

# How often a followed service is looked at for new tasks.
POLL = 0.5
# Following: the first lines are held and sorted until each agent marked the end of its
# history, or, from an agent that does not mark it, until the agents are this quiet...
HISTORY_QUIET = 0.3
# ...for this long at most (an agent that never opens its stream must not hold the rest)...
HISTORY_HOLD = 2.0
# Lines waiting for one reader, at most; more are dropped (and the reader told how many)...
PENDING_LIMIT = 10_000
# ...once it has taken none for this long with that many waiting.
BEHIND = 1.0
# ...or this long once every node promised to mark it.
HISTORY_MARKED_HOLD = 10.0


class _History:
    """How far the nodes of a followed call's first request are with their history."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.opened = 0
        self.promised = 0
        self.ended = 0

    def note(self, mark: HistoryMark) -> None:
        self.opened += mark.opened
        self.promised += mark.promised
        self.ended += mark.ended

    def sent(self, quiet: bool) -> bool:
        """Whether every node has sent its history (``quiet``: the agents are quiet)."""
        if self.opened < self.nodes or self.ended < self.promised:
            return False
        return quiet or self.promised == self.opened

    def hold(self) -> float:
        return HISTORY_MARKED_HOLD if self.promised == self.nodes else HISTORY_HOLD


def _line_time(item: Payload) -> datetime:
    """When an agent's line was written; now, if the agent did not say."""
    raw = item.get("time")
    if isinstance(raw, str):
        try:
            return parse_time(raw)
        except ValueError:
            pass
    return datetime.now(UTC)


def _by_time(items: list[Payload]) -> list[Payload]:
    """Lines in time order (stable: one task's lines keep their order)."""
    return sorted(items, key=lambda item: str(item.get("time", "")))


def _has_log(task: Task, *, started: bool) -> bool:
    """Whether the task's node has a log for it (``started``: it ran, or has run)."""
    if not task.node_id:
        return False
    if started:
        return task.status.state == TaskState.RUNNING or (
            task.status.state.terminal and task.status.started_at is not None
        )
    return task.status.state not in (TaskState.PENDING, TaskState.ASSIGNED, TaskState.NEW)


def find_task(informer: Informer, text: str) -> Task:
    """The task ``text`` names: its id, a unique prefix of the id, or its name."""
    found: dict[str, Task] = {}
    for entry in informer.all_tasks():
        task = entry.obj
        if text in (task.id, task.name):
            return task
        if task.id.startswith(text):
            found[task.id] = task
    if not found:
        raise NotFoundError(f"task {text!r} not found")
    if len(found) > 1:
        names = ", ".join(sorted(t.name for t in found.values())[:5])
        raise ValueError(f"task: {text!r} is the start of several task ids ({names}): give more")
    return next(iter(found.values()))


class LogScope:
    """Which tasks one ``Logs`` call shows: of a service, of the services a
    selector matches, or one task (see the module docstring)."""

    def __init__(
        self,
        informer: Informer,
        service: str | None = None,
        selector: Selector | None = None,
        task: str | None = None,
    ) -> None:
        self.informer = informer
        self.service = service
        self.selector = selector
        self.task_id: str | None = None
        if task is not None:
            self.task_id = find_task(informer, task).id
        elif (
            service is not None
            and informer.service(service) is None
            and not informer.tasks_by_service.get(service)
        ):
            raise NotFoundError(f"service {service!r} not found")

    def tasks(self) -> Iterator[Task]:
        if self.task_id is not None:
            entry = self.informer.tasks.get(self.task_id)
            if entry is not None:
                yield entry.obj
            return
        if self.service is not None:
            names = [self.service]
        else:
            selector = self.selector or Selector()
            names = [
                n
                for n, e in self.informer.services.items()
                if selector.matches(e.obj.metadata.labels)
            ]
        for name in names:
            for entry in self.informer.tasks_of_service(name):
                yield entry.obj

    def ended(self) -> bool:
        """Nothing more will ever be shown: the service is deleted, or the task ended."""
        if self.task_id is not None:
            entry = self.informer.tasks.get(self.task_id)
            return entry is None or entry.obj.status.state.terminal
        if self.service is not None:
            return self.informer.service(self.service) is None
        return False  # services matching the selector may come later


class ServiceLogs:
    """One ``Logs`` call (see the module docstring)."""

    def __init__(
        self, informer: Informer, dispatcher: Dispatcher, limit: int = PENDING_LIMIT
    ) -> None:
        self.informer = informer
        self.dispatcher = dispatcher
        self.limit = limit

    async def stream(
        self,
        scope: LogScope,
        follow: bool,
        tail: int | None,
        poll: float = POLL,
        since: datetime | None = None,
    ) -> AsyncIterator[Payload]:
        """The lines, each ``{taskId, task, line, time}`` (see the module docstring)."""
        async for batch in self._batches(scope, follow, tail, poll, since):
            for item in batch:
                yield item

    async def _batches(
        self,
        scope: LogScope,
        follow: bool,
        tail: int | None,
        poll: float,
        since: datetime | None,
    ) -> AsyncIterator[list[Payload]]:
        merged: asyncio.Queue[Payload | HistoryMark | None] = asyncio.Queue(self.limit)
        names: dict[str, str] = {}
        asked: set[str] = set()
        open_streams = 0
        subscriptions: list[tuple[LogSubscription, list[str]]] = []
        pumps: list[asyncio.Task[None]] = []
        since_text = None if since is None else format_time(since)
        history: _History | None = None

        # Lines dropped while ``merged`` was full, by task (the reader is told, below).
        dropped: dict[str, int] = defaultdict(int)

        def own_up() -> None:
            """Say, where the lines went missing, how many of each task's were dropped."""
            now = format_time(datetime.now(UTC))
            for task_id in list(dropped):
                if merged.full():
                    return
                merged.put_nowait(
                    {
                        "taskId": task_id,
                        "line": f"(shoal: {dropped.pop(task_id)} lines dropped here: this "
                        f"reader fell more than {self.limit} lines behind)",
                        "time": now,
                    }
                )

        async def pump(subscription: LogSubscription, nodes: int, marks: bool) -> None:
            while nodes:
                item = await subscription.queue.get()
                if item is None:
                    nodes -= 1
                    continue
                if isinstance(item, HistoryMark):
                    if marks:  # never dropped: the history waits for them
                        await merged.put(item)
                    continue
                if dropped:
                    own_up()
                if not dropped:
                    try:  # a reader that is only busy catches up: the agent waits a little
                        async with asyncio.timeout(BEHIND):
                            await merged.put(item)
                        continue
                    except TimeoutError:
                        pass
                dropped[str(item.get("taskId", ""))] += 1  # it is behind: no more waiting
            await merged.put(None)

        def ask(tasks: list[Task], task_tail: int | None) -> list[Payload]:
            """Request the logs of ``tasks``; lines for nodes that cannot be asked."""
            nonlocal open_streams, history
            by_node: dict[str, list[str]] = defaultdict(list)
            for task in tasks:
                assert task.node_id is not None
                by_node[task.node_id].append(task.id)
                names[task.id] = task.name
                asked.add(task.id)
            if not by_node:
                return []
            subscription, missing = self.dispatcher.request_logs(
                by_node, follow, task_tail, since_text
            )
            subscriptions.append((subscription, list(by_node)))
            reachable = len(by_node) - len(missing)
            if reachable:
                open_streams += 1
                # Only the first request's history is held: only its marks count.
                first_request = history is None
                if first_request:
                    history = _History(reachable)
                pumps.append(asyncio.create_task(pump(subscription, reachable, first_request)))
            now = format_time(datetime.now(UTC))
            return [
                {
                    "taskId": "",
                    "task": "",
                    "line": f"(node {node_id} is not connected; its logs are unavailable)",
                    "time": now,
                }
                for node_id in missing
            ]

        def current(started: bool) -> list[Task]:
            return [t for t in scope.tasks() if t.id not in asked and _has_log(t, started=started)]

        def shown(item: Payload) -> Payload | None:
            """The line as the caller sees it; None when it is older than ``since``."""
            at = _line_time(item)
            if since is not None and at < since:
                return None
            task_id = str(item.get("taskId", ""))
            return {
                "taskId": task_id,
                "task": names.get(task_id, task_id),
                "line": item.get("line", ""),
                "time": format_time(at),
            }

        try:
            loop = asyncio.get_running_loop()
            first = ask(current(started=False), tail)
            if not follow:
                while open_streams:
                    if (got := await merged.get()) is None:
                        open_streams -= 1
                    elif isinstance(got, dict) and (line := shown(got)) is not None:
                        first.append(line)
                yield _by_time(first)
                return
            held: list[Payload] | None = first
            # Following: hold and sort the first lines (the history), then pass lines on.
            started = last_arrival = loop.time()
            look_at = loop.time() + poll
            while True:
                item: Payload | HistoryMark | bool | None
                hold_until = started + (history.hold() if history else HISTORY_HOLD)
                wait = max(0.0, look_at - loop.time())
                if held is not None:
                    wait = min(wait, HISTORY_QUIET, max(0.0, hold_until - loop.time()))
                try:
                    async with asyncio.timeout(wait):
                        item = await merged.get()
                except TimeoutError:
                    item = False  # time to look for new tasks, or to let the history go
                if dropped:
                    own_up()  # there is room now
                if isinstance(item, dict):
                    last_arrival = loop.time()
                    if (line := shown(item)) is not None:
                        if held is not None:
                            held.append(line)
                        else:
                            yield [line]
                elif isinstance(item, HistoryMark):
                    assert history is not None  # marks come from the first request only
                    history.note(item)
                elif item is None:
                    open_streams -= 1  # every node of one request has answered
                now = loop.time()
                quiet = now - last_arrival >= HISTORY_QUIET
                if held is not None and (
                    open_streams == 0
                    or now >= hold_until
                    or (history is not None and history.sent(quiet))
                ):
                    yield _by_time(held)
                    held = None
                if item is not None and now < look_at:
                    continue
                look_at = now + poll
                fresh = ask(current(started=True), None)
                if held is not None:
                    held.extend(fresh)
                elif fresh:
                    yield fresh
                if open_streams == 0 and scope.ended():
                    if held:
                        yield _by_time(held)
                    return  # deleted (or the task ended), and every log sent
        finally:
            for task in pumps:
                task.cancel()
            for task in pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for subscription, nodes in subscriptions:
                self.dispatcher.end_logs(subscription, nodes)
