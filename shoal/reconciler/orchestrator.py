"""The orchestrator: turns each service into the right set of tasks, one slot at a time.

A replicated service has slots ``1..replicas``; a global service has one slot
per eligible node. Each slot has at most one *current* task (desired state
``running``); earlier tasks stay as bounded history. For every slot the
reconcile decides one of:

* no current task → create one: placed at once on the node the scheduler would
  choose (``Scheduler.place_new``: written once, ``assigned``), or ``pending``
  for the scheduler when it fits nowhere now (or no scheduler is given);
* the current task is live but wrong (template changed, node drained, node no
  longer matches the constraints) → shut it down and create its replacement;
* the current task ended → apply the restart policy: restart after the delay
  (doubling for each failure in a row, up to ``MAX_RESTART_DELAY``), or leave
  the slot finished (``condition``/``maxAttempts`` said no);

and slots that no longer exist (scale down, deleted service, node gone for a
global service) are shut down, then deleted once their tasks are terminal.
Which slots with a task of an older template are replaced in a pass, and in
which order, is the rolling updater's decision (``shoal.reconciler.rollout``);
its ``status.update`` goes to the store with the tasks. Jobs are planned by
``shoal.reconciler.jobs`` instead. A service whose ``dependsOn`` does not hold
yet gets no task at all (``shoal.reconciler.gating``).
A pass over a large service yields to the event loop as it goes (``Pacer``),
and its changes go to the store in chunks (``Informer.commit``).
"""

from __future__ import annotations

import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.models import (
    Availability,
    DesiredState,
    Node,
    NodeState,
    Service,
    Task,
    TaskState,
    TaskStatus,
)
from shoal.models.rollout import UpdateState
from shoal.models.service import RestartPolicy
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.gating import DependencyGate
from shoal.reconciler.informer import Entry, Informer
from shoal.reconciler.jobs import JobReconciler
from shoal.reconciler.loop import Controller, Done, Outcome, Requeue
from shoal.reconciler.pacing import Pacer
from shoal.reconciler.placement import node_matches
from shoal.reconciler.reports import Reports
from shoal.reconciler.rollout import RolloutPlan, Updater
from shoal.reconciler.scheduler import Scheduler
from shoal.store.typed import TASKS, Change, Object

# Terminal tasks kept per slot besides the current one.
HISTORY_PER_SLOT = 4
# Restart back-off never waits longer than this.
MAX_RESTART_DELAY = 300.0
# A task that ran at least this long before failing resets the failure streak.
HEALTHY_RUN = 30.0
# A deleted service's tasks: the pass looks whether to yield every this many.
RETIRE_SLICE = 200
# The note (``shoal describe``) of a service held by ``dependsOn``.
HELD_NOTE = "dependsOn"
# Rollout states in which a task starting to run changes nothing the updater decides.
SETTLED = (UpdateState.COMPLETED, UpdateState.ROLLBACK_COMPLETED)


def new_task_id() -> str:
    return secrets.token_hex(12)


@dataclass
class Plan:
    """The changes one reconcile wants, and when it wants to look again."""

    changes: list[Change] = field(default_factory=list)
    wake_after: float | None = None
    # New tasks that replace an ended or lost task of their slot (not updates).
    restarts: int = 0
    # Where in ``changes`` the new tasks are (to place them before the write).
    born: list[int] = field(default_factory=list)

    def wake(self, after: float) -> None:
        self.wake_after = after if self.wake_after is None else min(self.wake_after, after)


@dataclass(frozen=True, slots=True)
class RestartDecision:
    restart: bool
    delay: float = 0.0
    failure_streak: int = 0
    reason: str = ""


def restarts_in_window(policy: RestartPolicy, restarts: list[datetime], now: datetime) -> int:
    """How many of ``restarts`` fall within the policy's window before ``now``."""
    since = now - timedelta(seconds=policy.window)
    return sum(1 for at in restarts if at >= since)


