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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator

from shoal.api.transport import Payload
from shoal.errors import NotFoundError
from shoal.manager.dispatcher import Dispatcher, LogSubscription
from shoal.models import TaskState
from shoal.models.task import Task
from shoal.reconciler.informer import Informer
from shoal.selectors import Selector

# How often a followed service is looked at for new tasks.
POLL = 0.5


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

    def __init__(self, informer: Informer, dispatcher: Dispatcher) -> None:
        self.informer = informer
        self.dispatcher = dispatcher

    async def stream(
        self, scope: LogScope, follow: bool, tail: int | None, poll: float = POLL
    ) -> AsyncIterator[Payload]:
        merged: asyncio.Queue[Payload | None] = asyncio.Queue()
        names: dict[str, str] = {}
        asked: set[str] = set()
        open_streams = 0
        subscriptions: list[tuple[LogSubscription, list[str]]] = []
        pumps: list[asyncio.Task[None]] = []

        async def pump(subscription: LogSubscription, nodes: int) -> None:
            while nodes:
                item = await subscription.queue.get()
                if item is None:
                    nodes -= 1
                else:
                    merged.put_nowait(item)
            merged.put_nowait(None)

        def ask(tasks: list[Task], task_tail: int | None) -> list[Payload]:
            """Request the logs of ``tasks``; lines for nodes that cannot be asked."""
            nonlocal open_streams
            by_node: dict[str, list[str]] = defaultdict(list)
            for task in tasks:
                assert task.node_id is not None
                by_node[task.node_id].append(task.id)
                names[task.id] = task.name
                asked.add(task.id)
            if not by_node:
                return []
            subscription, missing = self.dispatcher.request_logs(by_node, follow, task_tail)
            subscriptions.append((subscription, list(by_node)))
            reachable = len(by_node) - len(missing)
            if reachable:
                open_streams += 1
                pumps.append(asyncio.create_task(pump(subscription, reachable)))
            return [
                {
                    "taskId": "",
                    "task": "",
                    "line": f"(node {node_id} is not connected; its logs are unavailable)",
                }
                for node_id in missing
            ]

        def current(started: bool) -> list[Task]:
            return [t for t in scope.tasks() if t.id not in asked and _has_log(t, started=started)]

        try:
            for line in ask(current(started=False), tail):
                yield line
            loop = asyncio.get_running_loop()
            look_at = loop.time() + poll
            while True:
                item: Payload | bool | None
                if not follow:
                    if open_streams == 0:
                        return
                    item = await merged.get()
                else:
                    try:
                        wait = max(0.0, look_at - loop.time())
                        item = await asyncio.wait_for(merged.get(), wait)
                    except TimeoutError:
                        item = False  # time to look for new tasks
                if isinstance(item, dict):
                    task_id = str(item.get("taskId", ""))
                    yield {
                        "taskId": task_id,
                        "task": names.get(task_id, task_id),
                        "line": item.get("line", ""),
                    }
                    if not follow or loop.time() < look_at:
                        continue
                if item is None:
                    open_streams -= 1  # every node of one request has answered
                if follow:
                    look_at = loop.time() + poll
                    for line in ask(current(started=True), None):
                        yield line
                    if open_streams == 0 and scope.ended():
                        return  # deleted (or the task ended), and every log sent
        finally:
            for task in pumps:
                task.cancel()
            for task in pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for subscription, nodes in subscriptions:
                self.dispatcher.end_logs(subscription, nodes)
