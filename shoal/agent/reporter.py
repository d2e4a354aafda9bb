"""Batched task status reports from the agent to the manager.

Runners call ``report`` as often as they like; only the newest status per task
is kept, and a flusher sends everything pending in one ``UpdateTaskStatus``
call: ``COALESCE`` seconds after the first report of a burst (so reports made
in the same moment travel together), and then at most once per
``BATCH_WINDOW`` while reports keep coming. A lone report is therefore sent
within milliseconds, and a burst of hundreds costs a few calls.

A batch that fails stays pending and goes out again on the next session, so
a manager failover loses no report (the manager ignores reports that do not
move a task forward, so resending is harmless).
"""

from __future__ import annotations

import asyncio

import structlog

from shoal.api.transport import Client
from shoal.errors import ApiError
from shoal.models import TaskStatus

log = structlog.get_logger(__name__)

COALESCE = 0.005
RETRY_PAUSE = 1.0
# A batch that failed with these is sent again in the same session.
RETRY_IN_SESSION = frozenset({"DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED"})
BATCH_WINDOW = 0.025


class StatusReporter:
    """Collects the newest status per task and sends them in batches."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._pending: dict[str, TaskStatus] = {}
        self._wake = asyncio.Event()

    def report(self, task_id: str, status: TaskStatus) -> None:
        self._pending[task_id] = status
        self._wake.set()

    async def run(self, client: Client, session_id: str) -> None:
        """Flush until cancelled or the session fails (then raises ``ApiError``)."""
        self._wake.set()  # resend whatever a previous session left pending
        while True:
            await self._wake.wait()
            await asyncio.sleep(COALESCE)
            self._wake.clear()
            if not self._pending:
                continue
            batch, self._pending = self._pending, {}
            updates = [{"taskId": k, "status": v.to_wire()} for k, v in batch.items()]
            try:
                await client.call(
                    "UpdateTaskStatus",
                    {"nodeId": self.node_id, "sessionId": session_id, "updates": updates},
                    timeout=30.0,
                )
            except BaseException as exc:  # failed or cancelled mid-call: outcome unknown
                for task_id, status in batch.items():
                    self._pending.setdefault(task_id, status)
                if not isinstance(exc, ApiError) or exc.code not in RETRY_IN_SESSION:
                    raise
                # A busy manager: keep the session, send again after a pause.
                self._wake.set()
                await asyncio.sleep(RETRY_PAUSE)
                continue
            await asyncio.sleep(BATCH_WINDOW)
