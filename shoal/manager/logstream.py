"""``Logs``: a service's output, gathered from the agents that run its tasks.

Without ``follow`` the answer is the log of every task the service has on a
node now, and ends when each agent has sent it. With ``follow`` it follows
the **service**, not the tasks it had when the call began: every task that
starts later (a scale-up, a replacement for a task that failed, a rolling
update's new tasks) is added as soon as it runs, with its whole output so far,
and the stream goes on after the first tasks end. It ends when the caller
goes away, or when the service is deleted and its last task's log is sent.

Each agent is asked through its session (``Dispatcher.request_logs``); a
node that is not connected is named in one line instead of its logs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

from shoal.api.transport import Payload
from shoal.errors import NotFoundError
from shoal.manager.dispatcher import Dispatcher, LogSubscription
from shoal.models import TaskState
from shoal.models.task import Task
from shoal.reconciler.informer import Informer

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


class ServiceLogs:
    """One ``Logs`` call (see the module docstring)."""

    def __init__(self, informer: Informer, dispatcher: Dispatcher) -> None:
        self.informer = informer
        self.dispatcher = dispatcher

    async def stream(
        self, name: str, follow: bool, tail: int | None, poll: float = POLL
    ) -> AsyncIterator[Payload]:
        if self.informer.service(name) is None and not self.informer.tasks_by_service.get(name):
            raise NotFoundError(f"service {name!r} not found")
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
            return [
                e.obj
                for e in self.informer.tasks_of_service(name)
                if e.obj.id not in asked and _has_log(e.obj, started=started)
            ]

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
                    if open_streams == 0 and self.informer.service(name) is None:
                        return  # deleted, and every log sent
        finally:
            for task in pumps:
                task.cancel()
            for task in pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for subscription, nodes in subscriptions:
                self.dispatcher.end_logs(subscription, nodes)
