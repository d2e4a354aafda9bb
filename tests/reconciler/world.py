"""A control plane without agents: memory store, informer, events and a manual clock.

Controller tests drive one controller at a time through this world: they write
services and nodes, play the agents' part by moving task states, call
``reconcile`` themselves and look at what ended up in the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from shoal.clock import ManualClock
from shoal.models import (
    Availability,
    Node,
    NodeDescription,
    NodeSpec,
    NodeState,
    NodeStatus,
    RuntimeInfo,
    Service,
    Task,
    TaskState,
    TaskStatus,
)
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.store import MemoryStore
from shoal.store.typed import Change, TypedStore, decode


def service(
    name: str = "web",
    replicas: int | None = 1,
    *,
    mode: str = "replicated",
    restart: dict[str, Any] | None = None,
    constraints: list[str] | None = None,
    **template: Any,
) -> Service:
    spec: dict[str, Any] = {
        "mode": mode,
        "template": {"runtime": "sim", "command": ["work"], **template},
        "restartPolicy": restart or {},
        "placement": {"constraints": constraints or []},
    }
    if mode != "global":
        spec["replicas"] = replicas
    return Service.model_validate({"metadata": {"name": name, "generation": 1}, "spec": spec})


def node(
    node_id: str,
    *,
    state: NodeState = NodeState.READY,
    availability: Availability = Availability.ACTIVE,
    labels: dict[str, str] | None = None,
    runtimes: tuple[str, ...] = ("sim", "process"),
    cpus: float = 4.0,
    memory: int = 8 << 30,
) -> Node:
    return Node(
        id=node_id,
        description=NodeDescription(
            hostname=node_id,
            labels=labels or {},
            runtimes=[RuntimeInfo(name=r, available=True) for r in runtimes],
            cpus=cpus,
            memory=memory,
        ),
        spec=NodeSpec(availability=availability),
        status=NodeStatus(state=state),
    )


class World:
    def __init__(self, store: MemoryStore, informer: Informer) -> None:
        self.store = store
        self.informer = informer
        self.events = EventRecorder()
        self.clock = ManualClock()

    async def put(self, *objs: Service | Node | Task) -> None:
        """Write objects as an operator (or another manager) would: no compare."""
        await self.informer.commit([Change.put(obj, None) for obj in objs])

    def tasks(self, service_name: str = "web") -> list[Task]:
        return sorted(
            (e.obj for e in self.informer.tasks_of_service(service_name)),
            key=lambda t: (t.slot, t.node_id or "", t.attempt, t.created_at),
        )

    def live(self, service_name: str = "web") -> list[Task]:
        return [t for t in self.tasks(service_name) if t.desired_state == "running"]

    async def report(self, task: Task, state: TaskState, **fields: Any) -> Task:
        """Play the agent: the task's observed state moves to ``state``, stamped now."""
        entry = self.informer.tasks[task.id]
        status = TaskStatus(state=state, timestamp=self.clock.now(), **fields)
        moved = entry.obj.model_copy(update={"status": status})
        await self.informer.commit([Change.put(moved, entry.revision)])
        return moved

    async def stored(self) -> dict[str, object]:
        """Every object as the store (not the cache) has it."""
        kvs, _ = await self.store.range("/")
        return {kv.key: decode(kv) for kv in kvs if decode(kv) is not None}


@asynccontextmanager
async def open_world() -> AsyncIterator[World]:
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    try:
        yield World(store, informer)
    finally:
        await informer.aclose()
        await store.aclose()
