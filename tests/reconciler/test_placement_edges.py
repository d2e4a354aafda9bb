"""Placement at the edges: what overlaps a placement, and what a new term finds.

A pending global task must not compete with itself for its node; room that a
failed write gives back wakes the tasks parked for want of it; a node drained
while new tasks are being placed gets none of them; a service deleted and
created again while this manager followed is placed as any other.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from shoal.errors import StoreUnavailableError
from shoal.models import Availability, TaskState
from shoal.reconciler.loop import ControllerRunner, LoopMetrics
from shoal.reconciler.scheduler import KEY
from shoal.store.typed import Change
from tests.reconciler.test_born_placed import Plane, limited, one_room_two_takers, pending, plane
from tests.reconciler.world import node, service

__all__ = ["plane"]  # the fixture, shared with test_born_placed

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PORT = {"ports": [{"published": 9100, "target": 9100}]}


async def test_a_pending_global_task_takes_its_own_nodes_port_and_last_room(
    plane: Plane,
) -> None:
    await plane.world.put(limited("n1", 1, runtimes=("docker",)))
    exporter = service("exporter", mode="global", runtime="docker", image="x", **PORT)
    await plane.world.put(exporter)
    waiting = pending("exporter-n1", "exporter", 0).model_copy(
        update={"node_id": "n1", "template": exporter.spec.template}
    )
    await plane.world.put(waiting)  # born pending, its node named (no placer then)
    await plane.scheduler.reconcile(KEY)
    task = plane.informer.tasks["exporter-n1"].obj
    assert task.status.state == TaskState.ASSIGNED, task.status.message
    assert task.node_id == "n1"


async def test_room_a_failed_write_gives_back_goes_to_the_task_parked_for_it(
    plane: Plane,
) -> None:
    await one_room_two_takers(plane)
    release = plane.store.hold_next()
    creating = asyncio.create_task(plane.orchestrator.reconcile("web"))
    await plane.store.waiting.wait()  # web's task placed on n1, its write in flight
    await plane.scheduler.reconcile(KEY)  # waits-1 fits nowhere: parked
    assert plane.informer.tasks["waits-1"].obj.node_id is None
    plane.store.fail_next = True
    release.set()
    with pytest.raises(StoreUnavailableError):
        await creating  # the write failed: n1 is free again
    await plane.scheduler.reconcile(KEY)
    assert plane.informer.tasks["waits-1"].obj.node_id == "n1"


async def test_a_node_drained_while_new_tasks_are_placed_gets_none_of_them(
    plane: Plane,
) -> None:
    await plane.world.put(node("n1"), node("n2"))
    web = service("web", 4)
    await plane.world.put(web)
    tasks = [pending(f"web-{slot}", "web", slot) for slot in range(1, 5)]
    drained = node("n1", availability=Availability.DRAIN)
    calls = 0

    async def pace() -> None:  # the placing yields; n1 is drained meanwhile
        nonlocal calls
        calls += 1
        if calls == 3:
            await plane.world.put(drained)

    placed = await plane.scheduler.place_new(web, tasks, NOW, pace)  # type: ignore[arg-type]
    assert [t.id for t in placed] == [t.id for t in tasks]
    assert {t.node_id for t in placed} <= {"n2", None}
    assert {t.status.state for t in placed if t.node_id is None} <= {TaskState.PENDING}
    await plane.informer.commit([Change.put(t, 0) for t in placed])
    plane.scheduler.release(placed)
    # What n1 was given back is not held against it: undrained, it takes two again.
    await plane.world.put(node("n1"))
    await plane.scheduler.reconcile(KEY)
    assert plane.per_node("web") == {"n1": 2, "n2": 2}


async def test_a_service_created_again_while_another_manager_led_is_placed(
    plane: Plane,
) -> None:
    await plane.world.put(node("n1"))
    await plane.world.put(service("web", 1))
    await plane.scheduler.reconcile(KEY)  # the first term: the index is built
    await plane.informer.commit([Change.delete("/services/web", None)])
    plane.leading = False  # another manager leads and creates web again
    await plane.world.put(service("web", 1))
    plane.leading = True  # this manager leads again: a runner starts each controller
    runner = ControllerRunner(plane.scheduler, LoopMetrics(CollectorRegistry()))
    runner.start()
    await runner.aclose()
    await plane.orchestrator.reconcile("web")
    assert [t.status.state for t in plane.tasks()] == [TaskState.ASSIGNED]
