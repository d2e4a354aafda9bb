"""The Sync controller: keeps the cluster in line with a directory or a git repository.

Each Sync (``kind: Sync``) is one key. Every ``interval`` — and at once when
its spec changes, when it is resumed, or on ``shoal sync now`` — the leader
fetches the source (``shoal.reconciler.sources``), loads and validates every
document, and applies them through the same planner as ``shoal apply``
(``shoal.reconciler.applyset``) as the apply set ``sync.<name>``, in one
transaction. What happens:

* **A broken revision applies nothing.** One problem in one file and the
  whole revision is refused: ``Stalled=True`` with every problem as
  ``FILE:LINE: field: message``, ``lastAttemptedRevision`` moves on,
  ``lastAppliedRevision`` stays, and what the previous revision applied keeps
  running. The next good revision clears it.
* **Drift is corrected at the next interval.** Each run compares the source
  with the store as an apply does; a service changed or deleted by hand is put
  back, with an event naming the fields (``spec.replicas: 5 → 3``).
* **Prune** (``prune: true``) deletes services the Sync applied earlier whose
  documents are gone, never anything else; emptying the set needs
  ``allowEmpty``.
* **Suspend** stops fetching, applying and drift correction until resumed.
* **An edit during a fetch wins**: the apply is one transaction with the
  Sync's status, compared on the Sync as read before the fetch, so a Sync
  suspended or re-pointed meanwhile applies nothing from that fetch.
* **dependsOn**: a Sync applies only once every Sync it depends on is Ready;
  cycles are refused when the Syncs are applied.

Health never blocks: it is computed from what the applied services run
(Healthy when each runs what its spec asks, Progressing while not yet,
Degraded once ``timeout`` has passed since the last change was applied), and
re-evaluated whenever one of their tasks moves. So a newer revision is applied
at the next interval whatever the state of the older one's rollout: a newer
revision cancels the wait on an older one, and its timeout starts afresh.

Conditions follow Flux: ``Ready`` (True ``ReconciliationSucceeded``, Unknown
``Progressing``, False with the reason), ``Reconciling`` (True while applied
services roll out), ``Stalled`` (True when only a new revision or a fix can
help). Status is written only when it changes, and only by the leader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import ApplySetError, ConflictError, SourceError, SpecError
from shoal.manifest import load_paths
from shoal.models import DesiredState, Service, Task, TaskState
from shoal.models.secret import ConfigDocument
from shoal.models.sync import Condition, HealthState, Sync, SyncStatus, sync_set_name
from shoal.reconciler.applyset import ApplyOptions, ApplyPlan, plan_apply
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.loop import Controller, Done, Outcome, Requeue
from shoal.reconciler.sources import SourceFetcher
from shoal.store.typed import APPLYSETS, Change, Object

log = structlog.get_logger(__name__)


class ConfigStore(Protocol):
    """The manager's configs (``shoal.manager.secretstore``), as ``shoal apply`` uses them."""

    def reference_problems(
        self, services: list[Service], configs: list[ConfigDocument]
    ) -> list[str]:
        """Each secret or config a service names that neither exists nor comes along."""
        ...

    def config_changes(
        self, documents: list[ConfigDocument]
    ) -> tuple[list[Change], list[dict[str, str]], list[str]]:
        """Changes, per-document results and problems for ``kind: Config`` documents."""
        ...


# While a Sync waits for a dependency, look again this often at the latest.
DEPENDENCY_RECHECK = 5.0
# Ready reasons of a failed attempt: health alone does not clear them.
ATTEMPT_FAILURES = ("FetchFailed", "ValidationFailed", "ApplyFailed", "DependencyNotReady")
# Rollout states (status.update.state) in which the applied spec will not run by itself.
STOPPED_ROLLOUTS = ("paused", "rollback_paused", "rollback_completed")
MOVING_ROLLOUTS = ("updating", "rollback_started", "awaiting_promotion")
# Problems listed in a Stalled message (the rest are counted).
MAX_PROBLEMS = 10


def _ref(name: str) -> str:
    return f"sync/{name}"


