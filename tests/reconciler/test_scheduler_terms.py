"""The scheduler across leadership terms: what changed while it followed is seen when it leads.

Changes reach a controller only while this manager leads (the manager routes
them to its running controllers). The scheduler keeps indexes of its own
(pending tasks, what each node carries); a manager that gains the lead again
must not schedule from the indexes of its previous term.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from shoal.models import (
    Node,
    NodeDescription,
    NodeState,
    NodeStatus,
    RuntimeInfo,
    Task,
    TaskState,
    TaskStatus,
)
from shoal.models.service import TaskTemplate
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.loop import ControllerRunner, LoopMetrics
from shoal.reconciler.scheduler import Scheduler
from shoal.store import MemoryStore
from shoal.store.typed import Change, Object, TypedStore


def one_cpu_node() -> Node:
    return Node(
        id="n1",
        description=NodeDescription(
            hostname="n1", runtimes=[RuntimeInfo(name="sim", available=True)], cpus=1.0
        ),
        status=NodeStatus(state=NodeState.READY),
    )


def pending(task_id: str, slot: int) -> Task:
    template = TaskTemplate.model_validate(
        {"runtime": "sim", "command": ["work"], "resources": {"reservations": {"cpus": 1}}}
    )
    return Task(
        id=task_id,
        service="web",
        slot=slot,
        template=template,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        status=TaskStatus(state=TaskState.PENDING),
    )


async def test_a_manager_leading_again_schedules_what_was_created_while_it_followed() -> None:
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    scheduler = Scheduler(informer, EventRecorder())
    metrics = LoopMetrics(CollectorRegistry())
    leading = False

    def route(old: Object | None, new: Object | None) -> None:  # as the manager routes
        if leading:
            list(scheduler.keys_for(old, new))

    informer.subscribe(route)

    async def lead() -> None:
        """A new term: the manager starts a runner for each controller."""
        nonlocal leading
        leading = True
        runner = ControllerRunner(scheduler, metrics)
        runner.start()
        await runner.aclose()  # the test calls reconcile itself

    try:
        await informer.commit([Change.put(one_cpu_node(), 0)])
        # Term 1: t1 takes the node's only cpu.
        await lead()
        await informer.commit([Change.put(pending("t1", 1), 0)])
        await scheduler.reconcile("pending")
        assert informer.tasks["t1"].obj.node_id == "n1"

        # Following: the other manager's term. t1 fails (its cpu is free again)
        # and t2 is created, pending.
        leading = False
        entry = informer.tasks["t1"]
        failed = entry.obj.model_copy(update={"status": TaskStatus(state=TaskState.FAILED)})
        await informer.commit([Change.put(failed, entry.revision), Change.put(pending("t2", 2), 0)])

        await lead()  # term 2
        await scheduler.reconcile("pending")

        t2 = informer.tasks["t2"].obj
        assert (t2.node_id, t2.status.state) == ("n1", TaskState.ASSIGNED)
    finally:
        await informer.aclose()
