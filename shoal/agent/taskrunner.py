"""One task on this node, from assignment to its end, driven by its runtime.

A ``TaskRunner`` owns one task's local life: start it (or adopt it after an
agent restart), report its observed state as it moves forward, wait for it to
exit, stop it when the manager wants it shut down, and finally remove it.
The manager's copy of the task says what is wanted (``desired_state``) and what
was last observed (``status.state``); the runner reconciles the two with what
the runtime actually has:

================================  ===================================================
store says                        the runner
================================  ===================================================
new or pending (not yet placed)   waits: it starts once the scheduler assigns it
assigned, desired running         starts it: accepted → starting → running
accepted or later, not ended,     adopts the runtime's handle and reports running
handle recovered                  (or the exit that happened while the agent was away)
accepted or later, no handle      reports failed: the task is lost on this node
desired shutdown                  stops it (stopSignal, grace, kill) → shutdown
ended (any terminal state)        makes sure nothing of it runs; reports nothing
================================  ===================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from shoal.agent.discovery import NodeDiscovery
from shoal.agent.health import watch
from shoal.agent.ports import PortAllocator
from shoal.agent.taskfiles import TaskFileStore
from shoal.errors import RuntimeBackendError, TaskRejectedError
from shoal.models import DesiredState, Task, TaskState, TaskStatus
from shoal.models.resources import resource_env
from shoal.models.secret import SECRETS_MOUNT
from shoal.models.task import TaskPort
from shoal.runtimes.base import ExitStatus, Observation, Runtime, TaskHandle, TaskLaunch

log = structlog.get_logger(__name__)

Report = Callable[[str, TaskStatus], None]


def _now() -> datetime:
    return datetime.now(UTC)


def launch_for(
    task: Task, node_name: str, ports: tuple[TaskPort, ...] = (), address: str = ""
) -> TaskLaunch:
    slot = task.node_id or node_name if task.slot == 0 else str(task.slot)
    env = {
        "SHOAL_SERVICE": task.service,
        "SHOAL_TASK_ID": task.id,
        "SHOAL_TASK_SLOT": slot,
        "SHOAL_NODE": node_name,
    }
    if address:  # where other nodes reach this one (shoal agent --advertise-address)
        env["SHOAL_NODE_ADDRESS"] = address
    # Ports by name (SHOAL_PORT_HTTP=20417), and PORT for the first, as many servers expect.
    # A container's own ports are its targets: it is told those.
    for mapping, port in zip(task.template.ports, ports, strict=False):
        env[mapping.env_name] = str(port.target or port.port)
    if ports:
        env["PORT"] = str(ports[0].target or ports[0].port)
    if task.job_run is not None:
        env["SHOAL_JOB_RUN"] = str(task.job_run)
    # Which generic resource units the scheduler gave it: SHOAL_RESOURCE_GPU=0,1.
    env.update(resource_env(task.resources))
    return TaskLaunch(
        task_id=task.id,
        service=task.service,
        slot=task.slot,
        template=task.template,
        env=env,
        ports=ports,
    )


def exit_status_message(exit: ExitStatus) -> str:
    return exit.message or (
        f"exited with code {exit.exit_code}" if exit.exit_code is not None else "exited"
    )


class TaskRunner:
    """Runs one task; see the module docstring."""

    def __init__(
        self,
        task: Task,
        runtime: Runtime,
        report: Report,
        node_name: str,
        handle: TaskHandle | None,
        on_start: Callable[[str], None] | None = None,
        on_exit: Callable[[str, str], None] | None = None,
        files: TaskFileStore | None = None,
        file_data: dict[tuple[str, str], bytes] | None = None,
        discovery: NodeDiscovery | None = None,
        ports: PortAllocator | None = None,
        address: str = "",
    ) -> None:
        self.task = task
        self.runtime = runtime
        self.handle = handle
        self._report = report
        self._node_name = node_name
        # What the lifecycle waits for, as flags; ``_wake`` tells it one changed
        # (one future per wait, no asyncio task per event: a node may run thousands).
        self._stopping = False
        self._assigned = False
        self._waiting: asyncio.Future[None] | None = None
        self._running: dict[str, Any] = {}
        self._state = task.status.state
        self._last: TaskStatus | None = None
        # The newest report not yet handed on (see ``report``).
        self._unsent: tuple[TaskState, str, dict[str, object]] | None = None
        self._on_start = on_start or (lambda runtime: None)
        self._on_exit = on_exit or (lambda runtime, outcome: None)
        # Secrets and configs: written just before the start, released at the end;
        # their bytes are kept only until then (shoal.agent.taskfiles).
        self._files = files
        self._file_data = file_data or {}
        # ``discover``: endpoint variables and file, onEndpointsChange (shoal.agent.discovery).
        self._discovery = discovery
        self._restart: str | None = None
        # Ports: picked at the start, kept while the task lives here (shoal.agent.ports).
        self._ports = ports
        self._address = address
        self._note(task)
        self._job: asyncio.Task[None] = asyncio.create_task(self._run(), name=f"task-{task.id[:8]}")

    @property
    def done(self) -> bool:
        """Whether the runner finished: the task ended (or never started) here."""
        return self._job.done()

    def _note(self, task: Task) -> None:
        if task.status.state.order >= TaskState.ASSIGNED.order and not self._assigned:
            self._assigned = True
            self._wake()
        if (
            task.desired_state == DesiredState.SHUTDOWN or task.status.state.terminal
        ) and not self._stopping:
            self._stopping = True
            self._wake()

    def _wake(self, *_: object) -> None:
        """Something the lifecycle may be waiting for happened (``_woken``)."""
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    def _woken(self) -> asyncio.Future[None]:
        """What to await until the next ``_wake`` (a future, not a coroutine: fewer objects
        per waiting task)."""
        self._waiting = asyncio.get_running_loop().create_future()
        return self._waiting

    def update(self, task: Task) -> None:
        self.task = task
        self._note(task)
        if task.desired_state == DesiredState.SHUTDOWN or task.status.state.terminal:
            return
        if (
            self._unsent is None
            and self._last is not None
            and task.status.state.can_move_to(self._state)
        ):
            # The manager has not seen our newest report (lost with a session):
            # say it again. Reports are level-triggered like everything else.
            self._report(task.id, self._last)

    def report(self, state: TaskState, message: str, **fields: object) -> None:
        """Record the task's newest observed state; it is handed to the reporter once
        the runner yields to the loop. States reported in one go (a quick runtime's
        accepted, starting, running) cost one status, the newest, which is all the
        reporter would send of them anyway."""
        if not self._state.can_move_to(state):
            return
        self._state = state
        if self._unsent is None:
            asyncio.get_running_loop().call_soon(self._publish)
        self._unsent = (state, message, fields)

    def _publish(self) -> None:
        if self._unsent is None:
            return
        state, message, fields = self._unsent
        self._unsent = None
        try:
            status = TaskStatus(state=state, timestamp=_now(), message=message, **fields)
        except ValueError as exc:  # a runtime answered something no status can carry
            log.exception("task.status_invalid", task=self.task.id, state=state)
            self._state = TaskState.FAILED  # nothing the runner observes later is sent
            error = f"agent error: {exc}"
            status = TaskStatus(state=TaskState.FAILED, timestamp=_now(), message=error)
        self._last = status
        self._report(self.task.id, status)

    async def _run(self) -> None:
        try:
            await self._lifecycle()
        except asyncio.CancelledError:
            raise  # the agent stops watching; the task (and its files) live on
        except Exception as exc:  # a runtime misbehaved: report it, never crash the agent
            log.exception("task.runner_failed", task=self.task.id)
            self.report(TaskState.FAILED, f"agent error: {exc}", error=str(exc))
        self._file_data = {}
        template = self.task.template
        if self._discovery is not None and template.discover:
            await self._discovery.release(self.task.id)
        if self._ports is not None:
            self._ports.release(self.task.id)
        if self._files is not None and (template.secrets or template.configs):
            await self._files.release(self.task.id)  # the task has ended here: its files go

    async def _lifecycle(self) -> None:
        while self.handle is None and not self._assigned and not self._stopping:
            # Not placed yet (a global task knows its node before the scheduler
            # has checked it fits): nothing to do until it is assigned.
            await self._woken()
        task = self.task
        if self.handle is None:
            if task.status.state.terminal:
                return
            if self._stopping:
                self.report(TaskState.SHUTDOWN, "shut down before it started")
                return
            if task.status.state != TaskState.ASSIGNED:
                self.report(
                    TaskState.FAILED,
                    "task lost: it is not running on this node (agent state was lost)",
                    error="lost",
                )
                return
            if not await self._start():
                return
        else:
            observed = await self.runtime.inspect(self.handle)
            held = self._ports.held(task.id) if self._ports is not None else None
            self._running = await self._running_fields(observed, held or ())
            # With a healthcheck, the probes say when it runs (shoal.agent.health).
            if (
                observed.running
                and task.template.healthcheck is None
                and not task.status.state.terminal
                and not self._stopping
            ):
                self.report(TaskState.RUNNING, "adopted after agent restart", **self._running)
        assert self.handle is not None
        if self._discovery is not None:
            self._discovery.watch(self.task, self.runtime, self.handle, self.restart)
        # Until it exits, the manager wants it stopped, it must restart, or it is unhealthy.
        exited = self.runtime.exited(self.handle)
        exited.add_done_callback(self._wake)
        health = self._watch_health(self.handle)
        if health is not None:
            health.add_done_callback(self._wake)
        try:
            while not (
                exited.done()
                or self._stopping
                or self._restart
                or (health is not None and health.done())
            ):
                await self._woken()
        except BaseException:
            exited.cancel()  # cancelled (the agent stops watching): so is the wait
            raise
        finally:
            if health is not None and not health.done():
                health.cancel()
        if health is not None and health.done() and not exited.done() and not self._stopping:
            reason = health.result()
            template = self.task.template
            await self.runtime.stop(self.handle, template.stop_signal, template.stop_grace_period)
            exit = await exited
            self.report(
                TaskState.FAILED, reason, health="unhealthy", exit_code=exit.exit_code, error=reason
            )
            self._on_exit(self.runtime.name, "failed")
            return
        if exited.done():
            exit = exited.result()
            message = exit_status_message(exit)
            if self._stopping:
                self.report(TaskState.SHUTDOWN, message, exit_code=exit.exit_code)
            elif exit.succeeded:
                self.report(TaskState.COMPLETE, message, exit_code=0)
            else:
                self.report(TaskState.FAILED, message, exit_code=exit.exit_code, error=message)
            self._on_exit(self.runtime.name, "complete" if exit.succeeded else "failed")
            return
        template = self.task.template
        await self.runtime.stop(self.handle, template.stop_signal, template.stop_grace_period)
        exit = await exited
        # Stopped for a restart (onEndpointsChange): a task shut down while it is still
        # wanted is replaced at once by the orchestrator, whatever the restart policy.
        why = f"restarted: {self._restart}" if self._restart and not self._stopping else None
        self.report(
            TaskState.SHUTDOWN,
            f"{why or 'stopped'} ({exit_status_message(exit)})",
            exit_code=exit.exit_code,
        )
        self._on_exit(self.runtime.name, "shutdown")

    async def _start(self) -> bool:
        self.report(TaskState.ACCEPTED, "accepted by the agent")
        healthcheck = self.task.template.healthcheck
        self.report(
            TaskState.STARTING,
            f"starting with runtime {self.runtime.name}",
            health="starting" if healthcheck else None,
        )
        try:
            ports: tuple[TaskPort, ...] = ()
            if self._ports is not None and self.task.template.ports:
                ports = self._ports.allocate(
                    self.task.id, self.task.template.ports, targets=self.runtime.container_fields
                )
            launch = launch_for(self.task, self._node_name, ports, self._address)
            launch = await self._with_files(launch)
            if self._discovery is not None:
                launch = await self._discovery.prepare(self.task, self.runtime, launch)
            self.handle = await self.runtime.start(launch)
        except TaskRejectedError as exc:
            self.report(TaskState.REJECTED, str(exc), error=str(exc))
            return False
        except RuntimeBackendError as exc:
            self.report(TaskState.FAILED, f"start failed: {exc}", error=str(exc))
            return False
        self._on_start(self.runtime.name)
        observed = await self.runtime.inspect(self.handle)
        self._running = await self._running_fields(observed, ports)
        if observed.running and not self._stopping and healthcheck is None:
            self.report(TaskState.RUNNING, "running", **self._running)
        return True

    async def _running_fields(
        self, observed: Observation, ports: tuple[TaskPort, ...]
    ) -> dict[str, Any]:
        """What the ``running`` report says besides the state: pid, start, ports, address."""
        fields: dict[str, Any] = {"pid": observed.pid, "started_at": observed.started_at}
        if ports:
            fields["ports"] = list(ports)
        if self.runtime.container_fields and observed.running and self.handle is not None:
            with contextlib.suppress(RuntimeBackendError):  # e.g. no network at all
                fields["container_address"] = await self.runtime.probe_host(self.handle)
        return fields

    async def _with_files(self, launch: TaskLaunch) -> TaskLaunch:
        """Write the task's secrets and configs and say where they are."""
        template = self.task.template
        if self._files is None or not (template.secrets or template.configs):
            return launch
        owner = self.runtime.file_owner(template)
        files = await self._files.prepare(self.task, self._file_data, owner)
        self._file_data = {}
        if files is None:
            return launch
        env = {"SHOAL_SECRETS_DIR": SECRETS_MOUNT} if self.runtime.container_fields else files.env()
        mounts = tuple((target, str(source)) for target, source in files.mounts)
        return dataclasses.replace(launch, env={**launch.env, **env}, file_mounts=mounts)

    def _watch_health(self, handle: TaskHandle) -> asyncio.Task[str] | None:
        """Probe the task if its template has a healthcheck; the job ends when it is unhealthy."""
        check = self.task.template.healthcheck
        if check is None:
            return None

        def healthy(detail: str) -> None:
            if not self._stopping:
                self.report(
                    TaskState.RUNNING, f"healthy: {detail}", health="healthy", **self._running
                )

        ports = self._running.get("ports") or ()
        # A probe may name a port: where the task listens (a container: its target).
        named = {p.name: p.target or p.port for p in ports}
        return asyncio.create_task(
            watch(check, self.runtime, handle, healthy, named, self._address)
        )

    def restart(self, reason: str) -> None:
        """Stop the task so that the orchestrator replaces it (see the lifecycle's end)."""
        if not self._stopping and self._restart is None:
            log.info("task.restarting", task=self.task.id, reason=reason)
            self._restart = reason
            self._wake()

    async def remove(self) -> None:
        """Stop whatever still runs and release the task's resources."""
        self._stopping = True
        self._wake()
        with contextlib.suppress(asyncio.CancelledError):
            await self._job
        if self.handle is not None:
            template = self.task.template
            await self.runtime.stop(self.handle, template.stop_signal, template.stop_grace_period)
            await self.runtime.remove(self.handle)

    async def aclose(self) -> None:
        """Stop watching the task (agent shutdown); the task itself keeps running."""
        self._job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._job
