"""dependsOn in the orchestrator: a service gets no task until its dependencies hold.

Each test writes services into a memory store, plays the agents by moving
task states (health included), calls ``reconcile`` and checks which tasks
exist, what ``describe`` would show (the notes) and the events. The
orchestrator's ``keys_for`` must wake a held service when its dependency
changes, or it would wait for the next resync.
"""

from __future__ import annotations

from typing import Any

import pytest

from shoal.models import DesiredState, Service, Task, TaskState
from shoal.reconciler.orchestrator import HELD_NOTE, Orchestrator
from shoal.store.typed import SERVICES, Change
from tests.reconciler.world import World

HEALTHCHECK = {"exec": ["true"], "interval": "1s"}


def svc(
    name: str,
    replicas: int = 1,
    *,
    needs: dict[str, str] | None = None,
    mode: str = "replicated",
    healthcheck: dict[str, Any] | None = None,
    restart: str = "any",
) -> Service:
    spec: dict[str, Any] = {
        "mode": mode,
        "template": {"runtime": "sim", "command": ["work"]},
        "restartPolicy": {"condition": restart},
        "dependsOn": [{"service": s, "condition": c} for s, c in (needs or {}).items()],
    }
    if healthcheck:
        spec["template"]["healthcheck"] = healthcheck
    if mode == "replicated":
        spec["replicas"] = replicas
    return Service.model_validate({"metadata": {"name": name, "generation": 1}, "spec": spec})


@pytest.fixture
def orch(world: World) -> Orchestrator:
    orchestrator = Orchestrator(world.informer, world.events, clock=world.clock)
    return orchestrator


def woken(orch: Orchestrator, old: Task | Service | None, new: Task | Service | None) -> set[str]:
    return set(orch.keys_for(old, new))


def held_note(orch: Orchestrator, name: str = "web") -> str | None:
    return orch.reports.notes(name).get(HELD_NOTE)


def reasons(world: World, name: str = "web") -> list[str]:
    return [e.reason for e in world.events.for_object(f"service/{name}")]


async def move(
    world: World, orch: Orchestrator, task: Task, state: TaskState, **fields: Any
) -> set[str]:
    """Play the agent; returns the keys the orchestrator would reconcile for the change."""
    old = world.informer.tasks[task.id].obj
    new = await world.report(task, state, **fields)
    return woken(orch, old, new)


async def test_started_waits_until_every_slot_of_the_dependency_runs(
    world: World, orch: Orchestrator
) -> None:
    await world.put(svc("db", 2), svc("web", needs={"db": "started"}))
    await orch.reconcile("web")
    assert world.tasks("web") == []
    assert held_note(orch) == "waiting for db to be running"
    assert reasons(world) == ["WaitingForDependencies"]
    await orch.reconcile("db")
    first, second = world.tasks("db")
    assert "web" in await move(world, orch, first, TaskState.RUNNING)
    await orch.reconcile("web")
    assert world.tasks("web") == []  # one of two slots runs
    assert "web" in await move(world, orch, second, TaskState.RUNNING)
    await orch.reconcile("web")
    assert [t.slot for t in world.tasks("web")] == [1]
    assert held_note(orch) is None
    assert reasons(world) == ["WaitingForDependencies", "DependenciesMet"]
    # Released: the dependency's changes wake it no more.
    assert "web" not in await move(world, orch, first, TaskState.FAILED)


async def test_healthy_waits_for_the_probes_and_started_does_not(
    world: World, orch: Orchestrator
) -> None:
    await world.put(
        svc("db", healthcheck=HEALTHCHECK),
        svc("web", needs={"db": "healthy"}),
        svc("api", needs={"db": "started"}),
    )
    await orch.reconcile("db")
    await orch.reconcile("web")
    await orch.reconcile("api")
    assert world.tasks("web") == world.tasks("api") == []
    (db,) = world.tasks("db")
    # Started, probes not passed yet: api may start, web may not.
    assert {"web", "api"} <= await move(world, orch, db, TaskState.STARTING, health="starting")
    await orch.reconcile("web")
    await orch.reconcile("api")
    assert world.tasks("web") == [] and len(world.tasks("api")) == 1
    assert held_note(orch) == "waiting for db to be healthy"
    assert "web" in await move(world, orch, db, TaskState.RUNNING, health="healthy")
    await orch.reconcile("web")
    assert len(world.tasks("web")) == 1