def restart_decision(policy: RestartPolicy, task: Task, now: datetime) -> RestartDecision:
    """Whether (and when) the slot of ``task``, which ended, gets a new task."""
    state = task.status.state
    if state in (TaskState.ORPHANED, TaskState.SHUTDOWN):
        # The node went away or the task was stopped under us: not the task's fault.
        return RestartDecision(True, 0.0, task.failure_streak, f"task {state.value}")
    failed = state in (TaskState.FAILED, TaskState.REJECTED)
    if state == TaskState.COMPLETE and policy.condition != "any":
        return RestartDecision(False, reason=f"completed; restart condition is {policy.condition}")
    if failed and policy.condition == "none":
        return RestartDecision(False, reason="failed; restart condition is none")
    if policy.max_attempts > 0:
        if policy.window > 0:
            restarts = restarts_in_window(policy, task.restarts, now)
        else:
            restarts = task.attempt
        if restarts >= policy.max_attempts:
            return RestartDecision(False, reason=f"gave up after maxAttempts={policy.max_attempts}")
    streak = 0
    if failed:
        ran = 0.0
        if task.status.started_at and task.status.timestamp:
            ran = (task.status.timestamp - task.status.started_at).total_seconds()
        streak = 1 if ran >= HEALTHY_RUN else task.failure_streak + 1
    delay = policy.delay * (2 ** (streak - 1) if streak > 1 else 1)
    return RestartDecision(
        True, min(delay, max(MAX_RESTART_DELAY, policy.delay)), streak, "restart"
    )


