"""Large passes give the event loop back, so heartbeats and lease renewals are served.

The memory store never suspends, so without pacing a reconcile over thousands
of slots would run from start to end without letting any other coroutine in.
A ticker coroutine stands in for the heartbeats: it must get turns while the
pass is still running, and the pass must still do all of its work.
"""

from __future__ import annotations

import asyncio

from shoal.models import TaskState
from shoal.reconciler.orchestrator import Orchestrator
from shoal.reconciler.pacing import Pacer
from shoal.reconciler.scheduler import KEY, PASS, Scheduler
from tests.reconciler.world import World, node, service

REPLICAS = 5000


async def ticks_during(work: asyncio.Future[object]) -> int:
    """How many times another coroutine ran before ``work`` finished."""
    ticks = 0
    while not work.done():
        ticks += 1
        await asyncio.sleep(0)
    await work
    return ticks - 1  # the first turn came before ``work`` started


async def test_a_pacer_yields_once_its_slice_is_used_up() -> None:
    pace = Pacer(slice=0.0)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.ensure_future(other())
    await pace()
    assert ran == ["other"]
    await task


async def test_a_big_orchestrator_pass_lets_other_coroutines_run(world: World) -> None:
    await world.put(service(replicas=REPLICAS))
    orchestrator = Orchestrator(world.informer, world.events, clock=world.clock)
    ticks = await ticks_during(asyncio.ensure_future(orchestrator.reconcile("web")))
    assert ticks > 0
    tasks = world.live()
    assert sorted(t.slot for t in tasks) == list(range(1, REPLICAS + 1))
    assert {t.status.state for t in tasks} == {TaskState.PENDING}


async def test_a_big_scheduling_backlog_is_placed_in_passes_that_yield(world: World) -> None:
    await world.put(*(node(f"n{i:02d}") for i in range(50)), service(replicas=REPLICAS))
    await Orchestrator(world.informer, world.events, clock=world.clock).reconcile("web")
    scheduler = Scheduler(world.informer, world.events)
    # As the manager routes every change: the scheduler keeps its pending index from them.
    world.informer.subscribe(lambda old, new: list(scheduler.keys_for(old, new)) and None)
    passes = 0
    ticks = 0
    while any(t.status.state == TaskState.PENDING for t in world.live()):
        passes += 1
        ticks += await ticks_during(asyncio.ensure_future(scheduler.reconcile(KEY)))
    assert passes == -(-REPLICAS // PASS)  # at most PASS tasks per pass
    assert ticks > 0
    per_node: dict[str, int] = {}
    for task in world.live():
        assert task.status.state == TaskState.ASSIGNED and task.node_id
        per_node[task.node_id] = per_node.get(task.node_id, 0) + 1
    assert set(per_node.values()) == {REPLICAS // 50}  # spread evenly, as in one pass


async def test_scheduling_a_task_does_not_rerun_the_orchestrator_but_its_end_does(
    world: World,
) -> None:
    await world.put(node("n1"), service(replicas=1))
    orchestrator = Orchestrator(world.informer, world.events, clock=world.clock)
    await orchestrator.reconcile("web")
    pending = world.live()[0]
    scheduler = Scheduler(world.informer, world.events)
    keys: list[str] = []
    world.informer.subscribe(lambda old, new: keys.extend(orchestrator.keys_for(old, new)))
    await scheduler.reconcile(KEY)
    assigned = world.live()[0]
    assert assigned.id == pending.id and assigned.node_id == "n1"
    assert keys == []  # a full pass over the service would find nothing to do
    await world.report(assigned, TaskState.FAILED)
    assert keys == ["web"]