async def test_a_dependency_without_a_health_check_is_healthy_once_running(
    world: World, orch: Orchestrator
) -> None:
    await world.put(svc("db"), svc("web", needs={"db": "healthy"}))
    await orch.reconcile("db")
    (db,) = world.tasks("db")
    await move(world, orch, db, TaskState.STARTING)
    await orch.reconcile("web")
    assert world.tasks("web") == []
    await move(world, orch, db, TaskState.RUNNING)
    await orch.reconcile("web")
    assert len(world.tasks("web")) == 1


async def test_completed_waits_for_a_job_that_succeeds(world: World, orch: Orchestrator) -> None:
    await world.put(
        svc("migrate", mode="replicated-job"), svc("web", needs={"migrate": "completed"})
    )
    await orch.reconcile("migrate")
    (run1,) = world.tasks("migrate")
    await world.report(run1, TaskState.RUNNING)
    await orch.reconcile("web")
    assert world.tasks("web") == []
    assert held_note(orch) == "waiting for migrate to be complete"
    await world.report(run1, TaskState.COMPLETE, exit_code=0)
    await orch.reconcile("migrate")  # records the run as succeeded
    job = world.informer.services["migrate"].obj
    assert job.status is not None and job.status.job is not None
    assert [r.state for r in job.status.job.runs] == ["succeeded"]
    assert "web" in woken(orch, None, job)  # the job's status change wakes it
    await orch.reconcile("web")
    assert len(world.tasks("web")) == 1


async def test_completed_never_holds_for_a_job_that_failed(
    world: World, orch: Orchestrator
) -> None:
    job = svc("migrate", mode="replicated-job", restart="none")
    await world.put(job, svc("web", needs={"migrate": "completed"}))
    await orch.reconcile("migrate")
    (task,) = world.tasks("migrate")
    await world.report(task, TaskState.FAILED, exit_code=3)
    await orch.reconcile("migrate")
    await orch.reconcile("web")
    assert world.tasks("web") == []
    assert held_note(orch) == "waiting for migrate to be complete"


async def test_completed_for_a_service_whose_tasks_do_not_restart(
    world: World, orch: Orchestrator
) -> None:
    await world.put(svc("seed", 2, restart="on-failure"), svc("web", needs={"seed": "completed"}))
    await orch.reconcile("seed")
    one, two = world.tasks("seed")
    await world.report(one, TaskState.COMPLETE, exit_code=0)
    await orch.reconcile("web")
    assert world.tasks("web") == []
    await world.report(two, TaskState.COMPLETE, exit_code=0)
    await orch.reconcile("seed")
    await orch.reconcile("web")
    assert len(world.tasks("web")) == 1


async def test_an_unknown_dependency_holds_until_it_is_applied_and_runs(
    world: World, orch: Orchestrator
) -> None:
    await world.put(svc("web", needs={"db": "started", "cache": "started"}))
    await orch.reconcile("web")
    assert held_note(orch) == (
        "waiting for db (no such service yet) to be running, "
        "cache (no such service yet) to be running"
    )
    (event,) = world.events.for_object("service/web")
    assert event.message == held_note(orch)
    db, cache = svc("db"), svc("cache")
    assert "web" in woken(orch, None, db)
    await world.put(db, cache)
    for name in ("db", "cache"):
        await orch.reconcile(name)
        (task,) = world.tasks(name)
        await world.report(task, TaskState.RUNNING)
    await orch.reconcile("web")
    assert len(world.tasks("web")) == 1


async def test_a_started_dependent_is_not_stopped_or_held_again(
    world: World, orch: Orchestrator
) -> None:
    await world.put(svc("db"), svc("web", needs={"db": "started"}))
    await orch.reconcile("db")
    (db,) = world.tasks("db")
    await world.report(db, TaskState.RUNNING)
    await orch.reconcile("web")
    (web,) = world.tasks("web")
    await world.report(web, TaskState.RUNNING)
    # The dependency fails, then is deleted: web keeps running, and scales up.
    await world.report(db, TaskState.FAILED, exit_code=1)
    await world.informer.commit(
        [Change.delete(SERVICES + "db", world.informer.services["db"].revision)]
    )
    await world.put(svc("web", 2, needs={"db": "started"}))
    await orch.reconcile("web")
    tasks = world.tasks("web")
    assert [t.slot for t in tasks] == [1, 2]
    assert all(t.desired_state == DesiredState.RUNNING for t in tasks)
    assert tasks[0].id == web.id
    assert held_note(orch) is None


async def test_services_without_dependencies_are_never_held(
    world: World, orch: Orchestrator
) -> None:
    await world.put(svc("web", 3))
    await orch.reconcile("web")
    assert len(world.tasks("web")) == 3
    assert world.events.for_object("service/web") == []
