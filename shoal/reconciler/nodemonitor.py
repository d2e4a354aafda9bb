"""The node monitor: a node that stops heartbeating is down, and its tasks are orphaned.

Heartbeats never touch the store (they would be most of its writes); the
dispatcher records them in a ``HeartbeatTracker`` in memory. A node that has
not been heard from for ``grace`` seconds is written ``down`` and every task on
it that has not ended is marked ``orphaned``; the orchestrator then starts
replacements elsewhere. When the agent comes back it registers again, the node
turns ``ready``, and the agent stops whatever orphaned tasks it still runs.

Overload must degrade, never collapse, so the rule has three guards:

* **Only silence the manager could have heard counts.** Silence is measured on
  the tracker's *awake clock*: the monotonic clock minus every stretch during
  which the manager itself could not receive a heartbeat (its event loop held
  by a long pass, the process paused by SIGSTOP or a frozen VM). A probe on the
  event loop ticks every ``probe_period``; a tick that comes late measures a
  stall, and a stall still under way counts too, so the first pass after a
  pause does not take the pause for the nodes' silence.
* **The disruption guard.** When more than ``disruption_threshold`` (default
  55 %) of the nodes in service are silent at once, the fault is far more
  likely the manager's or the network's than that of so many machines. The
  silent nodes are written ``unknown`` (not scheduled on, their tasks left
  alone), an event and a metric say so, ``shoal cluster status`` shows the
  condition, and nothing is orphaned until the share drops. Nodes in service
  are the ``ready`` and ``unknown`` ones; a node ``down`` has been dealt with.
  When the share drops again (the nodes come back one by one), every node
  still silent gets a fresh grace before it may be declared down, as the
  Kubernetes node lifecycle controller resets its timestamps.
* **Nodes that fall silent together are judged together.** Their last
  heartbeats are spread over up to a period, so they pass their grace one by
  one; judged as each did, the share would never reach the threshold. A node
  silent past ``grace`` counts toward the share at once but is declared down
  only ``settle`` seconds later (the manager uses one heartbeat period), by
  which time the rest of a fleet that died with it counts too.
* **Rate-limited orphaning.** Below the threshold, silent nodes are declared
  down and their tasks orphaned at once up to a burst of 10 % of the nodes in
  service (at least 10 nodes); beyond that, at 1 % of them (at least one) per
  second. The nodes waiting their turn are ``unknown`` meanwhile. A small
  outage is therefore handled in one pass, a large one in a steady stream
  that the rest of the cluster can absorb.

A node held ``unknown`` (by the guard, or waiting its turn) kept its session
and its tasks: when its heartbeats resume on that session the monitor writes
it ``ready`` again (within ``GUARD_RECHECK``). Its agent is not made to
register again, which would cost a new session and a full assignment set per
node, all at once when a whole fleet had been held.

Each time a manager starts leading (at its start, or after a leader change)
every node gets a fresh, longer grace: nobody could heartbeat to a manager
that was not leading, and agents need time to find it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from shoal.models import Node, NodeState, TaskState
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Entry, Informer
from shoal.reconciler.loop import Controller, Done, Outcome, Requeue
from shoal.store.typed import Change, Object

log = structlog.get_logger(__name__)

Clock = Callable[[], float]

# The probe on the event loop ticks this often; a tick later than PERIOD +
# TOLERANCE measures a stall of the excess.
PROBE_PERIOD = 0.1
PROBE_TOLERANCE = 0.05
# Events and ``shoal cluster status`` name the cluster-wide condition this way.
CLUSTER_OBJECT = "cluster"


class HeartbeatTracker:
    """When each node was last heard from, on the manager's awake clock (memory only)."""

    def __init__(
        self,
        clock: Clock = time.monotonic,
        probe_period: float = PROBE_PERIOD,
        tolerance: float = PROBE_TOLERANCE,
    ) -> None:
        self.clock = clock
        self.probe_period = probe_period
        self.tolerance = tolerance
        self._seen: dict[str, float] = {}
        # The last message of the node itself (a heartbeat or a status batch), not a
        # forgiving or a registration.
        self._beats: dict[str, float] = {}
        self.heard = 0  # heartbeats received, for ``shoal_heartbeats_total``
        self._last_tick = clock()
        # Seconds the manager was stalled, in all (``stalled``) and the longest.
        self.stalled = 0.0
        self.longest_stall = 0.0
        self.started = self.awake()

    def awake(self) -> float:
        """The monotonic clock without the stretches this manager was stalled."""
        now = self.clock()
        return now - self.stalled - self._excess(now)

    def _excess(self, now: float) -> float:
        return max(0.0, now - self._last_tick - self.probe_period - self.tolerance)

    def tick(self) -> float:
        """Called by the probe every ``probe_period``; returns the stall it measured."""
        now = self.clock()
        stall = self._excess(now)
        self._last_tick = now
        if stall > 0:
            self.stalled += stall
            self.longest_stall = max(self.longest_stall, stall)
        return stall

    def restart(self, extra: float = 0.0) -> None:
        """A new leadership term: forget who was heard when; every node gets ``extra`` more."""
        self.started = self.awake() + extra
        self._seen.clear()
        self._beats.clear()

    def beat(self, node_id: str) -> None:
        """A heartbeat of ``node_id`` arrived."""
        self._heard_from(node_id)
        self._beats[node_id] = self._seen[node_id]
        self.heard += 1

    def heard_from(self, node_id: str) -> None:
        """Another message of ``node_id`` arrived (a status batch): as good as a heartbeat,
        but not counted as one."""
        self._heard_from(node_id)
        self._beats[node_id] = self._seen[node_id]

    def _heard_from(self, node_id: str) -> None:
        self._seen[node_id] = self.awake()

    def forgive(self, node_id: str) -> None:
        """Start ``node_id``'s grace afresh, as if it had just been heard from."""
        self._heard_from(node_id)

    def registered(self, node_id: str) -> None:
        """``node_id`` opened a session. Within a new term's longer grace that is no
        heartbeat yet for a node not heard from in this term: its heartbeats may wait
        behind the rest of the herd finding this manager, so it keeps the term's grace
        until its first one. A node heard from before (its session ended and it came
        back) starts its usual grace afresh, as outside the term's grace."""
        if self.awake() >= self.started or node_id in self._seen:
            self._heard_from(node_id)

    def silent_for(self, node_id: str) -> float:
        return self.awake() - self._seen.get(node_id, self.started)

    def beat_within(self, node_id: str, seconds: float) -> bool:
        """Whether ``node_id`` itself (a heartbeat or a status batch; not a forgiving or a
        registration) was heard from in the last ``seconds``."""
        last = self._beats.get(node_id)
        return last is not None and self.awake() - last < seconds


