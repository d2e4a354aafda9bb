"""A control plane on the memory store and a virtual clock, for the updater's own tests.

The orchestrator and its updater are the real ones; the store is the memory
backend (first-class, it passes the store conformance suite). What agents
would do is played by ``World.agents``. New tasks are placed at birth as the
manager places them (the real scheduler's ``place_new``) on one node, ``n1``;
what each does is read from its template's command, so a test says what a
revision does by what it runs:

* ``["serve", ...]``: starts and runs (``running`` right away);
* ``["exit-after", "S", ...]``: runs, then exits with code 3 after S seconds;
* ``["succeed-after", "S", ...]``: runs, then exits with code 0 after S seconds;
* ``["never-healthy", ...]``: stays ``starting`` (a health check that never passes);
* ``["ignore-term", ...]``: keeps running ``grace`` seconds after being asked to stop.

Time only moves when a test calls ``advance``; nothing sleeps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shoal.clock import ManualClock
from shoal.manager.rollouts import RolloutControl
from shoal.models import DesiredState, Service, Task, TaskState, TaskStatus
from shoal.models.rollout import UpdateStatus
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.loop import Done, Requeue
from shoal.reconciler.orchestrator import Orchestrator
from shoal.reconciler.rollout import new_revision_status
from shoal.reconciler.scheduler import Scheduler
from shoal.store.memory import MemoryStore
from shoal.store.typed import Change, TypedStore
from tests.reconciler.world import node

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def service_doc(name: str, command: list[str], replicas: int = 5, **spec: Any) -> Service:
    return Service.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "template": {"command": command, "stopGracePeriod": "2s"},
                "restartPolicy": {"delay": "1s"},
                **spec,
            },
        }
    )


@dataclass
class World:
    store: MemoryStore = field(default_factory=MemoryStore)
    clock: ManualClock = field(default_factory=lambda: ManualClock(START))
    informer: Informer = field(init=False)
    orchestrator: Orchestrator = field(init=False)
    # Tasks' stop requests: task id -> when the agent was asked to stop it.
    stop_asked: dict[str, datetime] = field(default_factory=dict)
    # One snapshot per step of ``advance``, for "at no sample" assertions.
    samples: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.informer = Informer(self.store, TypedStore(self.store))
        events = EventRecorder()
        self.orchestrator = Orchestrator(
            self.informer, events, clock=self.clock, placer=Scheduler(self.informer, events)
        )

    @property
    def now(self) -> datetime:
        return self.clock.now()

    async def start(self) -> None:
        await self.informer.start()
        await self.informer.commit([Change.put(node("n1"), 0)])

    async def aclose(self) -> None:
        await self.informer.aclose()

    async def new_leader(self) -> None:
        """Another manager takes over: new informer and orchestrator, same store."""
        await self.informer.aclose()
        self.__post_init__()
        await self.informer.start()

    # ---------------------------------------------------------------- writes

    async def apply(self, service: Service, cause: str = "test") -> Service:
        entry = self.informer.service(service.name)
        current = entry.obj if entry else None
        status = new_revision_status(current, service.spec, cause, self.now)
        if current is not None and status is None:
            status = current.status
        stored = service.model_copy(update={"status": status})
        await self.informer.commit([Change.put(stored, entry.revision if entry else 0)])
        await self.settle()
        return stored

    async def write_status(self, name: str, update: UpdateStatus) -> None:
        entry = self.informer.service(name)
        assert entry is not None and entry.obj.status is not None
        status = entry.obj.status.model_copy(update={"update": update})
        await self.informer.commit(
            [Change.put(entry.obj.model_copy(update={"status": status}), entry.revision)]
        )
        await self.settle()

    # ------------------------------------------------------------------ time

    async def advance(self, seconds: float, step: float = 0.25) -> None:
        """Move the clock in small steps, letting agents and the orchestrator act at each."""
        end = self.now + timedelta(seconds=seconds)
        while self.now < end:
            self.clock.advance(min(step, (end - self.now).total_seconds()))
            await self.settle()
            self.samples.append(self.snapshot())

    async def settle(self, name: str | None = None) -> None:
        """Reconcile and play the agents until nothing changes at this instant."""
        for _ in range(50):
            changed = await self._agents()
            for key in list(self.informer.services) or ([name] if name else []):
                outcome = await self.orchestrator.reconcile(key)
                assert isinstance(outcome, Done | Requeue)
            changed = await self._agents() or changed
            if not changed:
                return
        raise AssertionError("the world did not settle")

    async def _agents(self) -> bool:
        changes = []
        for entry in list(self.informer.all_tasks()):
            task = entry.obj
            new = self._agent_step(task)
            if new is not None:
                changes.append(Change.put(task.model_copy(update={"status": new}), entry.revision))
        if changes:
            await self.informer.commit(changes)
        return bool(changes)

    def _agent_step(self, task: Task) -> TaskStatus | None:
        state = task.status.state
        if state.terminal:
            return None
        kind = task.template.command[0]
        now = self.now
        if task.desired_state == DesiredState.SHUTDOWN:
            if state == TaskState.PENDING:  # never placed: nothing runs
                return None
            asked = self.stop_asked.setdefault(task.id, now)
            if (
                kind == "ignore-term"
                and (now - asked).total_seconds() < task.template.stop_grace_period
            ):
                return None
            return task.status.model_copy(update={"state": TaskState.SHUTDOWN, "timestamp": now})
        if state in (TaskState.PENDING, TaskState.ASSIGNED):
            if kind == "never-healthy":
                return TaskStatus(
                    state=TaskState.STARTING,
                    timestamp=now,
                    started_at=now,
                    health="starting",
                    message="health check has not passed yet",
                )
            return TaskStatus(state=TaskState.RUNNING, timestamp=now, started_at=now, pid=1)
        if kind == "succeed-after" and state == TaskState.RUNNING:
            started = task.status.started_at or now
            if (now - started).total_seconds() >= float(task.template.command[1]):
                return task.status.model_copy(
                    update={"state": TaskState.COMPLETE, "timestamp": now, "exit_code": 0}
                )
        if kind == "exit-after" and state == TaskState.RUNNING:
            started = task.status.started_at or now
            if (now - started).total_seconds() >= float(task.template.command[1]):
                return task.status.model_copy(
                    update={
                        "state": TaskState.FAILED,
                        "timestamp": now,
                        "exit_code": 3,
                        "error": "exit code 3",
                    }
                )
        return None

    def rollouts(self) -> RolloutControl:
        """What ``shoal rollout undo|pause|resume|promote|restart`` calls, on this clock."""
        return RolloutControl(self.informer, self.orchestrator.events, clock=self.clock)

    # ----------------------------------------------------------------- reads

    def service(self, name: str) -> Service:
        entry = self.informer.service(name)
        assert entry is not None
        return entry.obj

    def update(self, name: str) -> UpdateStatus:
        status = self.service(name).status
        assert status is not None and status.update is not None
        return status.update

    def tasks(self, name: str) -> list[Task]:
        return [e.obj for e in self.informer.tasks_of_service(name)]

    def running(self, name: str, command: list[str] | None = None) -> list[Task]:
        return [
            t
            for t in self.tasks(name)
            if t.status.state == TaskState.RUNNING
            and (command is None or t.template.command == command)
        ]

    def _state(self, name: str) -> str | None:
        status = self.service(name).status
        return status.update.state.value if status and status.update else None

    def snapshot(self) -> dict[str, Any]:
        by_service: dict[str, Any] = {}
        for name in self.informer.services:
            tasks = self.tasks(name)
            live = [t for t in tasks if not t.status.state.terminal]
            by_service[name] = {
                "running": Counter(
                    tuple(t.template.command) for t in tasks if t.status.state == TaskState.RUNNING
                ),
                "slots_running": len(
                    {t.slot for t in tasks if t.status.state == TaskState.RUNNING}
                ),
                "live_per_slot": Counter(t.slot for t in live),
                "state": self._state(name),
            }
        return by_service
