"""The runtime interface: how an agent runs a task (close to Nomad's task driver).

Built-in runtimes live beside this module; third-party ones register a
``Runtime`` subclass under the ``shoal.runtimes`` entry-point group (see
``shoal.runtimes.registry``). ``tests/runtimes/test_conformance.py`` runs one
suite against every runtime.

Lifecycle
---------
The agent constructs a runtime once with ``RuntimeSettings`` and calls:

``describe()``
    Whether the runtime works on this node right now (``RuntimeInfo``). Cheap;
    called at start and periodically. Must not raise.
``start(launch)``
    Start the task and return a ``TaskHandle`` as soon as it was launched (not
    when it is healthy). The handle is JSON-able and the runtime must be able to
    find the task again from it after the agent restarts. Raises
    ``TaskRejectedError`` when the task can never start here as specified (for
    example the executable does not exist) and ``RuntimeBackendError`` for
    anything that may work on a retry.
``inspect(handle)``
    The current ``Observation``: running, or exited with an ``ExitStatus``.
``wait(handle)``
    Return the ``ExitStatus`` once the task has exited.
``exited(handle)``
    The same as a future, which the caller cancels when it stops caring. Given:
    ``wait`` in an asyncio task of its own; a runtime that learns of its tasks'
    exits by itself (sim) resolves a plain future instead and spares the agent
    a task per task.
``stop(handle, signal, grace)``
    Send ``signal`` to everything the task runs, wait up to ``grace`` seconds,
    then kill it. Returns once nothing of the task runs. Stopping an exited
    task is a no-op.
``remove(handle)``
    Release what the task left behind (records, log files). Only after ``stop``.
``timed_logs(handle, follow=..., tail=..., since=...)``
    Async iterator of output lines (stdout and stderr) as ``LogLine``: each with
    the time it was written, as near the source as the runtime can tell (the
    engine's stamp for containers, the virtual start and exit for sim), and only
    those at or after ``since``. With ``follow`` it keeps yielding until the task
    exits and its output is drained; a runtime whose ``marks_history`` is True
    then yields ``HISTORY_END`` once, between the output there was when the call
    began and the lines written after (``shoal logs -f`` sorts the history of
    several tasks and needs to know where it ends).
``logs(handle, follow=..., tail=...)``
    The same lines' text only (given: from ``timed_logs``).
``recover()``
    After an agent restart: the handles of every task this runtime started on
    this node and has not removed, running or exited, so the agent can adopt
    the ones still assigned and clean up the rest. Never returns tasks started
    by somebody else.
``aclose()``
    Release the runtime's own resources; running tasks keep running.

Health probes (optional hooks with defaults that suit host processes)
``exec(handle, command, timeout)``
    Run ``command`` beside the task and return its ``ExecResult``; raise
    ``TimeoutError`` after ``timeout`` seconds. Default: a process on the node.
    Container runtimes run it inside the container.
``exec_stream(handle, command)``
    Run ``command`` inside the task for ``shoal exec``: yields ``("stdout" |
    "stderr", bytes)`` chunks as the command writes them, then its exit code
    (an ``int``) last. Default: raise ``ExecUnsupportedError`` (only container
    runtimes have an inside to run it in).
``probe_host(handle)``
    The address an ``http`` or ``tcp`` probe connects to. Default ``127.0.0.1``;
    container runtimes answer the container's address.

Service discovery (optional hooks; ``shoal.agent.discovery``)
``dns_gateway()``
    The address on this node that the runtime's tasks reach the node at, when it is
    not the node's own (a container engine's bridge gateway), else None (default:
    tasks share the node's network and use the node's DNS listener).
``use_dns(server)``
    From now on, tasks started get ``server`` (on port 53) as their name server and
    the ``shoal`` search domains. Default: nothing to do.
``signal(handle, signal)``
    Send ``signal`` to the task's own process (not to a wrapper around it), for
    ``onEndpointsChange: signal:NAME``; a task that is not running is not an error.
    Default: ``RuntimeBackendError`` (the runtime cannot).

Which template fields a runtime accepts is decided at apply time by the models
(``shoal.models.container``), from the runtime's own declaration
``container_fields``: container-only fields (image, ports, mounts, ...) are
refused for a runtime that does not take them, so a runtime never receives a
field it cannot honour. A plugin that runs containers sets it to True.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from shoal.errors import ExecUnsupportedError, RuntimeBackendError
from shoal.models import RuntimeInfo, TaskTemplate
from shoal.models.task import TaskPort


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """What every runtime gets from the agent."""

    # A directory the runtime owns on this node: records, logs.
    state_dir: Path
    node_name: str
    # Runtime-specific options (``--runtime-opt`` style); unknown keys are ignored.
    options: dict[str, str] = field(default_factory=dict)
    # Rotate a task's log once it exceeds this many bytes, keeping ``log_files`` old ones.
    log_max_bytes: int = 10 * 1024 * 1024
    log_files: int = 3


@dataclass(frozen=True, slots=True)
class TaskLaunch:
    """Everything needed to start one task."""

    task_id: str
    service: str
    slot: int
    template: TaskTemplate
    # The complete environment to add, SHOAL_* variables included.
    env: dict[str, str]
    # The task's secrets and configs, already written on the node by the agent
    # (shoal.agent.taskfiles): (path in a container, path on the node). Container
    # runtimes bind each read-only; processes find them through SHOAL_SECRETS_DIR
    # and SHOAL_CONFIGS_DIR in ``env``.
    file_mounts: tuple[tuple[str, str], ...] = ()
    # ``template.ports`` with the agent's choices filled in (shoal.agent.ports):
    # container runtimes publish ``port`` on the node to ``target`` in the container;
    # a process finds its ports in ``env`` (SHOAL_PORT_<NAME>, PORT).
    ports: tuple[TaskPort, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskHandle:
    """How a runtime finds a task again. ``data`` is runtime-specific and JSON-able."""

    task_id: str
    runtime: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"taskId": self.task_id, "runtime": self.runtime, "data": self.data}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TaskHandle:
        return cls(task_id=raw["taskId"], runtime=raw["runtime"], data=dict(raw["data"]))


@dataclass(frozen=True, slots=True)
class ExitStatus:
    # None when the exit code could not be known (for example the task exited
    # while the agent was restarting and nothing recorded it).
    exit_code: int | None
    signal: int | None = None
    message: str = ""
    # The kernel's OOM killer ended it (container runtimes with a memory limit).
    oom_killed: bool = False

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True, slots=True)
class Observation:
    running: bool
    pid: int | None = None
    started_at: datetime | None = None
    exit: ExitStatus | None = None


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a task's output and when it was written (None: not known)."""

    text: str
    time: datetime | None = None
    # Not a line: where a followed log's history ends (``HISTORY_END``).
    history_end: bool = False


