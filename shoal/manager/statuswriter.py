"""Task status from every agent, written in as few transactions as possible.

Each agent already batches its reports, but a thousand agents still make a
thousand small ``UpdateTaskStatus`` calls, and one store transaction each
would make the store's commit rate (an fsync per commit on SQLite) the
cluster's speed limit. The ``StatusWriter`` merges the reports of all calls
that arrive while the previous write is in flight into the next one, so the
number of transactions adapts to the load: one per call when it is quiet, one
per many calls when it is busy, with no timer adding latency.

A report is applied only if it moves its task's state forward, so a late or
repeated report changes nothing. A call returns once its reports are durable
(or raises, and the agent sends them again).
"""

from __future__ import annotations

import asyncio
import contextlib

from shoal.errors import ConflictError
from shoal.models import TaskStatus
from shoal.reconciler.informer import Informer
from shoal.store.typed import Change

ATTEMPTS = 5


class StatusWriter:
    """Merges concurrent status reports into shared transactions."""

    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        self._pending: dict[str, tuple[str, TaskStatus]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._job: asyncio.Task[None] | None = None

    async def submit(self, node_id: str, reports: dict[str, TaskStatus]) -> None:
        """Queue ``reports`` from the agent of ``node_id``; return once written."""
        if self._job is None or self._job.done():
            self._job = asyncio.create_task(self._run(), name="status-writer")
        for task_id, status in reports.items():
            self._pending[task_id] = (node_id, status)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    async def aclose(self) -> None:
        if self._job is not None:
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._job

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            waiters, self._waiters = self._waiters, []
            try:
                await self._write(pending)
            except Exception as exc:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
            else:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _write(self, pending: dict[str, tuple[str, TaskStatus]]) -> None:
        for _ in range(ATTEMPTS):
            changes: list[Change] = []
            for task_id, (node_id, status) in pending.items():
                entry = self.informer.tasks.get(task_id)
                if entry is None or entry.obj.node_id != node_id:
                    continue  # deleted, or moved: this agent has no say any more
                if not entry.obj.status.state.can_move_to(status.state):
                    continue
                task = entry.obj.model_copy(update={"status": status})
                changes.append(Change.put(task, entry.revision))
            try:
                await self.informer.commit(changes)
            except ConflictError:
                continue  # somebody changed one of these tasks meanwhile: recompute
            return
        raise ConflictError("task status updates kept losing races; the agents will resend")
