"""Jobs: numbered runs of tasks that end ``complete``, started by changes, by hand or on a schedule.

The orchestrator hands every ``replicated-job`` / ``global-job`` service to
``JobReconciler.plan`` instead of keeping its slots filled. A pass:

1. starts a run when one is due: the job is new or its template changed (the
   next revision), ``shoal job run`` asked for one (``status.job.requestedAt``),
   or its schedule passed a run time. For a schedule only the *latest* run time
   since the last one dealt with counts, so a manager that was down for a day
   starts at most one missed run, and only within ``startingDeadline`` of its
   time. ``concurrencyPolicy`` decides what a due run does while another is
   active: ``Allow`` starts it beside, ``Forbid`` skips it (counted in
   ``skipped``), ``Replace`` ends the active run first. ``suspend`` starts
   nothing new.
2. drives each active run: a replicated-job has slots ``1..completions``, a
   global-job one slot per eligible node; a slot is done once one of its tasks
   completed (exit 0). Slots without a live task get one (after the restart
   delay if the last one failed), at most ``maxConcurrent`` live at once. A run
   fails when more than ``backoffLimit`` of its tasks failed, when
   ``activeDeadline`` passed, or at the first failure with restart condition
   ``none``; it succeeds when every slot is done. Restart condition ``any``
   acts as ``on-failure``: a completed task is never run again.
3. keeps the history bounded: the last ``successfulRunsHistoryLimit``
   succeeded and ``failedRunsHistoryLimit`` failed runs are kept (with their
   tasks, unless ``ttlAfterFinished`` deleted those).

Tasks carry their run's number (``SHOAL_JOB_RUN`` in their environment). The
runs, the last schedule time and the counters are in ``status.job`` in the
store, so a new leader carries on without repeating or losing a run.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shoal.models import DesiredState, Service, Task, TaskState, TaskStatus
from shoal.models.job import JobRun, JobStatus
from shoal.models.service import ServiceStatus
from shoal.schedule import parse_schedule
from shoal.store.typed import TASKS, Change

FAILED = (TaskState.FAILED, TaskState.REJECTED)
MAX_DELAY = 300.0


@dataclass
class JobPlan:
    changes: list[Change] = field(default_factory=list)
    status: ServiceStatus | None = None
    wake_after: float | None = None
    events: list[str] = field(default_factory=list)

    def wake(self, after: float) -> None:
        after = max(after, 0.05)
        self.wake_after = after if self.wake_after is None else min(self.wake_after, after)


@dataclass
class _Revision:
    """The entries of the store the pass works on (task, its mod revision)."""

    task: Task
    revision: int


class JobReconciler:
    """Plans one pass over a job (see the module docstring). Pure: ``now`` comes in."""

    def plan(
        self,
        service: Service,
        tasks: Sequence[tuple[Task, int]],
        eligible_nodes: Sequence[str],
        now: datetime,
    ) -> JobPlan:
        plan = JobPlan()
        status = service.status or ServiceStatus()
        state = status.job or JobStatus()
        runs = {r.number: r for r in state.runs}
        by_run: dict[int | None, list[_Revision]] = defaultdict(list)
        for task, revision in tasks:
            by_run[task.job_run].append(_Revision(task, revision))

        state = self._start_due_runs(service, state, runs, now, plan)

        for number, run in sorted(runs.items()):
            entries = by_run.get(number, [])
            if run.state == "active":
                runs[number] = self._drive(service, run, entries, eligible_nodes, now, plan)
            else:  # ended (replaced, failed): nothing of it keeps running
                live = [e for e in entries if not e.task.status.state.terminal]
                self._stop(live, now, run.reason or f"run {number} ended", plan)
        state = state.model_copy(update={"runs": sorted(runs.values(), key=lambda r: r.number)})
        state = self._trim(service, state, by_run, now, plan)
        if state != status.job:
            plan.status = status.model_copy(update={"job": state})
        return plan

    # ------------------------------------------------------------ starting

    def _start_due_runs(
        self,
        service: Service,
        state: JobStatus,
        runs: dict[int, JobRun],
        now: datetime,
        plan: JobPlan,
    ) -> JobStatus:
        job = service.spec.job_config
        status = service.status or ServiceStatus()
        revision = status.revision or 1

        def start(
            cause: str, scheduled_for: datetime | None = None, supersede: bool = False
        ) -> None:
            number = max([*runs, 0]) + 1
            if job.concurrency_policy == "Replace" or supersede:
                for run in runs.values():
                    if run.state == "active":
                        runs[run.number] = run.model_copy(
                            update={
                                "state": "failed",
                                "finished_at": now,
                                "reason": f"replaced by run {number}",
                            }
                        )
            runs[number] = JobRun(
                number=number, started_at=now, scheduled_for=scheduled_for, cause=cause
            )
            plan.events.append(f"run {number} started: {cause}")

        active = any(r.state == "active" for r in runs.values())
        if job.schedule is None and state.run_generation != revision and not job.suspend:
            start("created" if not runs else f"revision {revision}", supersede=True)
            state = state.model_copy(update={"run_generation": revision})
        if state.requested_at is not None:
            if active and job.concurrency_policy == "Forbid":
                plan.events.append("requested run not started: a run is active (Forbid)")
            else:
                start("shoal job run")
            state = state.model_copy(update={"requested_at": None})
        if job.schedule is not None:
            schedule = parse_schedule(job.schedule, job.time_zone)
            since = state.last_schedule_time or service.metadata.created_at or now
            due = schedule.latest_between(since, now)
            if due is not None:
                state = state.model_copy(update={"last_schedule_time": due})
                late = (now - due).total_seconds()
                active = any(r.state == "active" for r in runs.values())
                if job.suspend:
                    pass
                elif job.starting_deadline is not None and late > job.starting_deadline:
                    state = state.model_copy(update={"skipped": state.skipped + 1})
                    plan.events.append(
                        f"run for {due.isoformat()} skipped: {late:.0f}s late, "
                        "past startingDeadline"
                    )
                elif active and job.concurrency_policy == "Forbid":
                    state = state.model_copy(update={"skipped": state.skipped + 1})
                    plan.events.append(
                        f"run for {due.isoformat()} skipped: a run is active "
                        "(concurrencyPolicy Forbid)"
                    )
                else:
                    start(f"schedule {job.schedule}", scheduled_for=due)
            nxt = schedule.next_after(now)
            plan.wake((nxt - now).total_seconds())
            state = state.model_copy(update={"next_run_at": None if job.suspend else nxt})
        return state

    # -------------------------------------------------------------- running

    def _drive(
        self,
        service: Service,
        run: JobRun,
        entries: list[_Revision],
        eligible_nodes: Sequence[str],
        now: datetime,
        plan: JobPlan,
    ) -> JobRun:
        spec = service.spec
        job = spec.job_config
        policy = spec.restart_policy
        global_job = spec.mode == "global-job"
        keys = (
            [f"node:{n}" for n in eligible_nodes]
            if global_job
            else [str(i) for i in range(1, job.completions + 1)]
        )
        by_slot: dict[str, list[Task]] = defaultdict(list)
        for entry in entries:
            by_slot[entry.task.slot_key].append(entry.task)
        failed_tasks = sorted(
            (e.task for e in entries if e.task.status.state in FAILED),
            key=lambda t: t.status.timestamp or t.created_at,
        )
        done = [k for k in keys if any(t.status.state == TaskState.COMPLETE for t in by_slot[k])]
        live = [e for e in entries if not e.task.status.state.terminal]
        reason = ""
        if len(failed_tasks) > job.backoff_limit:
            last = failed_tasks[-1]
            reason = (
                f"backoffLimit {job.backoff_limit} exceeded: {len(failed_tasks)} failed task(s), "
                f"the last {last.name}: {last.status.error or last.status.message}"
            )
        elif failed_tasks and policy.condition == "none":
            reason = f"task {failed_tasks[-1].name} failed and restart condition is none"
        elif job.active_deadline is not None:
            left = job.active_deadline - (now - run.started_at).total_seconds()
            if left <= 0:
                reason = f"activeDeadline {job.active_deadline:g}s exceeded"
            else:
                plan.wake(left)
        counts = {"succeeded": len(done), "failed": len(failed_tasks), "active": len(live)}
        if reason:
            self._stop(live, now, reason, plan)
            return run.model_copy(
                update={**counts, "state": "failed", "finished_at": now, "reason": reason}
            )
        if not keys:
            return run.model_copy(update={**counts, "reason": "no eligible node"})
        if len(done) == len(keys) and not live:
            return run.model_copy(update={**counts, "state": "succeeded", "finished_at": now})
        room = job.concurrency - len(live) if not global_job else len(keys)
        for key in keys:
            if room <= 0:
                break
            if key in done or any(not t.status.state.terminal for t in by_slot[key]):
                continue
            tried = sorted(by_slot[key], key=lambda t: t.created_at)
            if tried:
                last = tried[-1]
                streak = sum(1 for t in tried if t.status.state in FAILED)
                delay = min(policy.delay * 2 ** max(streak - 1, 0), max(MAX_DELAY, policy.delay))
                ended = last.status.timestamp or last.created_at
                wait = delay - (now - ended).total_seconds()
                if wait > 0:
                    plan.wake(wait)
                    continue
            node = key[len("node:") :] if global_job else None
            plan.changes.append(Change.put(self._task(service, run, key, node, len(tried), now), 0))
            room -= 1
            counts["active"] += 1
        return run.model_copy(update=counts)

    def _task(
        self, service: Service, run: JobRun, key: str, node: str | None, attempt: int, now: datetime
    ) -> Task:
        return Task(
            id=secrets.token_hex(12),
            service=service.name,
            slot=0 if node else int(key),
            node_id=node,
            template=service.spec.template,
            service_generation=service.metadata.generation or 0,
            attempt=attempt,
            created_at=now,
            job_run=run.number,
            status=TaskStatus(state=TaskState.PENDING, timestamp=now, message="waiting for a node"),
        )

    def _stop(self, live: list[_Revision], now: datetime, reason: str, plan: JobPlan) -> None:
        for entry in live:
            task = entry.task
            if task.desired_state == DesiredState.SHUTDOWN:
                continue
            update: dict[str, object] = {"desired_state": DesiredState.SHUTDOWN}
            if task.status.state in (TaskState.NEW, TaskState.PENDING):
                update["status"] = TaskStatus(
                    state=TaskState.SHUTDOWN, timestamp=now, message=reason
                )
            plan.changes.append(Change.put(task.model_copy(update=update), entry.revision))

    # -------------------------------------------------------------- history

    def _trim(
        self,
        service: Service,
        state: JobStatus,
        by_run: dict[int | None, list[_Revision]],
        now: datetime,
        plan: JobPlan,
    ) -> JobStatus:
        job = service.spec.job_config
        succeeded = [r for r in state.runs if r.state == "succeeded"]
        failed = [r for r in state.runs if r.state == "failed"]
        drop = set()
        if len(succeeded) > job.successful_runs_history_limit:
            cut = len(succeeded) - job.successful_runs_history_limit
            drop |= {r.number for r in succeeded[:cut]}
        if len(failed) > job.failed_runs_history_limit:
            cut = len(failed) - job.failed_runs_history_limit
            drop |= {r.number for r in failed[:cut]}
        runs = []
        for run in state.runs:
            entries = by_run.get(run.number, [])
            expired = False
            if run.finished_at is not None and job.ttl_after_finished is not None:
                left = job.ttl_after_finished - (now - run.finished_at).total_seconds()
                expired = left <= 0
                if not expired and not run.cleaned:
                    plan.wake(left)
            gone = (run.number in drop or expired) and self._delete(entries, now, plan)
            if gone and run.number not in drop:
                run = run.model_copy(update={"cleaned": True})
            if run.number not in drop:
                runs.append(run)
        known = {r.number for r in state.runs}
        for number, entries in by_run.items():
            if number not in known:
                self._delete(entries, now, plan)
        return state.model_copy(update={"runs": runs})

    def _delete(self, entries: list[_Revision], now: datetime, plan: JobPlan) -> bool:
        """Delete ended tasks and stop live ones; True once none is left."""
        live = [e for e in entries if not e.task.status.state.terminal]
        self._stop(live, now, "run dropped from the history", plan)
        for entry in entries:
            if entry.task.status.state.terminal:
                plan.changes.append(Change.delete(TASKS + entry.task.id, entry.revision))
        return not live
