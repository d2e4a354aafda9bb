"""The orchestrator on its own: slots, restart decisions, scale-down, global services.

Each test writes a service (and nodes) into a memory store, plays the agents by
moving task states, calls ``reconcile`` and checks the tasks the store holds.
Time is a ``ManualClock``: restart delays and windows are checked without waiting.
"""

from __future__ import annotations

import pytest

from shoal.models import Availability, DesiredState, TaskState, TaskStatus
from shoal.models.rollout import UpdateState, UpdateStatus
from shoal.models.service import ServiceStatus
from shoal.reconciler.loop import Done, Requeue
from shoal.reconciler.orchestrator import HISTORY_PER_SLOT, Orchestrator
from shoal.reconciler.scheduler import Scheduler
from shoal.store.typed import SERVICES, Change
from tests.reconciler.world import World, node, service


@pytest.fixture(params=["born-pending", "born-placed"])
def orch(world: World, request: pytest.FixtureRequest) -> Orchestrator:
    """As the manager wires it (new tasks placed at birth by the scheduler), and without."""
    placer = Scheduler(world.informer, world.events) if request.param == "born-placed" else None
    return Orchestrator(world.informer, world.events, clock=world.clock, placer=placer)


async def fail_current(world: World, slot: int = 1, *, ran: float = 1.0) -> None:
    """The slot's current task runs for ``ran`` seconds, then fails."""
    (task,) = [t for t in world.live() if t.slot == slot]
    await world.report(task, TaskState.RUNNING)
    started = world.clock.now()
    world.clock.advance(ran)
    await world.report(task, TaskState.FAILED, started_at=started, exit_code=1)


async def test_replicated_service_gets_one_pending_task_per_slot(
    world: World, orch: Orchestrator
) -> None:
    await world.put(service(replicas=3))
    assert await orch.reconcile("web") == Done()
    tasks = world.tasks()
    assert [t.slot for t in tasks] == [1, 2, 3]
    assert {t.status.state for t in tasks} == {TaskState.PENDING}
    assert {t.node_id for t in tasks} == {None}
    # Level-triggered: a second pass over the same state changes nothing.
    await orch.reconcile("web")
    assert world.tasks() == tasks


async def test_scale_down_shuts_down_the_highest_slots_and_deletes_them_once_ended(
    world: World, orch: Orchestrator
) -> None:
    await world.put(service(replicas=4))
    await orch.reconcile("web")
    for task in world.tasks():
        await world.report(task, TaskState.RUNNING)
    await world.put(service(replicas=2))
    await orch.reconcile("web")
    by_slot = {t.slot: t for t in world.tasks()}
    assert [s for s, t in by_slot.items() if t.desired_state == DesiredState.RUNNING] == [1, 2]
    assert by_slot[3].desired_state == by_slot[4].desired_state == DesiredState.SHUTDOWN
    assert by_slot[3].status.state == TaskState.RUNNING  # the agent has yet to stop it
    for slot in (3, 4):
        await world.report(by_slot[slot], TaskState.SHUTDOWN)
    await orch.reconcile("web")
    assert [t.slot for t in world.tasks()] == [1, 2]


async def test_scale_down_of_tasks_never_placed_ends_them_at_once(
    world: World, orch: Orchestrator
) -> None:
    await world.put(service(replicas=2))
    await orch.reconcile("web")
    await world.put(service(replicas=0))
    await orch.reconcile("web")
    # Nobody runs a pending task: there is nothing to stop and nobody to wait for.
    assert world.tasks() == []
    assert [e.reason for e in world.events.for_object("service/web")] == []


async def test_a_failed_task_is_restarted_after_the_delay_doubling_per_failure(
    world: World, orch: Orchestrator
) -> None:
    await world.put(service(restart={"delay": "2s"}))
    await orch.reconcile("web")
    waits = []
    for _ in range(3):
        await fail_current(world)
        outcome = await orch.reconcile("web")
        assert isinstance(outcome, Requeue)
        waits.append(outcome.after)
        assert len(world.live()) == 1 and world.live()[0].status.state == TaskState.FAILED
        world.clock.advance(outcome.after)
        assert await orch.reconcile("web") == Done()
        (new,) = [t for t in world.live() if t.status.state == TaskState.PENDING]
        assert new.slot == 1
    assert waits == [2.0, 4.0, 8.0]
    assert [t.attempt for t in world.tasks()] == [0, 1, 2, 3]


async def test_a_task_that_ran_long_enough_resets_the_back_off(
    world: World, orch: Orchestrator
) -> None:
    await world.put(service(restart={"delay": "2s"}))
    await orch.reconcile("web")
    for _ in range(2):
        await fail_current(world)
        world.clock.advance(60)
        await orch.reconcile("web")
    assert world.live()[0].failure_streak == 2
    await fail_current(world, ran=120)  # healthy for two minutes before failing
    outcome = await orch.reconcile("web")
    assert outcome == Requeue(2.0)