class Orchestrator(Controller):
    """Keeps every service's slots filled with the right tasks."""

    name = "orchestrator"
    # Services are independent keys: let slow commits of one overlap work on others.
    workers = 4

    def __init__(
        self,
        informer: Informer,
        events: EventRecorder,
        clock: Clock = SYSTEM_CLOCK,
        reports: Reports | None = None,
        placer: Scheduler | None = None,
    ) -> None:
        self.informer = informer
        # Places new tasks as they are created (None: they are born pending).
        self.placer = placer
        self.events = events
        self.clock = clock
        self.updater = Updater()
        self.jobs = JobReconciler()
        # Why each finished slot is not restarted, for ``shoal describe``.
        self.reports = reports if reports is not None else Reports()
        # Tasks restarted per service since this manager started leading or not
        # (``shoal_service_task_restarts_total``); a deleted service is forgotten.
        self.restarts: Counter[str] = Counter()
        self.gate = DependencyGate(informer)

    def all_keys(self) -> Iterable[str]:
        return set(self.informer.services) | {
            s for s, ids in self.informer.tasks_by_service.items() if ids
        }

    def keys_for(self, old: Object | None, new: Object | None) -> Iterable[str]:
        woken = self.gate.woken_by(new or old)  # services held for this one's dependents
        own = self._keys_for(old, new)
        return [*own, *woken] if woken else own

    def _keys_for(self, old: Object | None, new: Object | None) -> Iterable[str]:
        obj = new or old
        if isinstance(obj, Service):
            return (obj.metadata.name,)
        if isinstance(obj, Task):
            if (
                isinstance(old, Task)
                and isinstance(new, Task)
                and not _matters(old, new, self._rolling(obj.service))
            ):
                return ()
            return (obj.service,)
        if isinstance(obj, Node):
            if isinstance(old, Node) and isinstance(new, Node) and not _node_matters(old, new):
                return ()
            affected = {e.obj.service for e in self.informer.tasks_on_node(obj.id)}
            affected |= {
                name for name, e in self.informer.services.items() if e.obj.spec.mode == "global"
            }
            return affected
        return ()

    def _rolling(self, name: str) -> bool:
        """Whether the service's rollout is under way (its slots finishing move it on)."""
        entry = self.informer.service(name)
        update = entry.obj.status.update if entry is not None and entry.obj.status else None
        return update is not None and update.state not in SETTLED

    async def reconcile(self, key: str) -> Outcome:
        entry = self.informer.service(key)
        tasks = self.informer.tasks_of_service(key)
        plan = Plan()
        now = self.clock.now()
        pace = Pacer()
        held = self.gate.holds(entry.obj) if entry is not None else None
        if entry is None:
            self.gate.release(key)
            self.reports.forget(key)
            self.restarts.pop(key, None)
            # Task by task: no slot is kept, so what never ran goes at once, whatever
            # else its slot holds, and only what runs waits for its agent to stop it.
            for done, task_entry in enumerate(tasks):
                self._retire([task_entry], plan, now, "service deleted")
                if done % RETIRE_SLICE == 0:
                    await pace()
        elif held is not None:
            self._hold(entry.obj, held)
        else:
            self._unhold(entry.obj)
            if entry.obj.spec.is_job:
                self._job(entry, tasks, plan, now)
            elif entry.obj.spec.mode == "global":
                await self._global(entry, tasks, plan, now, pace)
            else:
                await self._replicated(entry, tasks, plan, now, pace)
        if plan.changes:
            born = await self._place(entry, plan, now, pace)
            try:
                await self.informer.commit(plan.changes)
            finally:
                if self.placer is not None and born:
                    self.placer.release(born)
            if plan.restarts:
                self.restarts[key] += plan.restarts
        if plan.wake_after is not None:
            return Requeue(plan.wake_after)
        return Done()

    async def _place(
        self, entry: Entry[Service] | None, plan: Plan, now: datetime, pace: Pacer
    ) -> list[Task]:
        """Give the pass's new tasks their nodes (reserved until ``release``)."""
        if self.placer is None or entry is None or not plan.born:
            return []
        born = [plan.changes[i].obj for i in plan.born]
        tasks = [t for t in born if isinstance(t, Task)]
        placed = await self.placer.place_new(entry.obj, tasks, now, pace)
        for index, task in zip(plan.born, placed, strict=True):
            plan.changes[index] = Change.put(task, 0)
        return placed

    def _unhold(self, service: Service) -> None:
        """Not held (any more); says so once when it was."""
        notes = self.reports.notes(service.name)
        if notes.pop(HELD_NOTE, None) is not None:
            self.reports.set_notes(service.name, notes)
            self.events.record(
                f"service/{service.name}", "DependenciesMet", "dependencies met: creating tasks"
            )

    # ------------------------------------------------------------- services

    def _hold(self, service: Service, reason: str) -> None:
        """No task yet: a dependency does not meet its condition (woken when it changes)."""
        before = self.reports.notes(service.name).get(HELD_NOTE)
        self.reports.set_notes(service.name, {HELD_NOTE: reason})
        if before != reason:
            self.events.record(f"service/{service.name}", "WaitingForDependencies", reason)

    def _rollout(
        self,
        entry: Entry[Service],
        by_key: dict[str, list[Entry[Task]]],
        regular: list[str],
        plan: Plan,
        now: datetime,
    ) -> RolloutPlan | None:
        """The updater's decision for this pass; None when it only rewrote the spec."""
        service = entry.obj
        slots = {key: [e.obj for e in entries] for key, entries in by_key.items()}
        update = self.updater.plan(service, slots, regular, now)
        if update.wake_after is not None:
            plan.wake(update.wake_after)
        if update.spec is not None or update.status is not None:
            changed = service.model_copy(
                update={"spec": update.spec or service.spec, "status": update.status}
            )
            plan.changes.append(Change.put(changed, entry.revision))
            if update.status is not None and update.status.update is not None:
                old = service.status.update if service.status else None
                new = update.status.update
                if old is None or old.state != new.state:
                    self.events.record(f"service/{service.name}", "Rollout", new.message)
        return None if update.spec is not None else update

    def _job(
        self, entry: Entry[Service], tasks: list[Entry[Task]], plan: Plan, now: datetime
    ) -> None:
        """Jobs run to completion: ``shoal.reconciler.jobs`` decides their tasks."""
        service = entry.obj
        eligible = sorted(
            node_id
            for node_id, node_entry in self.informer.nodes.items()
            if node_entry.obj.schedulable
            and node_matches(node_entry.obj, service.spec.template, service.spec.placement)
        )
        job = self.jobs.plan(service, [(e.obj, e.revision) for e in tasks], eligible, now)
        plan.changes.extend(job.changes)
        if job.status is not None:
            changed = service.model_copy(update={"status": job.status})
            plan.changes.append(Change.put(changed, entry.revision))
        for message in job.events:
            self.events.record(f"service/{service.name}", "Job", message)
        if job.wake_after is not None:
            plan.wake(job.wake_after)

    async def _replicated(
        self,
        entry: Entry[Service],
        tasks: list[Entry[Task]],
        plan: Plan,
        now: datetime,
        pace: Pacer,
    ) -> None:
        service = entry.obj
        by_slot: dict[int, list[Entry[Task]]] = defaultdict(list)
        for task_entry in tasks:
            by_slot[task_entry.obj.slot].append(task_entry)
        regular = [str(slot) for slot in range(1, service.spec.replica_count + 1)]
        update = self._rollout(entry, {str(k): v for k, v in by_slot.items()}, regular, plan, now)
        if update is None:
            return
        notes: dict[str, str] = {}
        for slot in range(1, service.spec.replica_count + update.extra_slots + 1):
            self._slot(service, slot, None, by_slot.pop(slot, []), plan, now, notes, update)
            await pace()
        for slot, entries in by_slot.items():
            self._retire(entries, plan, now, f"scaled down (slot {slot})")
            await pace()
        self.reports.set_notes(service.name, notes)

    async def _global(
        self,
        entry: Entry[Service],
        tasks: list[Entry[Task]],
        plan: Plan,
        now: datetime,
        pace: Pacer,
    ) -> None:
        service = entry.obj
        by_node: dict[str, list[Entry[Task]]] = defaultdict(list)
        for task_entry in tasks:
            by_node[task_entry.obj.node_id or ""].append(task_entry)
        eligible = {
            node_id
            for node_id, node_entry in self.informer.nodes.items()
            if node_entry.obj.schedulable
            and node_matches(node_entry.obj, service.spec.template, service.spec.placement)
        }
        update = self._rollout(
            entry,
            {f"node:{k}": v for k, v in by_node.items()},
            [f"node:{k}" for k in sorted(eligible)],
            plan,
            now,
        )
        if update is None:
            return
        notes: dict[str, str] = {}
        for node_id, node_entry in list(self.informer.nodes.items()):
            await pace()
            node = node_entry.obj
            entries = by_node.pop(node_id, [])
            if node_id in eligible:
                self._slot(service, 0, node_id, entries, plan, now, notes, update)
            elif _keeps_tasks(node) and node_matches(
                node, service.spec.template, service.spec.placement
            ):
                continue  # paused, or silent and not yet down: keep what runs, place nothing new
            else:
                self._retire(entries, plan, now, f"node {node_id} is not eligible")
        for node_id, entries in by_node.items():
            self._retire(entries, plan, now, f"node {node_id} is gone")
        self.reports.set_notes(service.name, notes)

    # ---------------------------------------------------------------- slots

    def _slot(
        self,
        service: Service,
        slot: int,
        node_id: str | None,
        entries: list[Entry[Task]],
        plan: Plan,
        now: datetime,
        notes: dict[str, str],
        update: RolloutPlan,
    ) -> None:
        entries.sort(key=lambda e: (e.obj.attempt, e.obj.created_at))
        current = [e for e in entries if e.obj.desired_state == DesiredState.RUNNING]
        # Never more than one current task per slot, but for the start-first overlap.
        overlap = update.keep_beside([e.obj for e in current])
        for extra in current[:-1]:
            if extra.obj.id not in overlap:
                self._shutdown(extra, plan, now, "replaced")
        history = [e.obj for e in entries]
        if not current:
            wait = update.waiting_for_stop(history, now)
            if wait is not None:
                plan.wake(min(wait, 1.0))
                notes[f"node:{node_id}" if slot == 0 else str(slot)] = (
                    "waiting for the old task to stop"
                )
            else:
                previous = entries[-1].obj if entries else None
                # A task replacing an older template's is an update, not a restart.
                restart = previous is None or not update.dirty(previous)
                self._create(service, slot, node_id, previous, 0, plan, now, restart=restart)
        else:
            cur = current[-1]
            task = cur.obj
            if not task.status.state.terminal:
                reason = self._replace_reason(service, task)
                if reason:
                    self._shutdown(cur, plan, now, reason)
                    self._create(service, slot, node_id, task, 0, plan, now, restart=False)
                elif update.dirty(task) and task.slot_key in update.replace:
                    if update.start_first:
                        self._create(service, slot, node_id, task, 0, plan, now, restart=False)
                    else:  # stop-first: the new task starts once this one has stopped
                        self._shutdown(cur, plan, now, "rolling update")
            else:
                decision = restart_decision(service.spec.restart_policy, task, now)
                if not decision.restart:
                    notes[task.slot_key] = decision.reason
                else:
                    ended = task.status.timestamp or task.created_at
                    wait = decision.delay - (now - ended).total_seconds()
                    if wait > 0:
                        plan.wake(wait)
                        notes[task.slot_key] = f"restarting in {wait:.1f}s"
                    else:
                        self._shutdown(cur, plan, now, decision.reason)
                        self._create(
                            service, slot, node_id, task, decision.failure_streak, plan, now
                        )
        self._trim_history(entries, plan)

    def _replace_reason(self, service: Service, task: Task) -> str | None:
        """Why a live task must go at once (a template change is the updater's pace)."""
        if task.node_id is None:
            return None
        node_entry = self.informer.nodes.get(task.node_id)
        if node_entry is None:
            return f"node {task.node_id} was removed"
        node = node_entry.obj
        if node.spec.availability == Availability.DRAIN:
            return f"node {node.id} is draining"
        if not node_matches(node, service.spec.template, service.spec.placement):
            return f"node {node.id} no longer matches the placement"
        return None

    def _create(
        self,
        service: Service,
        slot: int,
        node_id: str | None,
        previous: Task | None,
        failure_streak: int,
        plan: Plan,
        now: datetime,
        restart: bool = True,
    ) -> None:
        policy = service.spec.restart_policy
        restarts: list[datetime] = []
        if previous is not None and restart and policy.window > 0:
            # Only what the window can still count; maxAttempts bounds the list.
            since = now - timedelta(seconds=policy.window)
            restarts = [at for at in previous.restarts if at >= since] + [now]
            restarts = restarts[-max(policy.max_attempts, 1) :]
        if previous is not None and restart:
            plan.restarts += 1
        task = Task(
            id=new_task_id(),
            service=service.name,
            slot=slot,
            node_id=node_id,
            template=service.spec.template,
            service_generation=service.metadata.generation or 0,
            attempt=(previous.attempt + 1) if previous and restart else 0,
            failure_streak=failure_streak,
            restarts=restarts,
            created_at=now,
            status=TaskStatus(state=TaskState.PENDING, timestamp=now, message="waiting for a node"),
        )
        plan.born.append(len(plan.changes))
        plan.changes.append(Change.put(task, 0))

    def _shutdown(self, entry: Entry[Task], plan: Plan, now: datetime, reason: str) -> None:
        task = entry.obj
        update: dict[str, object] = {"desired_state": DesiredState.SHUTDOWN}
        if task.status.state in (TaskState.NEW, TaskState.PENDING):
            # Never reached a node: nobody else will report it stopped.
            update["status"] = TaskStatus(state=TaskState.SHUTDOWN, timestamp=now, message=reason)
        plan.changes.append(Change.put(task.model_copy(update=update), entry.revision))
        if task.desired_state == DesiredState.RUNNING:
            self.events.record(f"service/{task.service}", "TaskShutdown", f"{task.name}: {reason}")

    def _retire(self, entries: list[Entry[Task]], plan: Plan, now: datetime, reason: str) -> None:
        """Shut a slot's tasks down; delete them once all are terminal.

        A task that never reached a node is deleted at once: nobody runs it, so
        there is nothing to stop and nobody to wait for (100,000 pending tasks of
        a deleted service are 100,000 deletions, not a shutdown write and an
        event each first)."""
        if all(e.obj.status.state.terminal or _never_placed(e.obj) for e in entries):
            for entry in entries:
                plan.changes.append(Change.delete(TASKS + entry.obj.id, entry.revision))
            return
        for entry in entries:
            if entry.obj.desired_state == DesiredState.RUNNING:
                self._shutdown(entry, plan, now, reason)

    def _trim_history(self, entries: list[Entry[Task]], plan: Plan) -> None:
        old = [
            e
            for e in entries
            if e.obj.desired_state == DesiredState.SHUTDOWN and e.obj.status.state.terminal
        ]
        for entry in old[:-HISTORY_PER_SLOT] if len(old) > HISTORY_PER_SLOT else []:
            plan.changes.append(Change.delete(TASKS + entry.obj.id, entry.revision))


