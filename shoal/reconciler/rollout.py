"""The slot updater: how a template change reaches a service's slots, a few at a time.

Swarmkit's updater is a set of goroutines that remember in memory which tasks
they created; shoal's is level-triggered like every other reconciler. Each
orchestrator pass over a service calls ``Updater.plan`` with the service and
its tasks grouped by slot, and gets back which slots may start their
replacement now, the ``status.update`` to persist, and when to look again.
Everything the decision needs is in the store (the service's ``status.update``
and ``status.revisions``, the tasks' templates, states and timestamps), so a
new leader carries on where the last one stopped: a paused update stays
paused, counted failures stay counted, and slots never gain a second task
outside the planned start-first overlap because the slots themselves say what
is already under way.

A slot is *dirty* when its live task runs another template than the spec's
(or was created before a ``rollout restart``). Each slot is, at any moment:

* **done**: its current task runs the target template, is ``running`` (which
  means healthy when the template has a health check) and has been for
  ``monitor``; no older task of the slot is still alive;
* **in flight**: its replacement has started but is not done (a new task
  starting or in its monitor window, an old one still stopping, a failed new
  task waiting for its restart);
* **waiting**: still on its old task, not yet picked.

At most ``parallelism`` slots are in flight (0: all at once); after a slot
finishes, the next one waits ``delay``. ``stop-first`` shuts the old task
down and starts the new one once the old has stopped (so a host port is free
again); ``start-first`` starts the new task beside the old one and shuts the
old one down once the new one runs. A *failure* is a task of the target
template, created by this rollout, that fails, is rejected or exits before it
ran for ``monitor``; each counts once. When failures exceed
``maxFailureRatio`` of the slots, ``failureAction`` applies: ``pause``,
``continue``, or ``rollback`` (the spec goes back to the previous revision and
the rollback proceeds with ``spec.rollback``; a rollback that fails pauses and
is never rolled back). ``progressDeadline`` bounds the time without any slot
finishing: past it the update fails at once, whatever the ratio, which is the
timeout Swarm lacks (an update whose new task never becomes healthy would
otherwise wait forever).

Canaries (``update.canary: N``, replicated services): first N extra slots run
the new template beside the untouched old ones; once all are done the state is
``awaiting_promotion`` until ``shoal rollout promote`` (or at once with
``autoPromote``); then the regular slots are replaced as usual, and the canary
slots are retired as the last regular slots finish.

All functions here are pure: they take ``now`` and return decisions, which is
what makes the updater testable on a virtual clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shoal.models import Service, Task, TaskState
from shoal.models.rollout import RollbackConfig, UpdateConfig, UpdateState, UpdateStatus
from shoal.models.service import Revision, ServiceSpec, ServiceStatus, TaskTemplate
from shoal.models.task import DesiredState

# How long a stop-first replacement waits for its old task to stop before it
# starts anyway (Swarm's defaultOldTaskTimeout).
OLD_TASK_TIMEOUT = 60.0
# Task states that count as a failure of a new task (``shutdown`` is our own doing).
FAILED_STATES = (TaskState.FAILED, TaskState.REJECTED, TaskState.COMPLETE)
ACTIVE = (UpdateState.UPDATING, UpdateState.ROLLBACK_STARTED)


# ------------------------------------------------------------------ revisions


def new_revision_status(
    current: Service | None, spec: ServiceSpec, cause: str, now: datetime
) -> ServiceStatus | None:
    """The status an ``apply`` of ``spec`` stores, or None when it keeps the current one.

    A new service starts at revision 1 with no rollout to follow; a template
    change is a new revision (the last ``revisionHistoryLimit`` are kept) and
    starts an update that supersedes any update under way.
    """
    if current is None:
        first = Revision(number=1, template=spec.template, created_at=now, cause=cause)
        return ServiceStatus(revision=1, revisions=[first])
    status = current.status or ServiceStatus()
    if spec.template == current.spec.template:
        if status.revisions and len(status.revisions) > spec.revision_history_limit:
            return status.model_copy(
                update={"revisions": _trim(status.revisions, spec.revision_history_limit)}
            )
        return None
    previous = status.revision
    if spec.is_job:
        # A job has no rolling update: a new template is simply its next run's.
        number = max([r.number for r in status.revisions] + [previous or 0]) + 1
        revisions = [
            *status.revisions,
            Revision(number=number, template=spec.template, created_at=now, cause=cause),
        ]
        return status.model_copy(
            update={"revision": number, "revisions": _trim(revisions, spec.revision_history_limit)}
        )
    number = max([r.number for r in status.revisions] + [previous or 0]) + 1
    revisions = [
        *status.revisions,
        Revision(number=number, template=spec.template, created_at=now, cause=cause),
    ]
    update = UpdateStatus(
        state=UpdateState.UPDATING,
        revision=number,
        previous_revision=previous,
        message=f"updating to revision {number}",
        started_at=now,
        progress_at=now,
    )
    return status.model_copy(
        update={
            "revision": number,
            "revisions": _trim(revisions, spec.revision_history_limit),
            "update": update,
        }
    )


def _trim(revisions: list[Revision], limit: int) -> list[Revision]:
    return sorted(revisions, key=lambda r: r.number)[-limit:]


def find_revision(status: ServiceStatus, number: int) -> Revision | None:
    return next((r for r in status.revisions if r.number == number), None)


def rollback_to(
    service: Service, number: int, now: datetime, why: str
) -> tuple[TaskTemplate, ServiceStatus]:
    """The template and status that start a rollback of ``service`` to revision ``number``.

    Raises ``LookupError`` if that revision is no longer kept.
    """
    status = service.status or ServiceStatus()
    revision = find_revision(status, number)
    if revision is None:
        kept = ", ".join(str(r.number) for r in status.revisions) or "none"
        raise LookupError(f"revision {number} is not kept (kept: {kept})")
    update = UpdateStatus(
        state=UpdateState.ROLLBACK_STARTED,
        revision=number,
        previous_revision=status.revision,
        message=why,
        started_at=now,
        progress_at=now,
    )
    return revision.template, status.model_copy(update={"revision": number, "update": update})


# -------------------------------------------------------------------- updater


@dataclass
class SlotView:
    """One slot's tasks, oldest first, and what the updater made of them."""

    key: str
    tasks: list[Task]
    phase: str = "waiting"  # done | in_flight | waiting
    # The task that decides the phase (the newest one), for messages.
    newest: Task | None = None