@pytest.mark.parametrize(
    ("condition", "ending", "restarted"),
    [
        pytest.param("any", TaskState.COMPLETE, True, id="any-complete"),
        pytest.param("on-failure", TaskState.COMPLETE, False, id="on-failure-complete"),
        pytest.param("on-failure", TaskState.FAILED, True, id="on-failure-failed"),
        pytest.param("none", TaskState.FAILED, False, id="none-failed"),
        pytest.param("none", TaskState.ORPHANED, True, id="none-orphaned"),
    ],
)
async def test_restart_condition(
    world: World, orch: Orchestrator, condition: str, ending: TaskState, restarted: bool
) -> None:
    await world.put(service(restart={"condition": condition, "delay": "0s"}))
    await orch.reconcile("web")
    (task,) = world.tasks()
    await world.report(task, TaskState.RUNNING)
    await world.report(task, ending)
    await orch.reconcile("web")
    assert len(world.tasks()) == (2 if restarted else 1)
    if not restarted:
        assert "restart condition is" in orch.reports.notes("web")["1"]


@pytest.mark.parametrize("max_attempts", [1, 3, 6, 10])
async def test_max_attempts_without_window(
    world: World, orch: Orchestrator, max_attempts: int
) -> None:
    await world.put(service(restart={"delay": "0s", "maxAttempts": max_attempts}))
    await orch.reconcile("web")
    for _ in range(max_attempts + 3):
        await fail_current(world)
        await orch.reconcile("web")
        if world.live()[-1].status.state == TaskState.FAILED:
            break
    assert world.live()[-1].attempt == max_attempts  # the first run plus max_attempts restarts
    assert "gave up" in orch.reports.notes("web")["1"]


@pytest.mark.parametrize("max_attempts", [2, 7, 12])
async def test_max_attempts_within_a_window_gives_up_however_little_history_is_kept(
    world: World, orch: Orchestrator, max_attempts: int
) -> None:
    await world.put(service(restart={"delay": "1s", "maxAttempts": max_attempts, "window": "1h"}))
    await orch.reconcile("web")
    restarts = 0
    for _ in range(max_attempts + 5):
        await fail_current(world)
        while isinstance(outcome := await orch.reconcile("web"), Requeue):
            world.clock.advance(outcome.after)  # the back-off delay, doubling
        if world.live()[-1].status.state == TaskState.FAILED:
            break
        restarts += 1
    assert restarts == max_attempts
    assert "gave up" in orch.reports.notes("web")["1"]
    assert len(world.tasks()) <= HISTORY_PER_SLOT + 1  # history stays bounded all the same


async def test_restarts_older_than_the_window_stop_counting(
    world: World, orch: Orchestrator
) -> None:
    await world.put(service(restart={"delay": "0s", "maxAttempts": 2, "window": "60s"}))
    await orch.reconcile("web")
    for _ in range(2):
        await fail_current(world)
        await orch.reconcile("web")
    await fail_current(world)
    await orch.reconcile("web")
    assert world.live()[-1].status.state == TaskState.FAILED  # two restarts within 60 s: done
    world.clock.advance(61)
    await orch.reconcile("web")
    assert world.live()[-1].status.state == TaskState.PENDING  # the window slid past them


async def test_a_template_change_replaces_live_tasks(world: World, orch: Orchestrator) -> None:
    await world.put(service(replicas=2))
    await orch.reconcile("web")
    old = world.tasks()
    for task in old:
        await world.report(task, TaskState.RUNNING)
    await world.put(service(replicas=2, env={"V": "2"}))
    await orch.reconcile("web")
    # stop-first (the default order): the new tasks start once the old ones stopped.
    assert {t.desired_state for t in world.tasks()} == {DesiredState.SHUTDOWN}
    for task in old:
        await world.report(task, TaskState.SHUTDOWN)
    await orch.reconcile("web")
    live = world.live()
    assert sorted(t.slot for t in live) == [1, 2]
    assert {t.id for t in live}.isdisjoint(t.id for t in old)
    assert all(t.template.env == {"V": "2"} for t in live)
    assert all(t.attempt == 0 for t in live)  # an update is not a restart


async def test_history_per_slot_is_bounded(world: World, orch: Orchestrator) -> None:
    await world.put(service(restart={"delay": "0s"}))
    await orch.reconcile("web")
    for _ in range(HISTORY_PER_SLOT + 4):
        await fail_current(world)
        await orch.reconcile("web")
    await orch.reconcile("web")
    assert len(world.tasks()) == HISTORY_PER_SLOT + 1
    assert world.live()[-1].attempt == HISTORY_PER_SLOT + 4


