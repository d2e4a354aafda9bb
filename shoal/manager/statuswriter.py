"""Task status from every agent, written in as few transactions as possible.

Each agent already batches its reports, but a thousand agents still make a
thousand small ``UpdateTaskStatus`` calls, and one store transaction each
would make the store's commit rate (an fsync per commit on SQLite) the
cluster's speed limit. The ``StatusWriter`` merges the reports of all calls
that arrive while the previous write is in flight into the next one, so the
number of transactions adapts to the load: one per call when it is quiet, one
per many calls when it is busy, with no timer adding latency.

A report is applied only if it moves its task's state forward, so a late or
repeated report changes nothing; of two reports for one task waiting for the
same write, the one further along wins, whichever arrived last.

A merged write compares every task's revision. When it loses a race, the
batch is split in halves and each is written on its own, down to single
tasks, so one task that keeps changing under the writer (its orchestrator
shutting it down, say) costs a few more transactions and fails only its own
report, never the reports of every agent merged with it. A call returns once
its reports are durable, or raises if one of its own could not be written (the
agent sends them again).
"""

from __future__ import annotations

import asyncio
import contextlib

from shoal.errors import ConflictError
from shoal.models import TaskStatus
from shoal.reconciler.informer import Informer
from shoal.store.retry import retry_on_conflict
from shoal.store.typed import Change

# Tries for one task's report that keeps losing races, with this first pause
# (doubling) for the cache to learn the newer revision.
ATTEMPTS = 5
RETRY_PAUSE = 0.005

Pending = dict[str, tuple[str, TaskStatus]]


class StatusWriter:
    """Merges concurrent status reports into shared transactions."""

    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        self._pending: Pending = {}
        self._waiters: list[tuple[asyncio.Future[None], frozenset[str]]] = []
        self._wake = asyncio.Event()
        self._job: asyncio.Task[None] | None = None

    async def submit(self, node_id: str, reports: dict[str, TaskStatus]) -> None:
        """Queue ``reports`` from the agent of ``node_id``; return once written."""
        if self._job is None or self._job.done():
            self._job = asyncio.create_task(self._run(), name="status-writer")
        for task_id, status in reports.items():
            queued = self._pending.get(task_id)
            if queued is None or queued[1].state.order <= status.state.order:
                self._pending[task_id] = (node_id, status)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((waiter, frozenset(reports)))
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
                lost = await self._write(pending, list(pending))
            except Exception as exc:  # the store failed: nothing of this batch is known written
                for waiter, _ in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for waiter, task_ids in waiters:
                if waiter.done():
                    continue
                mine = sorted(task_ids & lost)
                if mine:
                    waiter.set_exception(
                        ConflictError(
                            f"status of task(s) {', '.join(mine)} kept losing races; resend it"
                        )
                    )
                else:
                    waiter.set_result(None)

    async def _write(self, pending: Pending, task_ids: list[str]) -> set[str]:
        """Write the reports of ``task_ids``; return the ids that could not be written."""
        changes = self._changes(pending, task_ids)
        if len(changes) > 1:
            try:
                await self.informer.commit(changes)
            except ConflictError:  # split the batch: only the racing tasks retry
                half = len(changes) // 2
                ids = [c.key.rpartition("/")[2] for c in changes]
                return await self._write(pending, ids[:half]) | await self._write(
                    pending, ids[half:]
                )
            return set()

        async def attempt() -> None:
            # Computed again each time: the task's revision may have moved on.
            single = self._changes(pending, task_ids)
            if single:
                await self.informer.commit(single)

        try:
            await retry_on_conflict(attempt, "task", ATTEMPTS, RETRY_PAUSE)
        except ConflictError:
            return set(task_ids)
        return set()

    def _changes(self, pending: Pending, task_ids: list[str]) -> list[Change]:
        changes: list[Change] = []
        for task_id in task_ids:
            node_id, status = pending[task_id]
            entry = self.informer.tasks.get(task_id)
            if entry is None or entry.obj.node_id != node_id:
                continue  # deleted, or moved: this agent has no say any more
            if not entry.obj.status.state.can_move_to(status.state):
                continue
            task = entry.obj.model_copy(update={"status": status})
            changes.append(Change.put(task, entry.revision))
        return changes