@dataclass
class RolloutPlan:
    """What one pass over a service should do about its rollout."""

    target: TaskTemplate
    order: str = "stop-first"
    # Dirty slots that may start their replacement in this pass.
    replace: set[str] = field(default_factory=set)
    # Slots beyond ``replicas`` that must exist now (canaries).
    extra_slots: int = 0
    # The status to persist (None: unchanged).
    status: ServiceStatus | None = None
    # A rollback rewrote the template: persist the spec and do nothing else this pass.
    spec: ServiceSpec | None = None
    wake_after: float | None = None
    restarted_at: datetime | None = None
    tracking: bool = False

    def wake(self, after: float) -> None:
        after = max(after, 0.0)
        self.wake_after = after if self.wake_after is None else min(self.wake_after, after)

    def dirty(self, task: Task) -> bool:
        """Whether ``task`` is not what the slot should run."""
        if task.template != self.target:
            return True
        return self.restarted_at is not None and task.created_at < self.restarted_at

    @property
    def start_first(self) -> bool:
        return self.order == "start-first"

    def keep_beside(self, current: Sequence[Task]) -> set[str]:
        """Older current tasks of a slot to keep running: the start-first overlap.

        The old task stays until the newest one, of the target template, runs.
        """
        if len(current) < 2:
            return set()
        newest = current[-1]
        if self.dirty(newest) or newest.status.state == TaskState.RUNNING:
            return set()
        return {t.id for t in current[:-1] if self.dirty(t) and not t.status.state.terminal}

    def waiting_for_stop(self, tasks: Iterable[Task], now: datetime) -> float | None:
        """Seconds to wait before a stop-first slot may start its new task, or None."""
        for task in tasks:
            if (
                task.desired_state == DesiredState.SHUTDOWN
                and not task.status.state.terminal
                and task.status.state not in (TaskState.NEW, TaskState.PENDING)
                and self.dirty(task)
            ):
                since = task.status.timestamp or task.created_at
                left = OLD_TASK_TIMEOUT + task.template.stop_grace_period
                left -= (now - since).total_seconds()
                if left > 0:
                    return left
        return None


