"""The scheduler: gives every pending task a node, and new tasks theirs as they are born.

The orchestrator's new tasks are placed as they are created (``place_new``, by
the same filters and spread as a pass): written once, ``assigned``; only what
fits nowhere then is born ``pending`` for the passes below. A placement decided
but not written yet is *reserved* in the node loads, so two passes that overlap
(the orchestrator's and this one's) never give one node's last room, port or
unit twice; it is settled when the write comes back and released when it does
not (which wakes the tasks parked for want of that room).

One reconcile places up to ``PASS`` pending tasks in one pass and commits the
assignments together (in chunks the store takes), so 200 new replicas cost one
store write, not 200; more pending tasks than that are placed by the passes
that follow at once, so a pass never holds the event loop for long (it also
yields as it goes). Tasks of the same service are placed together: the static
filters (constraints, runtime available) are evaluated once per service and node.

Filters (a node must pass all): ready and ``active``; the constraints hold;
the task's runtime works there; the reservations fit in what the node has
left (cpus, memory, free units of each generic resource); its host ports are
free; fewer live tasks of the service than ``maxReplicasPerNode``. Among the
nodes that pass, spread (``shoal.reconciler.spread``): over the values of the
preference labels first, if the service has any, then fewest live tasks of
this service, then fewest live tasks in total, then node id for a stable order.

A task given a node is also given units of the generic resources it reserves
(``Task.resources``: the node's lowest free units, in the order it listed
them); they are held until the task is terminal, even while it stops, so no
two tasks ever hold one GPU at once.

A node takes at most the tasks its agent advertised (``--max-tasks``). A task
that fits nowhere stays ``pending`` with a message saying why (per reason, how
many nodes), updated only when the reason changes; the service gets one
``Unschedulable`` event per reason, updated in place with how many of its tasks
wait for it (``100000 tasks pending: …``), not one event per task or pass.

A task that fits nowhere is *parked*: no pass looks at it again until
something that could change the answer changes: a node (joins, leaves,
changes state, availability, labels or resources), room freed on a node (a
task ended, is stopping or was deleted), or its service (its placement). So
100,000 tasks that wait cost one look each, not one per pass; a pass stops
after ``PASS`` changes (placements and new messages), and tasks that need no
write cost only the look.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from shoal.models import DesiredState, Node, Service, Task, TaskState, TaskStatus
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Entry, Informer
from shoal.reconciler.loop import Controller, Done, Outcome, Requeue
from shoal.reconciler.pacing import Pacer
from shoal.reconciler.placement import host_ports, port_conflict, static_mismatch
from shoal.reconciler.spread import Rank, SpreadTree
from shoal.store.typed import Change, Object

KEY = "pending"
# Changes (placements, new messages) per pass; the rest wait for the next pass, right after.
PASS = 2000


@dataclass
class NodeLoad:
    """What is already placed on one node."""

    tasks: int = 0
    cpus: float = 0.0
    memory: int = 0
    per_service: Counter[str] = field(default_factory=Counter)
    # Host ports published by the node's tasks: (port, protocol) → how many.
    ports: Counter[tuple[int, str]] = field(default_factory=Counter)
    # Generic resource units held by the node's tasks: kind → unit → how many tasks.
    units: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, task: Task, sign: int = 1) -> None:
        reservations = task.template.resources.reservations
        self.tasks += sign
        self.cpus += sign * reservations.cpus
        self.memory += sign * reservations.memory
        self.per_service[task.service] += sign
        for port in host_ports(task.template):
            self.ports[port] += sign

    def hold(self, task: Task, sign: int = 1) -> None:
        for kind, units in task.resources.items():
            held = self.units.setdefault(kind, Counter())
            for unit in units:
                held[unit] += sign

    def free_units(self, node: Node, kind: str) -> list[str]:
        held = self.units.get(kind)
        units = node.description.generic_resources.get(kind, [])
        return [u for u in units if not held or held[u] <= 0]


def fits(node: Node, load: NodeLoad, task: Task, max_per_node: int = 0) -> str | None:
    limit = node.description.max_tasks
    if limit is not None and load.tasks >= limit:
        return f"task limit reached (--max-tasks {limit})"
    if max_per_node and load.per_service[task.service] >= max_per_node:
        return f"max replicas per node reached (maxReplicasPerNode {max_per_node})"
    reservations = task.template.resources.reservations
    if reservations.cpus and load.cpus + reservations.cpus > node.description.cpus + 1e-9:
        return "insufficient cpus"
    if reservations.memory and load.memory + reservations.memory > node.description.memory:
        return "insufficient memory"
    for kind, needed in sorted(reservations.generic.items()) if reservations.generic else ():
        free = len(load.free_units(node, kind))
        if free < needed:
            total = len(node.description.generic_resources.get(kind, []))
            if not total:
                return f"no {kind} resource"
            return f"insufficient {kind} ({needed} needed, {free} of {total} free)"
    return port_conflict(load.ports, task.template)


def take_units(node: Node, load: NodeLoad, task: Task) -> dict[str, list[str]]:
    """The generic resource units ``task`` gets on ``node`` (it fits there)."""
    generic = task.template.resources.reservations.generic
    return {kind: load.free_units(node, kind)[:needed] for kind, needed in generic.items()}


def _pending(task: Task) -> bool:
    return task.status.state == TaskState.PENDING and task.desired_state == DesiredState.RUNNING


def _loads_node(task: Task) -> bool:
    """Whether ``task`` takes up room on its node: not before it is placed there (a
    global service's pending task names its node already, and must not compete with
    itself for that node's room or ports)."""
    return (
        task.node_id is not None
        and task.desired_state == DesiredState.RUNNING
        and task.status.state not in _UNPLACED
        and not task.status.state.terminal
    )


_UNPLACED = (TaskState.NEW, TaskState.PENDING)


def _holds_units(task: Task) -> bool:
    """Whether ``task`` holds generic resource units: until it is terminal, stopping or not."""
    return bool(task.resources) and task.node_id is not None and not task.status.state.terminal


# What decides whether a task fits a node, beyond the service's constraints:
# tasks of one shape compete for the same room, so they share one heap.
Shape = tuple[str, float, int, tuple[tuple[str, int], ...], tuple[tuple[int, str], ...]]


def shape_of(task: Task) -> Shape:
    reservations = task.template.resources.reservations
    return (
        task.template.runtime,
        reservations.cpus,
        reservations.memory,
        tuple(sorted(reservations.generic.items())),
        tuple(host_ports(task.template)),
    )


class Scheduler(Controller):
    """Assigns pending tasks to nodes, all at once."""

    name = "scheduler"

    def __init__(self, informer: Informer, events: EventRecorder) -> None:
        self.informer = informer
        self.events = events
        # Indexes kept up to date from every task change (see ``keys_for``), so a
        # pass costs what is pending, not what exists: pending task ids, and what
        # each node already carries. Built from the informer on first use.
        self._pending: set[str] = set()
        # Pending tasks that fit nowhere when last looked at, per service: not
        # looked at again until something that could change that changes.
        self._parked: dict[str, set[str]] = defaultdict(set)
        # Pending tasks per service and status message (the Unschedulable counts).
        self._waiting: dict[str, Counter[str]] = defaultdict(Counter)
        self._loads: dict[str, NodeLoad] = defaultdict(NodeLoad)
        # Placements decided (by a pass here or by ``place_new``) whose write has not come
        # back yet, by task id: already counted in ``_loads``, so two passes that overlap
        # (the orchestrator's and this one's, or two of the orchestrator's) never give one
        # node's last room, port or unit twice. Settled when the write comes back
        # (``_track``), released when it does not (``release``).
        self._reserved: dict[str, Task] = {}
        self._indexed = False
        # Counts the wake-ups: a pass that saw one happen parks nothing it looked at.
        self._wakes = 0
        # Services seen deleted: their tasks are the orchestrator's to remove.
        self._deleted: set[str] = set()

    def starting(self) -> None:
        # While this manager followed, no change reached ``keys_for``: the
        # indexes miss what was created, placed and ended meanwhile.
        self._indexed = False

    def all_keys(self) -> Iterable[str]:
        return (KEY,)

    def keys_for(self, old: Object | None, new: Object | None) -> Iterable[str]:
        obj = new or old
        if isinstance(obj, Node):
            if isinstance(old, Node) and isinstance(new, Node) and not _node_changed(old, new):
                return ()
            self._unpark()
            return (KEY,)
        if isinstance(obj, Service):
            if new is None:
                self._deleted.add(obj.metadata.name)
            else:
                self._deleted.discard(obj.metadata.name)
            moved = isinstance(new, Service) and (
                not isinstance(old, Service) or old.spec.placement != new.spec.placement
            )
            # Created again, or placed differently: its waiting tasks may fit now.
            return (KEY,) if moved and self._unpark(obj.metadata.name) else ()
        old_task = old if isinstance(old, Task) else None
        new_task = new if isinstance(new, Task) else None
        if old_task is None and new_task is None:
            return ()
        if self._indexed:
            self._track(old_task, new_task)
        if old_task is not None and old_task.node_id and (new is None or _freed(old_task, new)):
            # Room was freed: worth a pass if anything waits for room.
            unparked = self._unpark()
            return (KEY,) if unparked or self._pending or not self._indexed else ()
        if new_task is not None and _pending(new_task):
            # A parked task's own message being written wakes nothing.
            return (KEY,) if not self._indexed or new_task.id in self._pending else ()
        return ()

    def _unpark(self, service: str | None = None) -> bool:
        """Look again at the waiting tasks (of ``service``, or all); whether there were any."""
        self._wakes += 1
        # A deleted service's tasks stay parked: they wait for the orchestrator, not room.
        names = [service] if service is not None else list(self._parked.keys() - self._deleted)
        unparked = False
        for name in names:
            parked = self._parked.pop(name, None)
            if parked:
                self._pending |= parked
                unparked = True
        return unparked

    def _track(self, old: Task | None, new: Task | None) -> None:
        counted = None
        if new is not None and self._reserved:
            counted = self._reserved.pop(new.id, None)
            if counted is not None and counted is not new:
                self._unload(counted)  # what was reserved is not what was written
                counted = None
        if old is not None and old.node_id and _loads_node(old):
            self._loads[old.node_id].add(old, -1)
        if old is not None and old.node_id and _holds_units(old):
            self._loads[old.node_id].hold(old, -1)
        if counted is None:
            self._load(new)
        if old is not None and _pending(old):
            waiting = self._waiting[old.service]
            waiting[old.status.message] -= 1
            if waiting[old.status.message] <= 0:
                del waiting[old.status.message]
                if not waiting:
                    del self._waiting[old.service]
        if new is not None and _pending(new):
            self._waiting[new.service][new.status.message] += 1
            if new.id not in self._parked.get(new.service, ()):
                self._pending.add(new.id)  # a parked task stays parked while it waits
        elif old is not None:
            self._pending.discard(old.id)
            parked = self._parked.get(old.service)
            if parked is not None:
                parked.discard(old.id)

    def _load(self, task: Task | None, sign: int = 1) -> None:
        if task is not None and task.node_id and _loads_node(task):
            self._loads[task.node_id].add(task, sign)
        if task is not None and task.node_id and _holds_units(task):
            self._loads[task.node_id].hold(task, sign)

    def _unload(self, task: Task) -> None:
        self._load(task, -1)

    def _reserve(self, task: Task) -> None:
        """Count the placement of ``task`` (assigned, not written yet) in the node loads."""
        self._load(task)
        self._reserved[task.id] = task

    def release(self, tasks: Iterable[Task]) -> None:
        """After a write of placements: those whose write did not come back free their room.

        Tasks parked meanwhile for want of that room are looked at again by the next
        pass (and a pass running now parks nothing)."""
        if not self._reserved:
            return
        freed = False
        for task in tasks:
            counted = self._reserved.pop(task.id, None)
            if counted is not None:
                self._unload(counted)
                freed = True
        if freed:
            self._unpark()

    def _index(self) -> None:
        self._pending.clear()
        self._parked.clear()
        self._waiting.clear()
        self._loads.clear()
        self._reserved.clear()
        # A service created again while this manager did not lead is not deleted any more.
        self._deleted = {name for name in self._deleted if self.informer.service(name) is None}
        for entry in self.informer.all_tasks():
            self._track(None, entry.obj)
        self._indexed = True

    async def reconcile(self, key: str) -> Outcome:
        if not self._indexed:
            self._index()
        found = (self.informer.tasks.get(i) for i in self._pending)
        pending = [e for e in found if e is not None and _pending(e.obj)]
        self._pending = {e.obj.id for e in pending}
        if not pending:
            return Done()
        nodes = [e.obj for e in self.informer.nodes.values() if e.obj.schedulable]
        by_service: dict[str, list[Entry[Task]]] = defaultdict(list)
        for entry in pending:
            by_service[entry.obj.service].append(entry)
        for name in [n for n in by_service if n in self._deleted]:
            # A deleted service's tasks: the orchestrator removes them, none is placed
            # (parked, in case a service of that name comes back first).
            ids = {e.obj.id for e in by_service.pop(name)}
            self._pending -= ids
            self._parked[name] |= ids
        now = datetime.now(UTC)
        wakes = self._wakes
        outcome = _Pass()
        pace = Pacer()
        try:
            for name, entries in sorted(by_service.items()):
                if len(outcome.changes) >= PASS:
                    break
                entries.sort(key=lambda e: (e.obj.slot, e.obj.node_id or "", e.obj.created_at))
                await self._place_service(name, entries, nodes, now, pace, outcome)
            # The pass yielded: a node drained or went down meanwhile gets none of it
            # (those tasks stay pending for the next pass).
            changes = [c for c in outcome.changes if self._still_schedulable(c)]
            # Looked at and fitting nowhere: parked until something could change that,
            # unless something did while the pass yielded (a task gone is not parked).
            for name, ids in outcome.parked.items() if self._wakes == wakes else ():
                ids &= self._pending
                self._pending -= ids
                self._parked[name] |= ids
            if changes:
                await self.informer.commit(changes)
        except BaseException:
            for name in outcome.parked:  # their messages may not be written
                self._unpark(name)
            raise
        finally:
            self.release(c.obj for c in outcome.changes if isinstance(c.obj, Task))
        for name, messages in sorted(outcome.news.items()):
            self._unschedulable(name, messages, outcome.waiting[name])
        return Requeue(0.001) if self._pending else Done()

    def _unschedulable(self, name: str, messages: set[str], looked: Counter[str]) -> None:
        """One event per service and reason, saying how many of its tasks wait for it now."""
        waiting = self._waiting.get(name, Counter()) if self._indexed else Counter()
        for message in sorted(messages):
            many = waiting[message] or looked[message]
            self.events.record(
                f"service/{name}",
                "Unschedulable",
                f"{many} task{'s' if many != 1 else ''} pending: {message}",
                True,
                update=True,
            )

    def _still_schedulable(self, change: Change) -> bool:
        task = change.obj
        if not isinstance(task, Task) or task.status.state != TaskState.ASSIGNED:
            return True
        entry = self.informer.nodes.get(task.node_id or "")
        return entry is not None and entry.obj.schedulable

    async def place_new(
        self, service: Service, tasks: list[Task], now: datetime, pace: Pacer
    ) -> list[Task]:
        """The orchestrator's new tasks of ``service``, placed as they are born.

        Each comes back assigned to the node this scheduler would have chosen for it
        (the same filters, spread, ports, units and node loads, its own placements
        counted as they are decided), or as it was, pending, when it fits nowhere now:
        the scheduler's passes look at those as at any pending task, with their
        message and event. The placements are reserved in the node loads until the
        write comes back; call ``release`` with the tasks once it has, or has failed.
        """
        if not self._indexed:
            self._index()
        if service.metadata.name in self._deleted:
            return tasks
        nodes = [e.obj for e in self.informer.nodes.values() if e.obj.schedulable]
        outcome = _Pass()
        entries = [Entry(task, 0) for task in tasks]
        try:
            await self._place_service(
                service.metadata.name, entries, nodes, now, pace, outcome, True
            )
        except BaseException:  # cancelled (leadership lost) or failed: nothing is written
            self.release(c.obj for c in outcome.changes if isinstance(c.obj, Task))
            raise
        placed = []
        for born, change in zip(tasks, outcome.changes, strict=True):
            task = change.obj
            assert isinstance(task, Task)
            # Placing yielded: a node drained or went down meanwhile gets none of these.
            if task is not born and not self._still_schedulable(change):
                self.release([task])
                task = born
            placed.append(task)
        return placed

    async def _place_service(
        self,
        name: str,
        entries: list[Entry[Task]],
        nodes: list[Node],
        now: datetime,
        pace: Pacer,
        outcome: _Pass,
        born: bool = False,
    ) -> None:
        """Place ``entries`` (in order) until the pass has ``PASS`` changes.

        ``born``: new tasks (not written yet) for ``place_new``: every one of them
        is in the changes, placed or as it was; none is parked or given a message.
        """
        service_entry = self.informer.service(name)
        placement = service_entry.obj.spec.placement if service_entry else None
        max_per_node = placement.max_replicas_per_node if placement else 0
        labels = [p.label for p in placement.preferences] if placement else []
        by_id = {node.id: node for node in nodes}
        static: dict[tuple[str, str], str | None] = {}
        loads = self._loads

        def mismatch(node: Node, task: Task) -> str | None:
            key = (node.id, task.template.runtime)
            if key not in static:
                static[key] = static_mismatch(node, task.template, placement) if placement else None
            return static[key]

        def rank(node_id: str) -> Rank:
            load = loads[node_id]
            return (load.per_service[name], load.tasks, node_id)

        def count(node_id: str) -> int:
            return loads[node_id].per_service[name]

        def check(node: Node, task: Task) -> str | None:
            return fits(node, loads[node.id], task, max_per_node)

        # Per task shape (runtime, reservations, ports): the eligible nodes by spread
        # rank (a heap, grouped by preference labels when there are any), so placing
        # T tasks on N nodes costs O(T log N), not O(T N).
        trees: dict[Shape, SpreadTree] = {}
        unschedulable: dict[Shape, str] = {}
        changes = outcome.changes
        # Per reason: how many tasks wait, and whether any is new to it (worth an event).
        waiting = outcome.waiting[name]
        parked = outcome.parked[name]
        for entry in entries:
            if len(changes) >= PASS and not born:
                break
            await pace()
            task = entry.obj
            shape = shape_of(task)
            chosen: Node | None = None
            message = unschedulable.get(shape, "")
            if task.node_id:  # a global service's task: its own node or nothing
                node = by_id.get(task.node_id)
                reason = None if node is None else mismatch(node, task) or check(node, task)
                if node is not None and reason is None:
                    chosen = node
                else:
                    message = _no_node_message(task, Counter([reason] if reason else []), 1)
            elif not message:
                tree = trees.get(shape)
                if tree is None:
                    eligible = [n for n in nodes if mismatch(n, task) is None]
                    tree = trees[shape] = SpreadTree(eligible, labels, rank, count)
                chosen_id = tree.choose(partial(_fits_node, check, by_id, task))
                if chosen_id is not None:
                    chosen = by_id[chosen_id]
                    tree.placed(chosen_id)
                elif born:
                    message = unschedulable[shape] = "?"  # the scheduler's pass says why
                else:
                    reasons = Counter(mismatch(n, task) or check(n, task) or "?" for n in nodes)
                    message = unschedulable[shape] = _no_node_message(task, reasons, len(nodes))
            if chosen is None:
                if born:
                    changes.append(Change.put(task, entry.revision))
                    continue
                waiting[message] += 1
                parked.add(task.id)
                if task.status.message != message:
                    outcome.news[name].add(message)
                    status = task.status.model_copy(update={"message": message, "timestamp": now})
                    changes.append(
                        Change.put(task.model_copy(update={"status": status}), entry.revision)
                    )
                continue
            units = take_units(chosen, loads[chosen.id], task) if shape[3] else {}
            text = f"assigned to {chosen.id}"
            if units:
                text += " with " + ", ".join(f"{k} {','.join(u)}" for k, u in sorted(units.items()))
            assigned = task.model_copy(
                update={
                    "node_id": chosen.id,
                    "resources": units,
                    "status": TaskStatus(state=TaskState.ASSIGNED, timestamp=now, message=text),
                }
            )
            self._reserve(assigned)
            changes.append(Change.put(assigned, entry.revision))


@dataclass
class _Pass:
    """What one scheduling pass decided, per service where it matters."""

    changes: list[Change] = field(default_factory=list)
    # Tasks looked at that fit nowhere (to park), per service.
    parked: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # Per service and reason: tasks looked at that wait for it, and reasons new to some.
    waiting: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    news: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


def _fits_node(
    check: Callable[[Node, Task], str | None], by_id: dict[str, Node], task: Task, node_id: str
) -> bool:
    return check(by_id[node_id], task) is None


def _node_changed(old: Node, new: Node) -> bool:
    """Whether a node's change can change where tasks fit (not a heartbeat's time)."""
    return (
        old.spec != new.spec
        or old.status.state != new.status.state
        or old.description != new.description
    )


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
