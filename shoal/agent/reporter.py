"""Batched task status reports from the agent to the manager.

Runners call ``report`` as often as they like; only the newest status per task
is kept, and a flusher (``shoal.batching``, the same as the dispatcher's)
sends everything pending in one batch shortly after the first report of a
burst, then at most once per window while reports keep coming. A lone report
is therefore sent within milliseconds, and a burst of hundreds costs a few
batches.

A batch travels on the session stream (``StreamSender``: a ``status``
message, answered on the stream once the manager has written it) or, to a
manager older than that, as an ``UpdateTaskStatus`` call (``CallSender``).

A batch that fails stays pending and goes out again on the next session, so
a manager failover loses no report (the manager ignores reports that do not
move a task forward, so resending is harmless).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Protocol

import structlog

from shoal.api.transport import Client, Duplex, Payload
from shoal.batching import Flusher
from shoal.errors import ApiError
from shoal.models import TaskStatus

log = structlog.get_logger(__name__)

RETRY_PAUSE = 1.0
# How long a batch sent on the stream may wait for the manager's answer.
ANSWER_TIMEOUT = 30.0
# A batch that failed with these is sent again in the same session.
RETRY_IN_SESSION = frozenset({"DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "ABORTED"})


Updates = list[dict[str, object]]


class Sender(Protocol):
    """Sends one batch; returns once the manager has written it, else raises ``ApiError``."""

    async def __call__(self, updates: Updates) -> None: ...


class CallSender:
    """Each batch as an ``UpdateTaskStatus`` call (a manager older than status on the stream)."""

    def __init__(self, client: Client, node_id: str, session_id: str) -> None:
        self.client = client
        self.request = {"nodeId": node_id, "sessionId": session_id}

    async def __call__(self, updates: Updates) -> None:
        await self.client.call("UpdateTaskStatus", {**self.request, "updates": updates}, 30.0)


class StreamSender:
    """Each batch as a ``{"type": "status", "batch", "updates"}`` message on the session
    stream; the manager answers ``{"type": "status", "batch"}`` once it is written, with
    ``"error": {"code", "message"}`` if it could not be (``answered``)."""

    def __init__(self, stream: Duplex) -> None:
        self.stream = stream
        self._batches = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[None]] = {}
        # When the last batch was sent (loop time): a manager that counts batches as
        # heartbeats needs no heartbeat for a period after it.
        self.sent_at = -math.inf

    async def __call__(self, updates: Updates) -> None:
        batch = next(self._batches)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._waiting[batch] = answer
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT):
                await self.stream.send({"type": "status", "batch": batch, "updates": updates})
                self.sent_at = loop.time()
                await answer
        except TimeoutError as exc:
            raise ApiError("DEADLINE_EXCEEDED", f"status batch {batch} was not answered") from exc
        finally:
            self._waiting.pop(batch, None)

    def answered(self, message: Payload) -> None:
        """The manager's answer to a batch (a ``status`` message on the stream)."""
        answer = self._waiting.get(message.get("batch", 0))
        if answer is None or answer.done():
            return  # the batch's sender gave up on it
        error = message.get("error")
        if isinstance(error, dict):
            answer.set_exception(ApiError(str(error.get("code")), str(error.get("message"))))
        else:
            answer.set_result(None)


class StatusReporter:
    """Collects the newest status per task and sends them in batches."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._pending: dict[str, TaskStatus] = {}
        self._flusher = Flusher()

    def report(self, task_id: str, status: TaskStatus) -> None:
        self._pending[task_id] = status
        self._flusher.poke()

    async def run(self, send: Sender) -> None:
        """Flush until cancelled or the session fails (then raises ``ApiError``)."""

        async def flush() -> None:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            updates: Updates = [{"taskId": k, "status": v.to_wire()} for k, v in batch.items()]
            try:
                await send(updates)
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