class Updater:
    """Decides each pass of a service's rollout (see the module docstring)."""

    def plan(
        self,
        service: Service,
        slots: Mapping[str, Sequence[Task]],
        regular: Sequence[str],
        now: datetime,
    ) -> RolloutPlan:
        """``slots``: every slot key of the service → its tasks; ``regular``: the keys
        the spec wants (1..replicas, or one per eligible node), in update order."""
        status = service.status
        update = status.update if status else None
        spec = service.spec
        target = spec.template
        result = RolloutPlan(target=target)
        if update is None or status is None:
            # Not followed (a service from before rollouts): replace everything now.
            result.replace = set(slots)
            return result
        result.restarted_at = update.restarted_at
        result.tracking = True
        config: UpdateConfig | RollbackConfig = (
            spec.rollback_config if update.state.rolling_back else spec.update_config
        )
        result.order = config.order
        canary = 0
        if isinstance(config, UpdateConfig) and spec.mode == "replicated":
            canary = config.canary
        regular_keys = list(regular)
        canary_keys = [str(spec.replica_count + i) for i in range(1, canary + 1)]
        views = {
            key: self._view(key, slots.get(key, ()), result, config.monitor, now)
            for key in [*regular_keys, *canary_keys]
        }
        done = [k for k in regular_keys if views[k].phase == "done"]
        in_flight = [k for k in regular_keys if views[k].phase == "in_flight"]
        waiting = [k for k in regular_keys if views[k].phase == "waiting"]
        new = update.model_copy(update={"updated": len(done), "total": len(regular_keys)})
        if len(done) > update.updated:
            new = new.model_copy(update={"progress_at": now, "batch_done_at": now})

        if new.state in ACTIVE:
            new = self._count_failures(new, service, slots, regular_keys, canary_keys, config, now)
        if new.state in ACTIVE and new.state == update.state:
            new = self._check_deadline(new, views, config, now, result)

        if update.state == UpdateState.UPDATING and new.state == UpdateState.ROLLBACK_STARTED:
            new = self._start_rollback(service, new, now, result)
            if result.spec is not None:
                result.status = status.model_copy(update={"update": new, "revision": new.revision})
                return result
        # After promotion the canary slots retire as the last regular slots finish.
        after_promotion = min(canary, len(in_flight) + len(waiting)) if canary else 0
        if new.state in ACTIVE:
            canaries_open = canary and not new.promoted
            if canaries_open:
                result.extra_slots = canary
                if all(views[k].phase == "done" for k in canary_keys):
                    if isinstance(config, UpdateConfig) and config.auto_promote:
                        new = new.model_copy(
                            update={"promoted": True, "message": "canaries healthy: promoted"}
                        )
                    else:
                        new = new.model_copy(
                            update={
                                "state": UpdateState.AWAITING_PROMOTION,
                                "message": f"{canary} canary task(s) healthy: "
                                "waiting for `shoal rollout promote`",
                            }
                        )
            if not canaries_open or new.promoted:
                result.extra_slots = after_promotion
                self._pick(new, config, in_flight, waiting, now, result)
            if (
                not waiting
                and not in_flight
                and result.extra_slots == 0
                and not any(_alive(slots.get(k, ())) for k in canary_keys)
            ):
                final = (
                    UpdateState.ROLLBACK_COMPLETED
                    if new.state == UpdateState.ROLLBACK_STARTED
                    else UpdateState.COMPLETED
                )
                word = "rollback" if final == UpdateState.ROLLBACK_COMPLETED else "update"
                new = new.model_copy(
                    update={
                        "state": final,
                        "completed_at": now,
                        "message": f"{word} completed: revision {new.revision} on "
                        f"{len(done)}/{len(regular_keys)} slot(s)",
                    }
                )
        elif new.state == UpdateState.AWAITING_PROMOTION:
            result.extra_slots = canary
        elif new.state.paused:
            # Keep what runs, canaries included.
            result.extra_slots = after_promotion if new.promoted else canary
        else:
            # Completed: a task of another template showing up later (an agent
            # that comes back with an old one) is simply replaced.
            result.replace = set(waiting)
        if new != update:
            result.status = status.model_copy(update={"update": new})
        return result

    # ----------------------------------------------------------------- parts

    def _view(
        self, key: str, tasks: Sequence[Task], plan: RolloutPlan, monitor: float, now: datetime
    ) -> SlotView:
        ordered = sorted(tasks, key=lambda t: (t.attempt, t.created_at))
        view = SlotView(key, ordered)
        if not ordered:
            view.phase = "in_flight"  # about to be created with the target template
            return view
        current = [t for t in ordered if t.desired_state == DesiredState.RUNNING]
        newest = current[-1] if current else ordered[-1]
        view.newest = newest
        old_alive = any(plan.dirty(t) and not t.status.state.terminal for t in ordered)
        if plan.dirty(newest):
            # No current task: the old one is stopping (stop-first) or has
            # stopped, and the orchestrator starts the new one next.
            view.phase = "waiting" if current else "in_flight"
            return view
        if old_alive:
            view.phase = "in_flight"
            return view
        state = newest.status.state
        if state == TaskState.RUNNING and newest.desired_state == DesiredState.RUNNING:
            since = newest.status.timestamp or newest.created_at
            left = monitor - (now - since).total_seconds()
            if left <= 0:
                view.phase = "done"
                return view
            plan.wake(left)
        view.phase = "in_flight"
        return view

    def _count_failures(
        self,
        update: UpdateStatus,
        service: Service,
        slots: Mapping[str, Sequence[Task]],
        regular: list[str],
        canaries: list[str],
        config: UpdateConfig | RollbackConfig,
        now: datetime,
    ) -> UpdateStatus:
        target = service.spec.template
        failed = list(update.failed_tasks)
        first_new: Task | None = None
        for key in [*regular, *canaries]:
            for task in slots.get(key, ()):
                if (
                    task.template != target
                    or task.created_at < update.started_at
                    or task.status.state not in FAILED_STATES
                    or task.id in failed
                    or (
                        update.failures_since is not None
                        and (task.status.timestamp or task.created_at) < update.failures_since
                    )
                ):
                    continue
                ran = 0.0
                if task.status.started_at and task.status.timestamp:
                    ran = (task.status.timestamp - task.status.started_at).total_seconds()
                if task.status.started_at is not None and ran >= config.monitor:
                    continue  # it ran its monitor window: not this update's failure
                failed.append(task.id)
                first_new = first_new or task
        if first_new is None:
            return update
        update = update.model_copy(update={"failed_tasks": failed[-1000:]})
        counted = len(failed)
        total = max(len(regular) + len(canaries), 1)
        if counted / total <= config.max_failure_ratio:
            return update
        return self._fail(update, config, f"task {first_new.name} {_why(first_new)}", now)

    def _check_deadline(
        self,
        update: UpdateStatus,
        views: dict[str, SlotView],
        config: UpdateConfig | RollbackConfig,
        now: datetime,
        plan: RolloutPlan,
    ) -> UpdateStatus:
        deadline = config.progress_deadline
        stuck = [v for v in views.values() if v.phase == "in_flight"]
        if deadline is None or not stuck:
            return update
        since = update.progress_at or update.started_at
        left = deadline - (now - since).total_seconds()
        if left > 0:
            plan.wake(left)
            return update
        view = stuck[0]
        what = f"slot {view.key}"
        if view.newest is not None:
            task = view.newest
            what = f"task {task.name} is {task.status.state.value}"
            if task.status.message:
                what += f" ({task.status.message})"
        return self._fail(
            update,
            config,
            f"no slot finished its update within progressDeadline {_seconds(deadline)}: {what}",
            now,
            force=True,
        )

    def _fail(
        self,
        update: UpdateStatus,
        config: UpdateConfig | RollbackConfig,
        why: str,
        now: datetime,
        force: bool = False,
    ) -> UpdateStatus:
        action = config.failure_action
        if action == "continue" and not force:
            return update.model_copy(update={"message": f"continuing despite failure: {why}"})
        if update.state == UpdateState.ROLLBACK_STARTED:
            return update.model_copy(
                update={
                    "state": UpdateState.ROLLBACK_PAUSED,
                    "message": f"rollback paused: {why}",
                }
            )
        if action == "rollback":
            return update.model_copy(
                update={"state": UpdateState.ROLLBACK_STARTED, "message": f"rollback: {why}"}
            )
        if action == "continue":
            # A deadline under failureAction continue: say so and keep going.
            return update.model_copy(
                update={"message": f"continuing despite failure: {why}", "progress_at": now}
            )
        return update.model_copy(
            update={"state": UpdateState.PAUSED, "message": f"update paused: {why}"}
        )

    def _start_rollback(
        self, service: Service, update: UpdateStatus, now: datetime, plan: RolloutPlan
    ) -> UpdateStatus:
        """failureAction rollback: the spec goes back to the previous revision."""
        why = update.message.removeprefix("rollback: ")
        status = service.status or ServiceStatus()
        previous = update.previous_revision
        revision = find_revision(status, previous) if previous is not None else None
        if revision is None:
            return update.model_copy(
                update={
                    "state": UpdateState.PAUSED,
                    "message": f"update paused: {why}; no previous revision to roll back to",
                }
            )
        plan.spec = service.spec.model_copy(update={"template": revision.template})
        return UpdateStatus(
            state=UpdateState.ROLLBACK_STARTED,
            revision=revision.number,
            previous_revision=update.revision,
            message=f"rolling back to revision {revision.number}: {why}",
            started_at=now,
            progress_at=now,
        )

    def _pick(
        self,
        update: UpdateStatus,
        config: UpdateConfig | RollbackConfig,
        in_flight: list[str],
        waiting: list[str],
        now: datetime,
        plan: RolloutPlan,
    ) -> None:
        if not waiting:
            return
        width = config.parallelism or math.inf
        room = width - len(in_flight)
        if room <= 0:
            return
        if config.delay and update.batch_done_at is not None:
            left = config.delay - (now - update.batch_done_at).total_seconds()
            if left > 0:
                plan.wake(left)
                return
        count = len(waiting) if room == math.inf else int(room)
        plan.replace = set(waiting[:count])


def _alive(tasks: Iterable[Task]) -> bool:
    return any(not t.status.state.terminal for t in tasks)


def _why(task: Task) -> str:
    status = task.status
    text = status.state.value
    if status.exit_code is not None and status.state != TaskState.REJECTED:
        text += f" (exit code {status.exit_code})"
    detail = status.error or status.message
    if detail and detail not in text:
        text += f": {detail}"
    return text


def _seconds(value: float) -> str:
    return f"{value:g}s"