async def test_deleting_the_service_shuts_down_then_deletes_its_tasks(
    world: World, orch: Orchestrator
) -> None:
    await world.put(service(replicas=2))
    await orch.reconcile("web")
    for task in world.tasks():
        await world.report(task, TaskState.RUNNING)
    await world.informer.commit([Change.delete(SERVICES + "web", None)])
    await orch.reconcile("web")
    assert {t.desired_state for t in world.tasks()} == {DesiredState.SHUTDOWN}
    for task in world.tasks():
        await world.report(task, TaskState.SHUTDOWN)
    await orch.reconcile("web")
    assert world.tasks() == []


async def test_deleting_a_service_whose_tasks_wait_for_a_node_deletes_them_in_one_pass(
    world: World, orch: Orchestrator
) -> None:
    await world.put(service(replicas=500))
    await orch.reconcile("web")  # no node yet: all wait
    await world.put(node("n1"))
    for task in world.tasks()[::50]:  # ten run on n1, here and there among the slots
        entry = world.informer.tasks[task.id]
        running = task.model_copy(update={"node_id": "n1", "status": TaskStatus(state="running")})
        await world.informer.commit([Change.put(running, entry.revision)])
    await world.informer.commit([Change.delete(SERVICES + "web", None)])
    await orch.reconcile("web")
    # Nobody ran the others: no shutdown to write or wait for, no event for each.
    assert [(t.node_id, t.desired_state) for t in world.tasks()] == [
        ("n1", DesiredState.SHUTDOWN)
    ] * 10
    assert len(world.events.for_object("service/web")) == 10  # TaskShutdown, one each


async def test_global_service_has_one_task_per_eligible_node(
    world: World, orch: Orchestrator
) -> None:
    await world.put(
        node("n1", labels={"zone": "a"}),
        node("n2", labels={"zone": "a"}),
        node("n3", labels={"zone": "b"}),
        node("n4", labels={"zone": "a"}, availability=Availability.DRAIN),
    )
    await world.put(service(mode="global", constraints=["node.labels.zone == a"]))
    await orch.reconcile("web")
    assert sorted(t.node_id or "" for t in world.tasks()) == ["n1", "n2"]
    assert {t.slot for t in world.tasks()} == {0}
    for task in world.tasks():
        await world.report(task, TaskState.ASSIGNED)
        await world.report(task, TaskState.RUNNING)
    # n2 starts draining: its task is shut down, and no replacement goes anywhere else.
    await world.put(node("n2", labels={"zone": "a"}, availability=Availability.DRAIN))
    await orch.reconcile("web")
    live = world.live()
    assert [t.node_id for t in live] == ["n1"]
    # A node that joins later gets its task.
    await world.put(node("n5", labels={"zone": "a"}))
    await orch.reconcile("web")
    assert sorted(t.node_id or "" for t in world.live()) == ["n1", "n5"]


async def test_a_paused_node_keeps_its_global_task(world: World, orch: Orchestrator) -> None:
    await world.put(node("n1"))
    await world.put(service(mode="global"))
    await orch.reconcile("web")
    (task,) = world.tasks()
    await world.report(task, TaskState.RUNNING)
    await world.put(node("n1", availability=Availability.PAUSE))
    await orch.reconcile("web")
    assert [t.id for t in world.live()] == [task.id]


@pytest.mark.parametrize(
    ("update", "wakes"),
    [
        pytest.param(None, False, id="no-rollout"),
        pytest.param(UpdateState.COMPLETED, False, id="rollout-completed"),
        pytest.param(UpdateState.UPDATING, True, id="rollout-under-way"),
        pytest.param(UpdateState.ROLLBACK_STARTED, True, id="rollback-under-way"),
    ],
)
async def test_a_task_starting_to_run_wakes_its_service_only_for_a_rollout_under_way(
    world: World, orch: Orchestrator, update: UpdateState | None, wakes: bool
) -> None:
    # A large apply reports thousands of tasks running: each report waking a pass
    # over the whole service made those passes the manager's main load.
    svc = service(replicas=2)
    if update is not None:
        status = ServiceStatus(
            revision=2,
            update=UpdateStatus(state=update, revision=2, started_at=world.clock.now()),
        )
        svc = svc.model_copy(update={"status": status})
    await world.put(svc, node("n1"))
    await orch.reconcile("web")
    task = world.tasks()[0]
    await world.put(task.model_copy(update={"node_id": "n1"}))  # the scheduler placed it
    starting = await world.report(task, TaskState.STARTING)
    running = await world.report(starting, TaskState.RUNNING)
    assert set(orch.keys_for(starting, running)) == ({"web"} if wakes else set())
    # Whatever the rollout, a task that ends is the orchestrator's business.
    failed = await world.report(running, TaskState.FAILED)
    assert set(orch.keys_for(running, failed)) == {"web"}
