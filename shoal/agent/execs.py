"""The agent's side of ``shoal exec``: run a command in a task, stream its output back.

The manager asks through the session (``{"type": "exec", "execId", "taskId",
"command"}``); the output goes back on a ``PublishExec`` client stream of its own:
``{"execId", "stream", "data"}`` chunks (base64), then ``{"execId", "exitCode"}``,
or ``{"execId", "error"}`` when the runtime could not run it (a task on a
runtime without containers, an engine error). ``exec-cancel`` stops sending.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import structlog

from shoal.agent.taskrunner import TaskRunner
from shoal.api.transport import Client, Payload
from shoal.errors import ShoalError

log = structlog.get_logger(__name__)


async def exec_messages(
    exec_id: str, runner: TaskRunner | None, command: list[str]
) -> AsyncIterator[Payload]:
    """The ``PublishExec`` messages of one exec (see the module docstring)."""
    yield {"execId": exec_id}
    if runner is None or runner.handle is None:
        yield {"execId": exec_id, "error": "the task is not running on this node"}
        return
    try:
        async for item in runner.runtime.exec_stream(runner.handle, command):
            if isinstance(item, int):
                yield {"execId": exec_id, "exitCode": item}
                return
            stream, data = item
            yield {"execId": exec_id, "stream": stream, "data": base64.b64encode(data).decode()}
    except ShoalError as exc:
        yield {"execId": exec_id, "error": str(exc)}
        return
    yield {"execId": exec_id, "error": "the runtime gave no exit code"}


class ExecJobs:
    """The execs running on this agent, by exec id (so a cancel can stop one)."""

    def __init__(self) -> None:
        self.jobs: dict[str, asyncio.Task[Payload]] = {}

    def start(self, client: Client, message: Payload, runners: dict[str, TaskRunner]) -> None:
        exec_id = str(message["execId"])
        command = [str(arg) for arg in message.get("command") or []]
        runner = runners.get(str(message.get("taskId")))
        job = asyncio.create_task(
            client.client_stream("PublishExec", exec_messages(exec_id, runner, command)),
            name=f"exec-{exec_id}",
        )
        self.jobs[exec_id] = job
        job.add_done_callback(lambda done: self._finished(exec_id, done))

    def _finished(self, exec_id: str, job: asyncio.Task[Payload]) -> None:
        self.jobs.pop(exec_id, None)
        if not job.cancelled() and job.exception() is not None:
            log.warning("agent.exec_failed", exec_id=exec_id, error=str(job.exception()))

    def cancel(self, exec_id: str) -> None:
        job = self.jobs.pop(exec_id, None)
        if job:
            job.cancel()

    def cancel_all(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel()
        self.jobs.clear()