async def probe_stalls(tracker: HeartbeatTracker, on_stall: Callable[[float], None]) -> None:
    """Tick ``tracker`` from the event loop for ever; report each stall it measures."""
    while True:
        await asyncio.sleep(tracker.probe_period)
        stall = tracker.tick()
        if stall > 0:
            on_stall(stall)


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """How the node monitor judges silence; see the module docstring."""

    grace: float
    # A node silent past ``grace`` counts toward the guard's share at once, but
    # goes down only ``settle`` seconds later (the manager passes one heartbeat
    # period), so nodes that fell silent together are judged together.
    settle: float = 0.0
    disruption_threshold: float = 0.55
    burst_share: float = 0.10
    burst_min: int = 10
    rate_share: float = 0.01  # of the nodes in service, per second
    rate_min: float = 1.0


@dataclass(frozen=True, slots=True)
class GuardState:
    """The disruption guard as the last pass saw it."""

    engaged: bool = False
    silent: int = 0
    in_service: int = 0
    threshold: float = 0.55
    since: datetime | None = None

    @property
    def share(self) -> float:
        return self.silent / self.in_service if self.in_service else 0.0

    def to_wire(self) -> dict[str, object]:
        return {
            "type": "DisruptionGuard",
            "engaged": self.engaged,
            "silentNodes": self.silent,
            "nodesInService": self.in_service,
            "share": round(self.share, 4),
            "threshold": self.threshold,
            "since": self.since.isoformat() if self.since else None,
            "message": self.message(),
        }

    def message(self) -> str:
        seen = f"{self.silent} of {self.in_service} nodes ({self.share:.0%}) silent"
        if self.engaged:
            return (
                f"{seen}, more than {self.threshold:.0%}: assuming a fault of the manager or "
                "the network; their tasks are kept until fewer nodes are silent"
            )
        return seen


