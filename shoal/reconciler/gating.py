"""``dependsOn``: a service's tasks are created only once its dependencies are up.

The orchestrator asks ``DependencyGate.holds`` before it plans a service. A
service with ``spec.dependsOn`` and *no task at all* (new, or scaled to zero
until its tasks are gone) is held while any dependency falls short of its
condition:

``started``
    every desired slot of the dependency has a live task that was started:
    ``running``, or ``starting`` under a health check (its probes have not
    passed yet). A job: a run has begun.
``healthy``
    … and ``running``, which for a template with a health check means its
    probes pass (a dependency without one counts as healthy once running).
    A job: as ``started``.
``completed``
    a job whose last run succeeded; any other service: every slot's newest
    task completed (exit 0) and the restart policy will not start it again.

A dependency that does not exist holds the dependent too (applying it later
releases it), so the order of applies does not matter. Once a service has
tasks it is never held again: a dependency that fails, scales down or goes
away later stops nothing (Compose's semantics), and the service's restarts,
scale-ups and updates are not held either.

The gate keeps, for each dependency, which held services wait for it, so the
orchestrator's ``keys_for`` can wake them when the dependency's tasks or spec
change (a health change included, which the orchestrator otherwise ignores);
a new term relearns it from the full resync.
"""

from __future__ import annotations

from collections import defaultdict

from shoal.models import DesiredState, Service, Task, TaskState
from shoal.models.service import Dependency
from shoal.reconciler.informer import Informer
from shoal.store.typed import Object

_WORDS = {"started": "running", "healthy": "healthy", "completed": "complete"}


class DependencyGate:
    """Which services wait for which dependencies, and why."""

    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        self._waiting_for: dict[str, set[str]] = defaultdict(set)  # dependency → held services
        self._held: dict[str, list[str]] = {}  # held service → its dependencies

    def holds(self, service: Service) -> str | None:
        """Why ``service`` must not get tasks yet (``waiting for db to be healthy``), or None."""
        name = service.name
        if not service.spec.depends_on or self.informer.tasks_by_service.get(name):
            self.release(name)
            return None
        unmet = [
            reason for dep in service.spec.depends_on if (reason := self._unmet(dep)) is not None
        ]
        if not unmet:
            self.release(name)
            return None
        self.release(name)
        self._held[name] = [d.service for d in service.spec.depends_on]
        for dep in service.spec.depends_on:
            self._waiting_for[dep.service].add(name)
        return "waiting for " + ", ".join(unmet)

    def release(self, name: str) -> None:
        """``name`` is not held (any more): it started, was deleted or has no dependencies."""
        for dep in self._held.pop(name, []):
            waiting = self._waiting_for.get(dep)
            if waiting is not None:
                waiting.discard(name)
                if not waiting:
                    del self._waiting_for[dep]

    def woken_by(self, obj: Object | None) -> set[str]:
        """The held services that a change of ``obj`` (a dependency's spec or task) may release."""
        if isinstance(obj, Service):
            return set(self._waiting_for.get(obj.name, ()))
        if isinstance(obj, Task):
            return set(self._waiting_for.get(obj.service, ()))
        return set()

    def _unmet(self, dep: Dependency) -> str | None:
        entry = self.informer.service(dep.service)
        if entry is None:
            return f"{dep.service} (no such service yet) to be {_WORDS[dep.condition]}"
        if _meets(entry.obj, [e.obj for e in self.informer.tasks_of_service(dep.service)], dep):
            return None
        return f"{dep.service} to be {_WORDS[dep.condition]}"


def _meets(service: Service, tasks: list[Task], dep: Dependency) -> bool:
    spec = service.spec
    if spec.is_job:
        runs = service.status.job.runs if service.status and service.status.job else []
        if dep.condition == "completed":
            return bool(runs) and max(runs, key=lambda r: r.number).state == "succeeded"
        return bool(runs)
    if dep.condition == "completed":
        return _completed(service, tasks)
    live = [t for t in tasks if t.desired_state == DesiredState.RUNNING]
    check = dep.condition == "healthy"
    up = {t.slot_key for t in live if _up(t, check)}
    if spec.mode == "global":
        return bool(live) and len(up) >= len({t.slot_key for t in live})
    return all(str(slot) in up for slot in range(1, spec.replica_count + 1))


def _up(task: Task, healthy: bool) -> bool:
    state = task.status.state
    if state == TaskState.RUNNING:
        return True  # with a health check, RUNNING is reported once the probes pass
    return not healthy and state == TaskState.STARTING and task.template.healthcheck is not None


def _completed(service: Service, tasks: list[Task]) -> bool:
    """Every slot's newest task completed and will not be started again."""
    if service.spec.restart_policy.condition == "any" or not tasks:
        return False
    newest: dict[str, Task] = {}
    for task in tasks:
        known = newest.get(task.slot_key)
        if known is None or (task.attempt, task.created_at) > (known.attempt, known.created_at):
            newest[task.slot_key] = task
    if service.spec.mode != "global":
        slots = {str(slot) for slot in range(1, service.spec.replica_count + 1)}
        if not slots <= newest.keys():
            return False
        newest = {k: v for k, v in newest.items() if k in slots}
    return all(t.status.state == TaskState.COMPLETE for t in newest.values())
