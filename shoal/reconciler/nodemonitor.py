"""The node monitor: a node that stops heartbeating is down, and its tasks are orphaned.

Heartbeats never touch the store (they would be most of its writes); the
dispatcher records them in a ``HeartbeatTracker`` in memory. A node that has
not been heard from for ``grace`` seconds is written ``down`` and every task on
it that has not ended is marked ``orphaned``; the orchestrator then starts
replacements elsewhere. When the agent comes back it registers again, the node
turns ``ready``, and the agent stops whatever orphaned tasks it still runs.

After a manager starts, every node gets a fresh ``grace`` (nobody could have
heartbeated to a manager that was not running); after a leader change, a
longer one, so agents have time to find the new leader.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime

from shoal.models import Node, NodeState, TaskState
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.loop import Controller, Done, Outcome, Requeue
from shoal.store.typed import Change, Object


class HeartbeatTracker:
    """When each node was last heard from (monotonic seconds, in memory only)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._seen: dict[str, float] = {}

    def restart(self, extra: float = 0.0) -> None:
        """A new leadership term: forget who was heard when; every node gets ``extra`` more."""
        self.started = time.monotonic() + extra
        self._seen.clear()

    def beat(self, node_id: str) -> None:
        self._seen[node_id] = time.monotonic()

    def silent_for(self, node_id: str) -> float:
        return time.monotonic() - self._seen.get(node_id, self.started)


# One key for every node: nodes that die together (a rack, a network split, a
# fleet process) are marked down in one pass and one transaction, so the
# orchestrator sees one change per service instead of one per node.
KEY = "nodes"


class NodeMonitor(Controller):
    """Marks silent nodes down and orphans their tasks."""

    name = "node-monitor"

    def __init__(
        self, informer: Informer, events: EventRecorder, heartbeats: HeartbeatTracker, grace: float
    ) -> None:
        self.informer = informer
        self.events = events
        self.heartbeats = heartbeats
        self.grace = grace

    def all_keys(self) -> Iterable[str]:
        return (KEY,)

    def keys_for(self, old: Object | None, new: Object | None) -> Iterable[str]:
        if isinstance(new, Node):
            return (KEY,)
        return ()

    async def reconcile(self, key: str) -> Outcome:
        """One pass over every node: all that went silent are marked down together."""
        now = datetime.now(UTC)
        changes: list[Change] = []
        next_check: float | None = None
        for entry in list(self.informer.nodes.values()):
            node = entry.obj
            if node.status.state == NodeState.READY:
                silent = self.heartbeats.silent_for(node.id)
                if silent < self.grace:
                    left = self.grace - silent
                    next_check = left if next_check is None else min(next_check, left)
                    continue
                message = f"no heartbeat for {silent:.1f}s"
                status = node.status.model_copy(
                    update={"state": NodeState.DOWN, "message": message, "updated_at": now}
                )
                changes.append(
                    Change.put(node.model_copy(update={"status": status}), entry.revision)
                )
                self.events.record(f"node/{node.id}", "NodeDown", message, warning=True)
            elif node.status.state != NodeState.DOWN:
                continue
            changes.extend(self._orphan_tasks(node, now))
        if changes:
            await self.informer.commit(changes)
        return Done() if next_check is None else Requeue(next_check + 0.05)

    def _orphan_tasks(self, node: Node, now: datetime) -> list[Change]:
        changes = []
        for task_entry in self.informer.tasks_on_node(node.id):
            task = task_entry.obj
            if task.status.state.terminal:
                continue
            orphaned = task.model_copy(
                update={
                    "status": task.status.model_copy(
                        update={
                            "state": TaskState.ORPHANED,
                            "timestamp": now,
                            "message": f"node {node.id} is down",
                        }
                    )
                }
            )
            changes.append(Change.put(orphaned, task_entry.revision))
        return changes