HISTORY_END = LogLine("", None, history_end=True)


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    output: str


class Runtime(abc.ABC):
    """One way of running tasks. See the module docstring for the contract."""

    name: ClassVar[str]
    #: Whether specs for this runtime take the container fields (image, ports,
    #: mounts, ...: ``shoal.models.container.CONTAINER_FIELDS``) and need an image.
    container_fields: ClassVar[bool] = False
    #: Whether a followed ``timed_logs`` yields ``HISTORY_END`` (see the module docstring).
    marks_history: ClassVar[bool] = False

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    async def describe(self) -> RuntimeInfo: ...

    @abc.abstractmethod
    async def start(self, launch: TaskLaunch) -> TaskHandle: ...

    @abc.abstractmethod
    async def inspect(self, handle: TaskHandle) -> Observation: ...

    @abc.abstractmethod
    async def wait(self, handle: TaskHandle) -> ExitStatus: ...

    def exited(self, handle: TaskHandle) -> asyncio.Future[ExitStatus]:
        """A future of ``wait``'s answer; see the module docstring."""
        return asyncio.ensure_future(self.wait(handle))

    @abc.abstractmethod
    async def stop(self, handle: TaskHandle, signal: str, grace: float) -> None: ...

    @abc.abstractmethod
    async def remove(self, handle: TaskHandle) -> None: ...

    @abc.abstractmethod
    def timed_logs(
        self,
        handle: TaskHandle,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: datetime | None = None,
    ) -> AsyncIterator[LogLine]: ...

    async def logs(
        self, handle: TaskHandle, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[str]:
        """The text of ``timed_logs``' lines."""
        async for line in self.timed_logs(handle, follow=follow, tail=tail):
            if not line.history_end:
                yield line.text

    @abc.abstractmethod
    async def recover(self) -> list[TaskHandle]: ...

    async def aclose(self) -> None:  # optional hook, default does nothing
        return None

    async def exec(self, handle: TaskHandle, command: list[str], timeout: float) -> ExecResult:
        """Run ``command`` on the node (health probes); see the module docstring."""
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout):
                output, _ = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise
        return ExecResult(process.returncode or 0, output.decode(errors="replace"))

    def exec_stream(
        self, handle: TaskHandle, command: list[str]
    ) -> AsyncIterator[tuple[str, bytes] | int]:
        """Run ``command`` inside the task (``shoal exec``); see the module docstring."""
        raise ExecUnsupportedError(
            f"exec needs a container task; this task runs on the {self.name} runtime"
        )

    def file_owner(self, template: TaskTemplate) -> tuple[int, int]:
        """Who owns a task's secret and config files by default: ``(uid, gid)``.

        Default: root in the task's world when the agent is root (containers),
        else the agent's own user. The process runtime answers the task's user.
        """
        if os.geteuid() == 0:
            return (0, 0)
        return (os.geteuid(), os.getegid())

    async def probe_host(self, handle: TaskHandle) -> str:
        """Where ``http`` and ``tcp`` probes connect; see the module docstring."""
        return "127.0.0.1"

    async def dns_gateway(self) -> str | None:
        """Where this runtime's tasks reach the node, if not at its own addresses."""
        return None

    async def dns_subnets(self) -> list[str]:
        """The subnets this runtime's tasks have addresses in, behind ``dns_gateway``
        (whom the node's DNS listener on that gateway answers)."""
        return []

    def use_dns(self, server: str) -> None:  # noqa: B027 - optional hook
        """Give tasks started from now on ``server`` as their name server."""

    async def signal(self, handle: TaskHandle, signal: str) -> None:
        """Send ``signal`` to the task's process; see the module docstring."""
        raise RuntimeBackendError(f"the {self.name} runtime cannot signal its tasks")