class SyncController(Controller):
    """Fetches, validates and applies each Sync's source; see the module docstring."""

    name = "sync"
    # Syncs are independent keys, and a fetch may wait on a slow git server.
    workers = 4

    def __init__(
        self,
        informer: Informer,
        events: EventRecorder,
        fetcher: SourceFetcher,
        clock: Clock = SYSTEM_CLOCK,
        configs: ConfigStore | None = None,
    ) -> None:
        self.informer = informer
        self.events = events
        self.fetcher = fetcher
        self.clock = clock
        # Checks the secrets and configs services name, and takes the configs
        # a source holds (``kind: Config``), as ``shoal apply`` does.
        self.configs = configs
        # service name -> the Syncs whose inventory holds it (for health updates)
        self._owners: dict[str, set[str]] = {}

    # ------------------------------------------------------------- routing

    def all_keys(self) -> Iterable[str]:
        self._owners = {}
        for name, entry in self.informer.syncs.items():
            self._index(name, entry.obj)
        # The records of Syncs deleted while no manager led are cleaned up too.
        orphans = {
            name.removeprefix("sync.")
            for name in self.informer.applysets
            if name.startswith("sync.") and name.removeprefix("sync.") not in self.informer.syncs
        }
        return [*self.informer.syncs, *sorted(orphans)]

    def _index(self, name: str, sync: Sync | None, old: Sync | None = None) -> None:
        for ref in old.status.inventory if old is not None and old.status else ():
            self._owners.get(ref.removeprefix("service/"), set()).discard(name)
        for ref in sync.status.inventory if sync is not None and sync.status else ():
            self._owners.setdefault(ref.removeprefix("service/"), set()).add(name)

    def keys_for(self, old: Object | None, new: Object | None) -> Iterable[str]:
        obj = new or old
        if isinstance(obj, Sync):
            name = obj.metadata.name
            self._index(
                name, new if isinstance(new, Sync) else None, old if isinstance(old, Sync) else None
            )
            dependents = {
                n
                for n, e in self.informer.syncs.items()
                if any(d.name == name for d in e.obj.spec.depends_on)
            }
            return {name, *dependents}
        if isinstance(obj, Service):
            return tuple(self._owners.get(obj.metadata.name, ()))
        if isinstance(obj, Task):
            if (
                isinstance(old, Task)
                and isinstance(new, Task)
                and old.status.state == new.status.state
                and old.desired_state == new.desired_state
            ):
                return ()
            return tuple(self._owners.get(obj.service, ()))
        return ()

    # ----------------------------------------------------------- reconcile

    async def reconcile(self, key: str) -> Outcome:
        entry = self.informer.syncs.get(key)
        if entry is None:
            await self._forget(key)
            return Done()
        sync = entry.obj
        status = sync.status or SyncStatus()
        now = self.clock.now()
        if sync.spec.suspend:
            await self._write(sync, entry.revision, _suspended(status, now))
            return Done()
        due = self._due(sync, status, now)
        if due > 0:
            updated = self._with_health(sync, status, now)
            await self._write(sync, entry.revision, updated)
            return Requeue(self._next_wake(sync, updated, now, due))
        blocked = self._blocked(sync)
        if blocked:
            updated = _set(status, now, "Ready", "False", "DependencyNotReady", blocked)
            updated = _set(updated, now, "Reconciling", "False", "DependencyNotReady", blocked)
            await self._write(sync, entry.revision, updated)
            return Requeue(min(sync.spec.interval, DEPENDENCY_RECHECK))
        try:
            updated = await self._attempt(sync, entry.revision, status, now)
        except ConflictError:
            # The Sync (or a service it applies) changed while the source was
            # fetched: nothing was applied; run again on what is stored now.
            log.info("sync.superseded", sync=key)
            return Requeue(0.0)
        current = self.informer.syncs.get(key)
        if current is None:
            return Done()
        await self._write(current.obj, current.revision, updated)
        return Requeue(self._next_wake(sync, updated, now, sync.spec.interval))

    def _due(self, sync: Sync, status: SyncStatus, now: datetime) -> float:
        """Seconds until the next run is due; <= 0 means run now."""
        requested = sync.metadata.requested_at
        if requested is not None and requested != status.last_handled_request:
            return 0.0
        if status.observed_generation != sync.metadata.generation:
            return 0.0  # new spec, or resumed
        if status.last_attempted_at is None:
            return 0.0
        next_run = status.last_attempted_at + timedelta(seconds=sync.spec.interval)
        return (next_run - now).total_seconds()

    def _next_wake(self, sync: Sync, status: SyncStatus, now: datetime, due: float) -> float:
        wake = due
        if status.health == "Progressing" and status.last_applied_at is not None:
            deadline = status.last_applied_at + timedelta(seconds=sync.spec.timeout)
            wake = min(wake, (deadline - now).total_seconds())
        return max(wake, 0.05)

    def _blocked(self, sync: Sync) -> str | None:
        waiting = []
        for dep in sync.spec.depends_on:
            entry = self.informer.syncs.get(dep.name)
            ready = entry.obj.status.condition("Ready") if entry and entry.obj.status else None
            if entry is None:
                waiting.append(f"sync/{dep.name} does not exist")
            elif ready is None or ready.status != "True":
                waiting.append(f"sync/{dep.name} is not Ready")
        return "waiting for " + ", ".join(waiting) if waiting else None

    async def _attempt(
        self, sync: Sync, revision_read: int, status: SyncStatus, now: datetime
    ) -> SyncStatus:
        """Fetch, validate, apply: the new status (the caller writes it).

        The apply is compared on ``revision_read``, the Sync as it was before
        the fetch: if it was edited meanwhile (suspended, pointed elsewhere)
        nothing is applied and ``ConflictError`` is raised.
        """
        name = sync.name
        status = status.model_copy(
            update={
                "last_attempted_at": now,
                "observed_generation": sync.metadata.generation,
                "last_handled_request": sync.metadata.requested_at,
            }
        )
        try:
            fetched = await self.fetcher.fetch(name, sync.spec.source)
        except SourceError as exc:
            message = f"{sync.spec.source.describe()}: {exc}"
            self.events.record(_ref(name), "FetchFailed", message, warning=True)
            if exc.revision is not None:
                status = status.model_copy(update={"last_attempted_revision": exc.revision})
            failed = _failed(status, now, "FetchFailed", message, stalled=exc.revision is not None)
            return self._with_health(sync, failed, now)
        revision = fetched.revision
        status = status.model_copy(update={"last_attempted_revision": revision})
        try:
            documents = await asyncio.to_thread(
                load_paths, [fetched.root], fetched.relative_to, True
            )
            services = [d for d in documents if isinstance(d, Service)]
            configs = [d for d in documents if isinstance(d, ConfigDocument)]
            extra = sorted(f"sync/{d.name}" for d in documents if isinstance(d, Sync))
            if extra:
                raise SpecError(
                    [
                        f"{', '.join(extra)}: a Sync's source holds services and configs, not "
                        "Syncs; apply those with `shoal apply`"
                    ]
                )
            config_changes: list[Change] = []
            config_results: list[dict[str, str]] = []
            if self.configs is not None:
                config_changes, config_results, problems = self.configs.config_changes(configs)
                problems += self.configs.reference_problems(services, configs)
                if problems:
                    raise SpecError(problems)
            elif configs:
                raise SpecError(["configs cannot be applied by this Sync (no config store)"])
            plan = plan_apply(
                self.informer,
                services,
                ApplyOptions(
                    set_name=sync_set_name(name),
                    prune=sync.spec.prune,
                    allow_empty=sync.spec.allow_empty,
                    source=sync.spec.source.describe(),
                    revision=revision,
                    cause=f"sync/{name} {revision}",
                ),
                now,
            )
        except SpecError as exc:
            problems = exc.problems[:MAX_PROBLEMS]
            if len(exc.problems) > MAX_PROBLEMS:
                problems.append(f"and {len(exc.problems) - MAX_PROBLEMS} more problem(s)")
            message = f"revision {revision} applies nothing: " + "\n".join(problems)
            self.events.record(_ref(name), "ValidationFailed", message, warning=True)
            failed = _failed(status, now, "ValidationFailed", message, stalled=True)
            return self._with_health(sync, failed, now)
        except ApplySetError as exc:
            message = f"revision {revision} applies nothing: {exc}"
            self.events.record(_ref(name), "ApplyFailed", message, warning=True)
            failed = _failed(status, now, "ApplyFailed", message, stalled=True)
            return self._with_health(sync, failed, now)
        previous = status.last_applied_revision
        status = status.model_copy(
            update={
                "last_applied_revision": revision,
                "inventory": [f"service/{member}" for member in plan.members or ()],
                "last_applied_at": now
                if plan.changed or status.last_applied_at is None
                else status.last_applied_at,
            }
        )
        status = _set(status, now, "Stalled", "False", "Applied", "")
        if plan.changes or config_changes:
            # The Sync's status goes in the same transaction, compared on the
            # revision read before the fetch (see the docstring).
            guard = Change.put(sync.model_copy(update={"status": status}), revision_read)
            await self.informer.commit([*config_changes, *plan.changes, guard], atomic=True)
        for config in config_results:
            if config["action"] == "created":
                self.events.record(f"config/{config['name']}", "Applied", f"created by sync/{name}")
        self._report(sync, previous, plan, revision)
        return self._with_health(sync, status, now, applied=True)

    def _report(self, sync: Sync, previous: str | None, plan: ApplyPlan, revision: str) -> None:
        """Events for what this run changed: a new revision, or drift put right."""
        name = sync.name
        changed = plan.changed
        if revision != previous:
            summary = ", ".join(f"{r.ref} {r.action}" for r in changed) or "nothing changed"
            self.events.record(_ref(name), "Applied", f"revision {revision}: {summary}")
        elif changed:
            for result in changed:
                what = "; ".join(result.changed) or result.action
                if result.action == "created":
                    what = "was deleted by hand; created again"
                self.events.record(
                    _ref(name), "DriftCorrected", f"{result.ref}: {what}", warning=True
                )
                self.events.record(
                    result.ref, "DriftCorrected", f"put back by sync/{name}: {what}", warning=True
                )
        for result in changed:
            if result.action != "pruned":
                continue
            self.events.record(result.ref, "Pruned", f"deleted by sync/{name} (not in {revision})")

    # -------------------------------------------------------------- health

    def _with_health(
        self, sync: Sync, status: SyncStatus, now: datetime, applied: bool = False
    ) -> SyncStatus:
        """Health from what the applied services run, and Ready/Reconciling from it
        unless the last attempt failed (``applied``: it has just succeeded)."""
        if status.last_applied_revision is None:
            return status
        health, message = self._health(sync, status, now)
        status = status.model_copy(update={"health": health, "health_message": message})
        ready = status.condition("Ready")
        if not applied and ready is not None and ready.reason in ATTEMPT_FAILURES:
            return status  # Ready keeps the failure's reason until an attempt succeeds
        revision = status.last_applied_revision
        if health == "Healthy":
            done = f"applied revision {revision}; {message}"
            status = _set(status, now, "Ready", "True", "ReconciliationSucceeded", done)
            return _set(status, now, "Reconciling", "False", "ReconciliationSucceeded", done)
        if health == "Progressing":
            waiting = f"revision {revision}: {message}"
            status = _set(status, now, "Ready", "Unknown", "Progressing", waiting)
            return _set(status, now, "Reconciling", "True", "Progressing", waiting)
        failed = f"revision {revision}: {message}"
        status = _set(status, now, "Ready", "False", "HealthCheckFailed", failed)
        return _set(status, now, "Reconciling", "False", "HealthCheckFailed", failed)

    def _health(self, sync: Sync, status: SyncStatus, now: datetime) -> tuple[HealthState, str]:
        waiting = []
        failed = []
        names = [ref.removeprefix("service/") for ref in status.inventory]
        for name in names:
            rollout = self._rollout_problem(name)
            if rollout is not None:
                failed.append(f"service/{name}: {rollout}")
                continue
            problem = self._rolling(name) or self._service_problem(name)
            if problem:
                waiting.append(f"service/{name}: {problem}")
        if failed:
            return "Degraded", "; ".join(failed[:5])
        if not waiting:
            return "Healthy", f"{len(names)} service(s) running their specs"
        started = status.last_applied_at or now
        elapsed = (now - started).total_seconds()
        detail = "; ".join(waiting[:5]) + (
            f"; and {len(waiting) - 5} more" if len(waiting) > 5 else ""
        )
        if elapsed > sync.spec.timeout:
            return "Degraded", f"not rolled out after {sync.spec.timeout:g}s: {detail}"
        return "Progressing", f"waiting for {detail}"

    def _rollout_problem(self, name: str) -> str | None:
        """A rollout that stopped short of the spec (paused, rolled back), else None.

        ``updating``, ``rollback_started`` and ``awaiting_promotion`` are still
        moving (Progressing, judged from the tasks and the timeout); ``paused``,
        ``rollback_paused`` and ``rollback_completed`` wait for a person: the
        applied spec does not run, so the Sync is Degraded at once.
        """
        entry = self.informer.service(name)
        update = entry.obj.status.update if entry and entry.obj.status else None
        if update is None or update.state not in STOPPED_ROLLOUTS:
            return None
        return f"rollout {update.state}" + (f": {update.message}" if update.message else "")

    def _rolling(self, name: str) -> str | None:
        """``rollout updating`` while a rollout is under way (not yet completed)."""
        entry = self.informer.service(name)
        update = entry.obj.status.update if entry and entry.obj.status else None
        if update is None or update.state not in MOVING_ROLLOUTS:
            return None
        return f"rollout {update.state} ({update.updated}/{update.total} slots)"

    def _service_problem(self, name: str) -> str | None:
        """Why a service does not yet run what its spec asks (None when it does)."""
        entry = self.informer.service(name)
        if entry is None:
            return "missing"
        service = entry.obj
        tasks = [e.obj for e in self.informer.tasks_of_service(name)]
        alive = [t for t in tasks if not t.status.state.terminal]
        current = [
            t
            for t in alive
            if t.desired_state == DesiredState.RUNNING and t.template == service.spec.template
        ]
        running = sum(1 for t in current if t.status.state == TaskState.RUNNING)
        outdated = len(alive) - len(current)
        if service.spec.mode == "global":
            desired = len([t for t in tasks if t.desired_state == DesiredState.RUNNING])
        else:
            desired = service.spec.replica_count
        if running == desired and len(current) == desired and outdated == 0:
            return None
        text = f"{running}/{desired} running"
        if outdated:
            text += f", {outdated} old task(s) still alive"
        return text

    # ------------------------------------------------------------ plumbing

    async def _write(self, sync: Sync, revision: int, status: SyncStatus) -> None:
        if sync.status == status:
            return
        await self.informer.commit(
            [Change.put(sync.model_copy(update={"status": status}), revision)]
        )

    async def _forget(self, name: str) -> None:
        """A deleted Sync: its services stay (owned by nobody), its record and checkout go."""
        record = self.informer.applysets.get(sync_set_name(name))
        if record is not None:
            await self.informer.commit(
                [Change.delete(APPLYSETS + sync_set_name(name), record.revision)]
            )
            self.events.record(
                _ref(name),
                "Deleted",
                f"deleted; its services stay: {', '.join(m.name for m in record.obj.members)}",
            )
        self.fetcher.forget(name)


