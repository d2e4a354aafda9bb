"""``Exec``: run a command inside a running container task (``shoal exec``).

Request: ``task`` (its id, a unique prefix of the id, or its name, as ``shoal
logs`` takes it) and ``command`` (a non-empty list of strings). The answer
streams ``{"stream": "stdout" | "stderr", "data": base64}`` chunks as the
command writes them, then one ``{"exitCode": N}``.

The call is routed like ``Logs``: the dispatcher asks the task's node through
its session (``Dispatcher.request_exec``), the agent runs the command through
its runtime and streams the output back (``PublishExec``). Refusals come
before anything runs: an unknown task is ``NOT_FOUND``; a task on a runtime
without containers, or one that is not running, is ``FAILED_PRECONDITION``; a
node that is not connected is ``UNAVAILABLE``. An error the agent meets
(the engine refused) ends the stream as ``FAILED_PRECONDITION``. When the
caller goes away the agent is told to stop sending.

Only admins may call it (it is not a read: ``shoal.security.authz``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import grpc.aio

from shoal.api.transport import Method, Payload, ServerStream
from shoal.errors import ExecUnsupportedError, ShoalError
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.logstream import find_task
from shoal.models import TaskState
from shoal.reconciler.informer import Informer

MAX_COMMAND_ARGS = 1024
MAX_COMMAND_BYTES = 128 * 1024


class ExecApi:
    """The ``Exec`` method (see the module docstring)."""

    def __init__(
        self, informer: Informer, dispatcher: Dispatcher, runtimes: Mapping[str, bool]
    ) -> None:
        self.informer = informer
        self.dispatcher = dispatcher
        # Runtime name → whether it runs containers (``runtime_catalogue``).
        self.runtimes = runtimes

    def methods(self) -> dict[str, Method]:
        return {"Exec": ServerStream(self.exec)}

    async def exec(
        self, request: Payload, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Payload]:
        task_text, command = request.get("task"), request.get("command")
        if not isinstance(task_text, str) or not task_text:
            raise ValueError("task: name the task (its id, a unique id prefix, or its name)")
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(arg, str) for arg in command)
        ):
            raise ValueError("command: must be a non-empty list of strings")
        if len(command) > MAX_COMMAND_ARGS or sum(len(a) for a in command) > MAX_COMMAND_BYTES:
            raise ValueError("command: too long")
        task = find_task(self.informer, task_text)
        runtime = task.template.runtime
        # A runtime this manager does not load (a plugin on the agents only): the agent decides.
        if self.runtimes.get(runtime, True) is False:
            raise ExecUnsupportedError(
                f"exec needs a container task; this task runs on the {runtime} runtime"
            )
        if task.status.state != TaskState.RUNNING or not task.node_id:
            raise ShoalError(f"task {task.name} is not running (it is {task.status.state.value})")
        subscription = self.dispatcher.request_exec(task.node_id, task.id, list(command))
        try:
            while (item := await subscription.queue.get()) is not None:
                if "error" in item:
                    raise ShoalError(f"exec in task {task.name}: {item['error']}")
                yield item
                if "exitCode" in item:
                    return
            raise ShoalError(f"exec in task {task.name}: the agent ended without an exit code")
        finally:
            self.dispatcher.end_exec(subscription)