def _matters(old: Task, new: Task, rolling: bool) -> bool:
    """Whether a task change can change what the orchestrator decides.

    The scheduler giving a pending task its node does not: it only picks nodes
    that are ready, active and match the placement, so the orchestrator would
    find nothing to replace. Skipping it spares a full pass over the service for
    every scheduling chunk (40 passes over 1,000 slots for 10,000 new tasks); a
    node that is drained meanwhile is handled by the node's own change.

    A task that starts running matters only to a rollout under way (``rolling``):
    it may finish its slot. Otherwise, waking a pass over the whole service for
    every status batch of a large apply made the passes the manager's main load
    (a pass per service per batch, each over every slot).
    """
    if old.node_id is None and new.node_id is not None and not new.status.state.terminal:
        return old.desired_state != new.desired_state
    return (
        old.desired_state != new.desired_state
        or old.status.state.terminal != new.status.state.terminal
        or old.node_id != new.node_id
        # A task that starts running (healthy) moves a rolling update on.
        or (
            rolling
            and (new.status.state == TaskState.RUNNING) != (old.status.state == TaskState.RUNNING)
        )
    )


def _never_placed(task: Task) -> bool:
    return task.status.state in (TaskState.NEW, TaskState.PENDING)


def _keeps_tasks(node: Node) -> bool:
    """A paused node, or a silent one the node monitor has not declared down (``unknown``)."""
    if node.spec.availability == Availability.DRAIN:
        return False
    return node.status.state == NodeState.UNKNOWN or (
        node.spec.availability == Availability.PAUSE and node.status.state == NodeState.READY
    )


def _node_matters(old: Node, new: Node) -> bool:
    return (
        old.spec != new.spec
        or old.status.state != new.status.state
        or old.description != new.description
    )
