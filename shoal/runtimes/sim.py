"""The ``sim`` runtime: tasks that pretend to run, for scale tests and demos.

A sim task does no work; its whole life is a function of when it started and
its ``template.sim`` behaviour (start delay, run forever or exit with a code
after a while, refuse to start). That makes it cheap enough to host thousands
of tasks on many simulated nodes in one process (``shoal agent --sim-nodes``),
while the manager cannot tell them from real ones: they go through the same
sessions, assignments, status reports and restarts.

It still keeps the runtime contract, adoption included: starts, stops and
removals are appended to a small journal in the runtime's state directory, so
a restarted agent recovers its sim tasks (a task that "ran out" while the
agent was away is reported with its exit code, as the process runtime does).
A stop is obeyed at once: the exit code is 128 + the signal's number.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, BinaryIO

import orjson

from shoal.errors import NotFoundError, TaskRejectedError
from shoal.models import RuntimeInfo
from shoal.models.service import SimBehaviour
from shoal.runtimes.base import (
    HISTORY_END,
    ExitStatus,
    LogLine,
    Observation,
    Runtime,
    RuntimeSettings,
    TaskHandle,
    TaskLaunch,
)

JOURNAL = "journal.jsonl"
# What a template without ``sim`` does: run until stopped.
_DEFAULT = SimBehaviour()


@dataclass(slots=True)
class _SimTask:
    task_id: str
    started: float  # wall-clock seconds
    behaviour: SimBehaviour
    stopped: float | None = None
    stop_code: int | None = None
    # Who waits for its exit (``SimRuntime.exited``), and the timer of a task that runs out.
    exits: list[asyncio.Future[ExitStatus]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None

    def exit_at(self) -> float | None:
        if self.stopped is not None:
            return self.stopped
        if self.behaviour.run_for is None:
            return None
        return self.started + self.behaviour.run_for

    def exit(self, now: float) -> ExitStatus | None:
        if self.stopped is not None and self.stop_code is not None:
            signum = self.stop_code - 128
            return ExitStatus(self.stop_code, signum, f"killed by {signal.Signals(signum).name}")
        at = self.exit_at()
        if at is None or now < at:
            return None
        code = self.behaviour.exit_code
        return ExitStatus(code, None, f"exited with code {code}")


class SimRuntime(Runtime):
    """Simulated tasks; see the module docstring."""

    name = "sim"
    marks_history = True

    def __init__(self, settings: RuntimeSettings) -> None:
        super().__init__(settings)
        self._tasks: dict[str, _SimTask] = {}
        self._journal = settings.state_dir / JOURNAL
        self._file: BinaryIO | None = None
        self._dumped: tuple[SimBehaviour, dict[str, Any]] | None = None

    async def describe(self) -> RuntimeInfo:
        return RuntimeInfo(name=self.name, available=True, message="simulated tasks")

    async def start(self, launch: TaskLaunch) -> TaskHandle:
        behaviour = launch.template.sim or _DEFAULT
        if behaviour.reject:
            raise TaskRejectedError(f"sim task {launch.task_id} was told to refuse to start")
        if behaviour.start_delay:
            await asyncio.sleep(behaviour.start_delay)
        task = _SimTask(launch.task_id, time.time(), behaviour)
        self._tasks[task.task_id] = task
        self._append(self._started(task))
        return self._handle(task.task_id)

    def _started(self, task: _SimTask) -> dict[str, Any]:
        """The journal entry of a start (a service's tasks share one behaviour: dumped once)."""
        if self._dumped is None or self._dumped[0] is not task.behaviour:
            self._dumped = (task.behaviour, task.behaviour.model_dump(mode="json"))
        return {"op": "start", "id": task.task_id, "started": task.started, "sim": self._dumped[1]}

    def _handle(self, task_id: str) -> TaskHandle:
        return TaskHandle(task_id=task_id, runtime=self.name, data={})

    def _task(self, handle: TaskHandle) -> _SimTask:
        try:
            return self._tasks[handle.task_id]
        except KeyError:
            raise NotFoundError(f"sim task {handle.task_id} is unknown here") from None

    async def inspect(self, handle: TaskHandle) -> Observation:
        task = self._task(handle)
        exit = task.exit(time.time())
        started = datetime.fromtimestamp(task.started, UTC)
        return Observation(running=exit is None, pid=None, started_at=started, exit=exit)

    async def wait(self, handle: TaskHandle) -> ExitStatus:
        return await self.exited(handle)

    def exited(self, handle: TaskHandle) -> asyncio.Future[ExitStatus]:
        """Resolved by the sim itself when the task is stopped or runs out: no asyncio task."""
        task = self._task(handle)
        future: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        task.exits.append(future)
        future.add_done_callback(partial(self._forget, task))
        self._check(task)
        return future

    def _forget(self, task: _SimTask, future: asyncio.Future[ExitStatus]) -> None:
        """A wait given up (cancelled) is not kept, nor its task's run-out timer for it."""
        if not future.cancelled():
            return
        with contextlib.suppress(ValueError):
            task.exits.remove(future)
        if not task.exits and task.timer is not None:
            task.timer.cancel()
            task.timer = None

    def _check(self, task: _SimTask) -> None:
        """Resolve the waits of a task that has exited; else (it runs out) check again then."""
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        now = time.time()
        exit = task.exit(now)
        if exit is None:
            at = task.exit_at()
            if at is not None and task.exits:
                loop = asyncio.get_running_loop()
                task.timer = loop.call_later(max(0.0, at - now), self._check, task)
            return
        waits, task.exits = task.exits, []
        for future in waits:
            if not future.done():
                future.set_result(exit)

    async def stop(self, handle: TaskHandle, signal: str, grace: float) -> None:
        task = self._task(handle)
        if task.exit(time.time()) is not None:
            return
        signum = _signal_number(signal)
        task.stopped = time.time()
        task.stop_code = 128 + signum
        self._append({"op": "stop", "id": task.task_id, "at": task.stopped, "code": task.stop_code})
        self._check(task)

    async def remove(self, handle: TaskHandle) -> None:
        task = self._tasks.pop(handle.task_id, None)
        if task is not None:
            if task.timer is not None:
                task.timer.cancel()
            self._append({"op": "remove", "id": handle.task_id})

    async def timed_logs(
        self,
        handle: TaskHandle,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: datetime | None = None,
    ) -> AsyncIterator[LogLine]:
        """Two lines, stamped by the sim's own clock: at the start and at the exit."""
        task = self._tasks.get(handle.task_id)
        if task is None:
            return

        def ended(exit: ExitStatus) -> LogLine:
            return LogLine(f"sim task {task.task_id} {exit.message}", _at(task.exit_at()))

        def shown(line: LogLine) -> bool:
            return since is None or line.time is None or line.time >= since

        lines = [LogLine(f"sim task {task.task_id} started", _at(task.started))]
        exit = task.exit(time.time())
        if exit is not None:
            lines.append(ended(exit))
        for line in lines[-tail:] if tail else [] if tail == 0 else lines:
            if shown(line):
                yield line
        if not follow:
            return
        yield HISTORY_END
        if exit is None:  # the start line at once, the exit line when it comes
            line = ended(await self.wait(handle))
            if shown(line):
                yield line

    async def recover(self) -> list[TaskHandle]:
        self._tasks = {}
        try:
            text = self._journal.read_text()
        except FileNotFoundError:
            self._open()  # now, not on the first start: the agent is starting anyway
            return []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash mid-append
            op, task_id = entry.get("op"), entry.get("id")
            if op == "start":
                behaviour = SimBehaviour.from_wire(entry["sim"])
                self._tasks[task_id] = _SimTask(task_id, float(entry["started"]), behaviour)
            elif op == "stop" and task_id in self._tasks:
                self._tasks[task_id].stopped = float(entry["at"])
                self._tasks[task_id].stop_code = int(entry["code"])
            elif op == "remove":
                self._tasks.pop(task_id, None)
        self._rewrite()
        return [self._handle(task_id) for task_id in self._tasks]

    def _append(self, entry: dict[str, Any]) -> None:
        """Add ``entry`` to the journal, written through before the task's state is
        reported (a write call of a line: cheap beside everything else a start costs)."""
        self._open().write(orjson.dumps(entry) + b"\n")

    def _open(self) -> BinaryIO:
        """The journal, open for appending: once, as a node may start thousands of sim tasks."""
        if self._file is None:
            self._journal.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._journal.open("ab", buffering=0)
        return self._file

    async def aclose(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _rewrite(self) -> None:
        """Compact the journal to the tasks that still exist."""
        if self._file is not None:
            self._file.close()
            self._file = None
        tmp = self._journal.with_suffix(".tmp")
        with tmp.open("wb") as journal:
            for task in self._tasks.values():
                journal.write(orjson.dumps(self._started(task)) + b"\n")
                if task.stopped is not None:
                    stop = {"op": "stop", "id": task.task_id, "at": task.stopped}
                    journal.write(orjson.dumps({**stop, "code": task.stop_code}) + b"\n")
        tmp.replace(self._journal)
        self._open()


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def _at(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)
