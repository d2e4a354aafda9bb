"""The scheduler: gives every pending task a node.

One reconcile places *all* pending tasks in one pass and commits the
assignments in one transaction, so 200 new replicas cost one store write, not
200. Tasks of the same service are placed together: the static filters
(constraints, runtime available) are evaluated once per service and node.

Filters (a node must pass all): ready and ``active``; the constraints hold;
the task's runtime works there; the reservations fit in what the node has
left. Among the nodes that pass, spread: fewest live tasks of this service,
then fewest live tasks in total, then node id for a stable order.

A task that fits nowhere stays ``pending`` with a message saying why (per
reason, how many nodes), updated only when the reason changes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from shoal.models import DesiredState, Node, Service, Task, TaskState, TaskStatus
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Entry, Informer
from shoal.reconciler.loop import Controller, Done, Outcome
from shoal.reconciler.placement import host_ports, port_conflict, static_mismatch
from shoal.store.typed import Change, Object

KEY = "pending"


@dataclass
class NodeLoad:
    """What is already placed on one node."""

    tasks: int = 0
    cpus: float = 0.0
    memory: int = 0
    per_service: Counter[str] = field(default_factory=Counter)
    # Host ports published by the node's tasks: (port, protocol) → how many.
    ports: Counter[tuple[int, str]] = field(default_factory=Counter)

    def add(self, task: Task) -> None:
        reservations = task.template.resources.reservations
        self.tasks += 1
        self.cpus += reservations.cpus
        self.memory += reservations.memory
        self.per_service[task.service] += 1
        for port in host_ports(task.template):
            self.ports[port] += 1


def fits(node: Node, load: NodeLoad, task: Task) -> str | None:
    reservations = task.template.resources.reservations
    if reservations.cpus and load.cpus + reservations.cpus > node.description.cpus + 1e-9:
        return "insufficient cpus"
    if reservations.memory and load.memory + reservations.memory > node.description.memory:
        return "insufficient memory"
    return port_conflict(load.ports, task.template)


def _pending(task: Task) -> bool:
    return task.status.state == TaskState.PENDING and task.desired_state == DesiredState.RUNNING


class Scheduler(Controller):
    """Assigns pending tasks to nodes, all at once."""

    name = "scheduler"

    def __init__(self, informer: Informer, events: EventRecorder) -> None:
        self.informer = informer
        self.events = events

    def all_keys(self) -> Iterable[str]:
        return (KEY,)

    def keys_for(self, old: Object | None, new: Object | None) -> Iterable[str]:
        if isinstance(new, Task) and _pending(new):
            return (KEY,)
        if isinstance(new or old, Node):
            return (KEY,)
        if isinstance(old, Task) and old.node_id and (new is None or _freed(old, new)):
            return (KEY,)  # capacity was freed
        return ()

    async def reconcile(self, key: str) -> Outcome:
        pending = [e for e in self.informer.all_tasks() if _pending(e.obj)]
        if not pending:
            return Done()
        nodes = [e.obj for e in self.informer.nodes.values() if e.obj.schedulable]
        loads = self._loads(nodes)
        by_service: dict[str, list[Entry[Task]]] = defaultdict(list)
        for entry in pending:
            by_service[entry.obj.service].append(entry)
        now = datetime.now(UTC)
        changes: list[Change] = []
        for name, entries in sorted(by_service.items()):
            entries.sort(key=lambda e: (e.obj.slot, e.obj.node_id or "", e.obj.created_at))
            changes.extend(self._place_service(name, entries, nodes, loads, now))
        if changes:
            await self.informer.commit(changes)
        return Done()

    def _loads(self, nodes: list[Node]) -> dict[str, NodeLoad]:
        loads: dict[str, NodeLoad] = {}
        for node in nodes:
            load = NodeLoad()
            for entry in self.informer.tasks_on_node(node.id):
                task = entry.obj
                if task.desired_state == DesiredState.RUNNING and not task.status.state.terminal:
                    load.add(task)
            loads[node.id] = load
        return loads

    def _place_service(
        self,
        name: str,
        entries: list[Entry[Task]],
        nodes: list[Node],
        loads: dict[str, NodeLoad],
        now: datetime,
    ) -> list[Change]:
        service_entry = self.informer.service(name)
        service: Service | None = service_entry.obj if service_entry else None
        changes: list[Change] = []
        # Static filters once per (node, runtime) for this service.
        static: dict[tuple[str, str], str | None] = {}
        for entry in entries:
            task = entry.obj
            placement = service.spec.placement if service else None
            reasons: Counter[str] = Counter()
            candidates: list[Node] = []
            for node in nodes:
                if task.node_id and node.id != task.node_id:
                    continue
                static_key = (node.id, task.template.runtime)
                if static_key not in static:
                    static[static_key] = (
                        static_mismatch(node, task.template, placement) if placement else None
                    )
                reason = static[static_key] or fits(node, loads[node.id], task)
                if reason:
                    reasons[reason] += 1
                else:
                    candidates.append(node)
            if not candidates:
                message = _no_node_message(task, reasons, len(nodes))
                if task.status.message != message:
                    status = task.status.model_copy(update={"message": message, "timestamp": now})
                    changes.append(
                        Change.put(task.model_copy(update={"status": status}), entry.revision)
                    )
                    self.events.record(
                        f"service/{name}", "Unschedulable", f"{task.name}: {message}", True
                    )
                continue
            chosen = min(
                candidates,
                key=lambda n: (loads[n.id].per_service[name], loads[n.id].tasks, n.id),
            )
            loads[chosen.id].add(task)
            assigned = task.model_copy(
                update={
                    "node_id": chosen.id,
                    "status": TaskStatus(
                        state=TaskState.ASSIGNED, timestamp=now, message=f"assigned to {chosen.id}"
                    ),
                }
            )
            changes.append(Change.put(assigned, entry.revision))
        return changes


def _freed(old: Task, new: Object) -> bool:
    return isinstance(new, Task) and (
        (not old.status.state.terminal and new.status.state.terminal)
        or old.desired_state != new.desired_state
    )


def _no_node_message(task: Task, reasons: Counter[str], node_count: int) -> str:
    if task.node_id and not reasons:
        return f"node {task.node_id} is not ready or not active"
    if node_count == 0:
        return "no suitable node: no node is ready and active"
    detail = "; ".join(f"{count} node(s): {reason}" for reason, count in sorted(reasons.items()))
    return f"no suitable node ({detail})"