def _set(
    status: SyncStatus, now: datetime, kind: str, value: str, reason: str, message: str
) -> SyncStatus:
    """``status`` with condition ``kind`` set; its transition time moves only on a change."""
    current = status.condition(kind)
    if current is not None and (current.status, current.reason, current.message) == (
        value,
        reason,
        message,
    ):
        return status
    moved = current is None or current.status != value
    condition = Condition.model_validate(
        {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now if moved or current is None else current.last_transition_time,
        }
    )
    others = [c for c in status.conditions if c.type != kind]
    order = {"Ready": 0, "Reconciling": 1, "Stalled": 2}
    conditions = sorted([*others, condition], key=lambda c: order[c.type])
    return status.model_copy(update={"conditions": conditions})


def _failed(
    status: SyncStatus, now: datetime, reason: str, message: str, stalled: bool
) -> SyncStatus:
    status = _set(status, now, "Ready", "False", reason, message)
    status = _set(status, now, "Reconciling", "False", reason, message)
    return _set(status, now, "Stalled", "True" if stalled else "False", reason, message)


def _suspended(status: SyncStatus, now: datetime) -> SyncStatus:
    message = "suspended: no fetch, no apply, no drift correction until resumed"
    return _set(status, now, "Reconciling", "False", "Suspended", message)
