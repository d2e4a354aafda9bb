"""Batched task status reports from the agent to the manager.

Runners call ``report`` as often as they like; only the newest status per task
is kept, and a flusher (``shoal.batching``, the same as the dispatcher's)
sends everything pending in one ``UpdateTaskStatus`` call shortly after the
first report of a burst, then at most once per window while reports keep
coming. A lone report is therefore sent within milliseconds, and a burst of
hundreds costs a few calls.

A batch that fails stays pending and goes out again on the next session, so
a manager failover loses no report (the manager ignores reports that do not
move a task forward, so resending is harmless).
"""

from __future__ import annotations

import asyncio

import structlog

from shoal.api.transport import Client
from shoal.batching import Flusher
from shoal.errors import ApiError
from shoal.models import TaskStatus

log = structlog.get_logger(__name__)

RETRY_PAUSE = 1.0
# A batch that failed with these is sent again in the same session.
RETRY_IN_SESSION = frozenset({"DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED"})


class StatusReporter:
    """Collects the newest status per task and sends them in batches."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._pending: dict[str, TaskStatus] = {}
        self._flusher = Flusher()

    def report(self, task_id: str, status: TaskStatus) -> None:
        self._pending[task_id] = status
        self._flusher.poke()

    async def run(self, client: Client, session_id: str) -> None:
        """Flush until cancelled or the session fails (then raises ``ApiError``)."""

        async def flush() -> None:
            if not self._pending:
                return
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
                self._flusher.poke()
                await asyncio.sleep(RETRY_PAUSE)

        self._flusher.poke()  # resend whatever a previous session left pending
        await self._flusher.run(flush)