class OrphanBudget:
    """A token bucket of nodes that may be declared down: a burst, then a steady rate."""

    def __init__(self, settings: MonitorSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._tokens: float | None = None
        self._at = clock()

    def _limits(self, in_service: int) -> tuple[float, float]:
        s = self.settings
        burst = max(float(s.burst_min), math.ceil(s.burst_share * in_service))
        return burst, max(s.rate_min, s.rate_share * in_service)

    def take(self, wanted: int, in_service: int) -> int:
        """How many of ``wanted`` nodes may go down now (and spend that many tokens)."""
        burst, rate = self._limits(in_service)
        now = self.clock()
        tokens = burst if self._tokens is None else self._tokens + (now - self._at) * rate
        tokens = min(tokens, burst)
        granted = min(wanted, math.floor(tokens + 1e-6))
        self._tokens, self._at = tokens - granted, now
        return granted

    def wait(self, in_service: int) -> float:
        """Seconds until the next node may go down."""
        _, rate = self._limits(in_service)
        missing = 1.0 - (self._tokens or 0.0)
        return max(0.0, missing / rate)


# One key for every node: nodes that die together (a rack, a network split, a
# fleet process) are judged in one pass and written in one transaction, so the
# orchestrator sees one change per service instead of one per node.
KEY = "nodes"
# While the guard holds nodes, look again this often even if nothing changes.
GUARD_RECHECK = 1.0


class NodeMonitor(Controller):
    """Marks silent nodes down and orphans their tasks, behind the guards above."""

    name = "node-monitor"

    def __init__(
        self,
        informer: Informer,
        events: EventRecorder,
        heartbeats: HeartbeatTracker,
        settings: MonitorSettings | float,
    ) -> None:
        self.informer = informer
        self.events = events
        self.heartbeats = heartbeats
        self.settings = (
            settings if isinstance(settings, MonitorSettings) else MonitorSettings(grace=settings)
        )
        self.budget = OrphanBudget(self.settings, heartbeats.awake)
        self.guard = GuardState(threshold=self.settings.disruption_threshold)

    @property
    def grace(self) -> float:
        return self.settings.grace

    def all_keys(self) -> Iterable[str]:
        return (KEY,)

    def keys_for(self, old: Object | None, new: Object | None) -> Iterable[str]:
        if isinstance(new, Node):
            return (KEY,)
        return ()

    async def reconcile(self, key: str) -> Outcome:
        """One pass over every node: all that went silent are judged together."""
        now = datetime.now(UTC)
        grace = self.settings.grace
        changes: list[Change] = []
        next_check: float | None = None
        ready = 0
        silent: list[tuple[Entry[Node], float]] = []
        held: list[Entry[Node]] = []
        back: list[Entry[Node]] = []
        for entry in list(self.informer.nodes.values()):
            node = entry.obj
            state = node.status.state
            if state == NodeState.READY:
                ready += 1
                quiet = self.heartbeats.silent_for(node.id)
                if quiet < grace:
                    left = grace - quiet
                    next_check = left if next_check is None else min(next_check, left)
                else:
                    silent.append((entry, quiet))
            elif state == NodeState.UNKNOWN:
                if self.heartbeats.beat_within(node.id, grace):
                    # Its heartbeats resumed on the session it kept: ready again.
                    ready += 1
                    back.append(entry)
                else:
                    held.append(entry)
            elif state == NodeState.DOWN:
                changes.extend(self._orphan_tasks(node, now))  # tasks that raced the marking
        in_service = ready + len(held)
        for entry in back:
            message = "heartbeats resumed on its session"
            changes.append(self._mark(entry, NodeState.READY, message, now))
            self.events.record(f"node/{entry.obj.id}", "NodeReady", message)
        was_engaged = self.guard.engaged
        self._judge(len(silent) + len(held), in_service, now)
        if was_engaged and not self.guard.engaged:
            # The disruption is ending, and its nodes come back one by one: each
            # still silent gets a fresh grace before it may be declared down.
            for entry in [*held, *(e for e, _ in silent)]:
                self.heartbeats.forgive(entry.obj.id)
            silent = []
            next_check = grace if next_check is None else min(next_check, grace)
        if self.guard.engaged:
            for entry, quiet in silent:
                message = f"no heartbeat for {quiet:.1f}s; {self.guard.message()}"
                changes.append(self._mark(entry, NodeState.UNKNOWN, message, now))
            next_check = min(next_check or GUARD_RECHECK, GUARD_RECHECK)
        else:
            # Held the longest first, then the ones found silent now and settled.
            due = grace + self.settings.settle
            waiting = [
                (e, self.heartbeats.silent_for(e.obj.id), True)
                for e in held
                if self.heartbeats.silent_for(e.obj.id) >= grace
            ] + [(e, quiet, False) for e, quiet in silent if quiet >= due]
            for _, quiet in silent:
                if quiet < due:
                    next_check = due - quiet if next_check is None else min(next_check, due - quiet)
            granted = self.budget.take(len(waiting), in_service)
            for entry, quiet, _ in waiting[:granted]:
                message = f"no heartbeat for {quiet:.1f}s"
                changes.append(self._mark(entry, NodeState.DOWN, message, now))
                self.events.record(f"node/{entry.obj.id}", "NodeDown", message, warning=True)
                changes.extend(self._orphan_tasks(entry.obj, now))
            for entry, quiet, was_held in waiting[granted:]:
                if not was_held:
                    message = f"no heartbeat for {quiet:.1f}s; waiting its turn to be declared down"
                    changes.append(self._mark(entry, NodeState.UNKNOWN, message, now))
            if len(waiting) > granted:
                wait = self.budget.wait(in_service)
                next_check = wait if next_check is None else min(next_check, wait)
        if held:  # look again soon for those whose heartbeats resume
            next_check = GUARD_RECHECK if next_check is None else min(next_check, GUARD_RECHECK)
        if changes:
            await self.informer.commit(changes)
        return Done() if next_check is None else Requeue(next_check + 0.05)

    def _judge(self, silent: int, in_service: int, now: datetime) -> None:
        """Engage or release the disruption guard; record the change as an event."""
        threshold = self.settings.disruption_threshold
        engaged = in_service > 0 and silent / in_service > threshold
        was = self.guard.engaged
        since = (self.guard.since or now) if engaged else None
        self.guard = GuardState(engaged, silent, in_service, threshold, since)
        if engaged and not was:
            self.events.record(CLUSTER_OBJECT, "DisruptionGuardEngaged", self.guard.message(), True)
        elif was and not engaged:
            self.events.record(
                CLUSTER_OBJECT,
                "DisruptionGuardReleased",
                f"{self.guard.message()}: silent nodes are declared down again",
            )

    @staticmethod
    def _mark(entry: Entry[Node], state: NodeState, message: str, now: datetime) -> Change:
        node = entry.obj
        status = node.status.model_copy(
            update={"state": state, "message": message, "updated_at": now}
        )
        return Change.put(node.model_copy(update={"status": status}), entry.revision)

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


def guard_from_nodes(nodes: Iterable[Node], threshold: float) -> GuardState:
    """The guard as any manager can read it from the store: held nodes are ``unknown``."""
    ready = unknown = 0
    for node in nodes:
        if node.status.state == NodeState.READY:
            ready += 1
        elif node.status.state == NodeState.UNKNOWN:
            unknown += 1
    in_service = ready + unknown
    engaged = in_service > 0 and unknown / in_service > threshold
    return GuardState(engaged, unknown, in_service, threshold)
