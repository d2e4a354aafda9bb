"""The node monitor on its own (the basics; the disruption guard has tests of its own).

Heartbeats live in a ``HeartbeatTracker``; ``restart(extra)`` with a negative
``extra`` makes every node silent for that long without waiting for it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shoal.models import NodeState, Task, TaskState, TaskStatus
from shoal.reconciler.loop import Requeue
from shoal.reconciler.nodemonitor import HeartbeatTracker, NodeMonitor
from tests.reconciler.world import World, node, service

GRACE = 5.0


@pytest.fixture
def heartbeats() -> HeartbeatTracker:
    return HeartbeatTracker()


@pytest.fixture
def monitor(world: World, heartbeats: HeartbeatTracker) -> NodeMonitor:
    return NodeMonitor(world.informer, world.events, heartbeats, GRACE)


def task_on(node_id: str, task_id: str, state: TaskState) -> Task:
    return Task(
        id=task_id,
        service="web",
        slot=1,
        node_id=node_id,
        template=service().spec.template,
        created_at=datetime.now(UTC),
        status=TaskStatus(state=state),
    )


async def test_nodes_heard_from_stay_ready_and_the_monitor_looks_again_in_time(
    world: World, monitor: NodeMonitor, heartbeats: HeartbeatTracker
) -> None:
    await world.put(node("n1"), node("n2"))
    heartbeats.beat("n1")
    heartbeats.beat("n2")
    outcome = await monitor.reconcile("nodes")
    assert isinstance(outcome, Requeue) and 0 < outcome.after <= GRACE + 0.1
    assert {n.obj.status.state for n in world.informer.nodes.values()} == {NodeState.READY}


async def test_a_silent_node_goes_down_and_its_live_tasks_are_orphaned(
    world: World, monitor: NodeMonitor, heartbeats: HeartbeatTracker
) -> None:
    await world.put(node("n1"), node("n2"))
    await world.put(
        task_on("n2", "live", TaskState.RUNNING),
        task_on("n2", "done", TaskState.COMPLETE),
        task_on("n1", "elsewhere", TaskState.RUNNING),
    )
    heartbeats.restart(-(GRACE + 1))  # nobody heard from for longer than the grace ...
    heartbeats.beat("n1")  # ... but n1
    await monitor.reconcile("nodes")
    nodes = {i: e.obj for i, e in world.informer.nodes.items()}
    assert nodes["n1"].status.state == NodeState.READY
    assert nodes["n2"].status.state == NodeState.DOWN
    assert "no heartbeat for" in nodes["n2"].status.message
    states = {i: e.obj.status.state for i, e in world.informer.tasks.items()}
    assert states == {
        "live": TaskState.ORPHANED,
        "done": TaskState.COMPLETE,  # an ended task stays as it ended
        "elsewhere": TaskState.RUNNING,
    }
    assert [e.reason for e in world.events.for_object("node/n2")] == ["NodeDown"]


async def test_a_fresh_term_gives_every_node_a_full_grace(
    world: World, monitor: NodeMonitor, heartbeats: HeartbeatTracker
) -> None:
    await world.put(node("n1"))
    heartbeats.restart()  # a new leader: nobody could have heartbeated to it yet
    await monitor.reconcile("nodes")
    assert world.informer.nodes["n1"].obj.status.state == NodeState.READY
