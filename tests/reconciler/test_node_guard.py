"""The node monitor on its own: memory store, informer, and a clock that moves when told.

Nobody sleeps here: the heartbeat tracker reads a ``ManualTime`` the test
advances, the test plays the agents (``beat``) and the event-loop probe
(``tick``), calls ``reconcile`` itself and looks at what the store holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from shoal.models import (
    DesiredState,
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
from shoal.reconciler.loop import Requeue
from shoal.reconciler.nodemonitor import (
    CLUSTER_OBJECT,
    HeartbeatTracker,
    MonitorSettings,
    NodeMonitor,
    guard_from_nodes,
)
from shoal.store import MemoryStore
from shoal.store.typed import Change, TypedStore, decode

GRACE = 3.0


class ManualTime:
    """A monotonic clock for the tracker: moves only with ``advance``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    store: MemoryStore
    informer: Informer
    time: ManualTime
    tracker: HeartbeatTracker
    events: EventRecorder
    monitor: NodeMonitor

    def run(
        self,
        seconds: float,
        beating: set[str] | None = None,
        step: float = 0.1,
        reporting: set[str] | None = None,
    ) -> None:
        """Let ``seconds`` pass with a live event loop: the probe ticks, ``beating`` beat,
        ``reporting`` send status batches instead (which stand for heartbeats)."""
        elapsed = 0.0
        while elapsed < seconds - 1e-9:
            self.time.advance(step)
            elapsed += step
            self.tracker.tick()
            for node_id in beating or ():
                self.tracker.beat(node_id)
            for node_id in reporting or ():
                self.tracker.heard_from(node_id)

    async def stored_nodes(self) -> dict[str, Node]:
        kvs, _ = await self.store.range("/nodes/")
        return {n.id: n for n in (decode(kv) for kv in kvs) if isinstance(n, Node)}

    async def stored_tasks(self) -> dict[str, Task]:
        kvs, _ = await self.store.range("/tasks/")
        return {t.id: t for t in (decode(kv) for kv in kvs) if isinstance(t, Task)}

    async def states(self) -> dict[str, str]:
        return {n.id: n.status.state.value for n in (await self.stored_nodes()).values()}

    async def orphaned(self) -> set[str]:
        tasks = await self.stored_tasks()
        return {t.node_id or "" for t in tasks.values() if t.status.state == TaskState.ORPHANED}


def node(node_id: str) -> Node:
    return Node(
        id=node_id,
        description=NodeDescription(
            hostname=node_id, runtimes=[RuntimeInfo(name="sim", available=True)]
        ),
        status=NodeStatus(state=NodeState.READY),
    )


def task(node_id: str, index: int = 0) -> Task:
    return Task(
        id=f"t-{node_id}-{index}",
        service="web",
        slot=index + 1,
        node_id=node_id,
        template=TaskTemplate(runtime="sim", command=["work"]),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        desired_state=DesiredState.RUNNING,
        status=TaskStatus(state=TaskState.RUNNING),
    )


async def open_rig(count: int, **settings: float) -> Rig:
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    ids = [f"n{i:03d}" for i in range(count)]
    await informer.commit([Change.put(node(i), 0) for i in ids])
    await informer.commit([Change.put(task(i), 0) for i in ids])
    clock = ManualTime()
    tracker = HeartbeatTracker(clock)
    events = EventRecorder()
    monitor = NodeMonitor(
        informer,
        events,
        tracker,
        MonitorSettings(grace=GRACE, **settings),  # type: ignore[arg-type]
    )
    return Rig(store, informer, clock, tracker, events, monitor)


@pytest.fixture
async def rig10() -> AsyncIterator[Rig]:
    rig = await open_rig(10)
    yield rig
    await rig.informer.aclose()


def names(count: int, start: int = 0) -> set[str]:
    return {f"n{i:03d}" for i in range(start, start + count)}


async def test_a_node_silent_past_grace_goes_down_and_its_tasks_are_orphaned(rig10: Rig) -> None:
    rig10.run(GRACE + 0.5, beating=names(9))

    await rig10.monitor.reconcile("nodes")

    states = await rig10.states()
    assert states.pop("n009") == "down"
    assert set(states.values()) == {"ready"}
    assert await rig10.orphaned() == {"n009"}
    assert rig10.events.for_object("node/n009")[0].reason == "NodeDown"


async def test_a_node_that_beats_is_never_down_and_the_monitor_looks_again_in_time(
    rig10: Rig,
) -> None:
    rig10.run(1.0, beating=names(10))

    outcome = await rig10.monitor.reconcile("nodes")

    assert set((await rig10.states()).values()) == {"ready"}
    # Everybody beat just now: the next look is one grace from now.
    assert isinstance(outcome, Requeue)
    assert GRACE - 0.2 < outcome.after <= GRACE + 0.1


async def test_a_paused_manager_does_not_blame_its_nodes(rig10: Rig) -> None:
    rig10.run(1.0, beating=names(10))
    # SIGSTOP for 10 s: no tick, no heartbeat, and the clock runs on.
    rig10.time.advance(10.0)

    # The first pass after SIGCONT, before the probe has ticked even once.
    await rig10.monitor.reconcile("nodes")
    assert set((await rig10.states()).values()) == {"ready"}
    assert await rig10.orphaned() == set()

    # The probe has measured the stall; the agents are back within their grace.
    rig10.run(GRACE - 0.5)
    # The stall is the gap between two ticks, less the probe's period and tolerance.
    assert rig10.tracker.longest_stall == pytest.approx(10.1 - 0.15, abs=0.01)
    await rig10.monitor.reconcile("nodes")
    assert set((await rig10.states()).values()) == {"ready"}

    # A node that still says nothing after a grace of awake time is down after all.
    rig10.run(1.0, beating=names(9))
    await rig10.monitor.reconcile("nodes")
    assert (await rig10.states())["n009"] == "down"


async def test_a_long_reconcile_holding_the_loop_is_a_stall_too(rig10: Rig) -> None:
    rig10.run(1.0, beating=names(10))
    for _ in range(4):  # four passes of 2 s each, the probe squeezed in between
        rig10.time.advance(2.0)
        rig10.tracker.tick()
        rig10.run(0.2, beating=names(10))
    rig10.time.advance(2.0)  # heartbeats queued behind the last pass

    await rig10.monitor.reconcile("nodes")

    assert set((await rig10.states()).values()) == {"ready"}


async def test_guard_engages_when_most_nodes_fall_silent_and_orphans_nothing(rig10: Rig) -> None:
    rig10.run(GRACE + 0.5, beating=names(4))  # 6 of 10 silent: 60 %

    await rig10.monitor.reconcile("nodes")

    states = await rig10.states()
    assert {n for n, s in states.items() if s == "unknown"} == names(6, start=4)
    assert {n for n, s in states.items() if s == "ready"} == names(4)
    assert await rig10.orphaned() == set()
    guard = rig10.monitor.guard
    assert (guard.engaged, guard.silent, guard.in_service) == (True, 6, 10)
    assert [e.reason for e in rig10.events.for_object(CLUSTER_OBJECT)] == ["DisruptionGuardEngaged"]
    # Any manager reads the same from the store.
    stored = guard_from_nodes((await rig10.stored_nodes()).values(), 0.55)
    assert (stored.engaged, stored.silent, stored.in_service) == (True, 6, 10)

    # Still silent a long while later: still nothing orphaned.
    rig10.run(60.0, beating=names(4))
    await rig10.monitor.reconcile("nodes")
    assert await rig10.orphaned() == set()
    assert rig10.monitor.guard.engaged


async def test_nodes_that_return_under_the_guard_find_their_tasks_untouched(rig10: Rig) -> None:
    rig10.run(GRACE + 0.5, beating=names(4))
    await rig10.monitor.reconcile("nodes")
    tasks_before = await rig10.stored_tasks()

    # The fleet comes back: each agent registers again (the dispatcher writes ready).
    for node_id in names(6, start=4):
        entry = rig10.informer.nodes[node_id]
        back = entry.obj.model_copy(update={"status": NodeStatus(state=NodeState.READY)})
        await rig10.informer.commit([Change.put(back, entry.revision)])
        rig10.tracker.beat(node_id)
    await rig10.monitor.reconcile("nodes")

    assert set((await rig10.states()).values()) == {"ready"}
    assert await rig10.stored_tasks() == tasks_before
    assert not rig10.monitor.guard.engaged
    assert [e.reason for e in rig10.events.for_object(CLUSTER_OBJECT)] == [
        "DisruptionGuardEngaged",
        "DisruptionGuardReleased",
    ]


@pytest.mark.parametrize(
    "heard",
    [
        pytest.param("heartbeats", id="heartbeats"),
        # A busy agent sends status batches instead of heartbeats (each stands for one).
        pytest.param("status", id="status-batches-only"),
    ],
)
async def test_held_nodes_heard_again_are_ready_again_without_registering(
    rig10: Rig, heard: str
) -> None:
    # The fleet came late (its own process starved, say) but its sessions never
    # ended: its agents will not register again, so the monitor itself writes
    # them ready once they are heard from.
    rig10.run(GRACE + 0.5, beating=names(4))
    await rig10.monitor.reconcile("nodes")
    assert rig10.monitor.guard.engaged
    tasks_before = await rig10.stored_tasks()

    if heard == "heartbeats":
        rig10.run(0.5, beating=names(10))
    else:
        rig10.run(0.5, beating=names(4), reporting=names(6, start=4))
    await rig10.monitor.reconcile("nodes")

    assert set((await rig10.states()).values()) == {"ready"}
    assert await rig10.stored_tasks() == tasks_before
    assert not rig10.monitor.guard.engaged
    assert [e.reason for e in rig10.events.for_object(CLUSTER_OBJECT)] == [
        "DisruptionGuardEngaged",
        "DisruptionGuardReleased",
    ]
    assert [e.reason for e in rig10.events.for_object("node/n004")] == ["NodeReady"]


async def test_a_node_waiting_its_turn_that_is_heard_again_never_goes_down() -> None:
    rig = await open_rig(200, burst_share=0.0, burst_min=20, rate_share=0.0, rate_min=2.0)
    try:
        rig.run(GRACE + 0.5, beating=names(140))  # 60 silent: 20 down, 40 wait their turn
        outcome = await rig.monitor.reconcile("nodes")
        assert isinstance(outcome, Requeue)
        waiting = {n for n, s in (await rig.states()).items() if s == "unknown"}
        down = {n for n, s in (await rig.states()).items() if s == "down"}
        assert len(waiting) == 40

        # The down nodes' agents beat too (before they learn their sessions are over):
        # a node declared down, its tasks orphaned, is not ready again without registering.
        rig.run(outcome.after, beating=names(140) | waiting | down)
        await rig.monitor.reconcile("nodes")

        states = await rig.states()
        assert {n for n, s in states.items() if s == "unknown"} == set()
        assert {n for n, s in states.items() if s == "down"} == down and len(down) == 20
        assert {n for n, s in states.items() if s == "ready"} == names(140) | waiting
        assert len(await rig.orphaned()) == 20
    finally:
        await rig.informer.aclose()


async def test_when_the_share_drops_the_held_nodes_go_down(rig10: Rig) -> None:
    rig10.run(GRACE + 0.5, beating=names(4))
    await rig10.monitor.reconcile("nodes")
    # Two of the six come back: 4 of 10 silent is below the threshold.
    for node_id in ("n004", "n005"):
        entry = rig10.informer.nodes[node_id]
        back = entry.obj.model_copy(update={"status": NodeStatus(state=NodeState.READY)})
        await rig10.informer.commit([Change.put(back, entry.revision)])
        rig10.tracker.beat(node_id)

    await rig10.monitor.reconcile("nodes")

    # Released: the four still silent get a fresh grace (the rest may be on the way).
    assert not rig10.monitor.guard.engaged
    assert {n for n, s in (await rig10.states()).items() if s == "unknown"} == names(4, start=6)
    assert await rig10.orphaned() == set()

    # Two more come back within it; the last two do not.
    rig10.run(1.0, beating=names(6))
    for node_id in ("n006", "n007"):
        entry = rig10.informer.nodes[node_id]
        back = entry.obj.model_copy(update={"status": NodeStatus(state=NodeState.READY)})
        await rig10.informer.commit([Change.put(back, entry.revision)])
        rig10.tracker.beat(node_id)
    await rig10.monitor.reconcile("nodes")
    assert await rig10.orphaned() == set()
    rig10.run(GRACE, beating=names(8))
    await rig10.monitor.reconcile("nodes")

    states = await rig10.states()
    assert {n for n, s in states.items() if s == "down"} == {"n008", "n009"}
    assert await rig10.orphaned() == {"n008", "n009"}


async def test_nodes_that_fall_silent_together_are_judged_together() -> None:
    # A fleet of six dies at once, but their last heartbeats were spread over
    # most of a period: judged one by one as each passes its grace, no share
    # would ever reach the threshold and each would go down on its own.
    rig = await open_rig(10, settle=1.0)
    try:
        for stopped in range(6):  # n004 falls silent first, n009 half a second later
            rig.run(0.1, beating=names(4) | names(5 - stopped, start=5 + stopped))
        outcome = await rig.monitor.reconcile("nodes")
        for _ in range(20):  # the monitor's loop: look again when it asked to
            assert isinstance(outcome, Requeue)
            rig.run(outcome.after, beating=names(4))
            outcome = await rig.monitor.reconcile("nodes")
            assert "down" not in (await rig.states()).values()

        assert rig.monitor.guard.engaged
        assert {n for n, s in (await rig.states()).items() if s == "unknown"} == names(6, start=4)
        assert await rig.orphaned() == set()
    finally:
        await rig.informer.aclose()


async def test_a_lone_silent_node_goes_down_once_it_settled() -> None:
    rig = await open_rig(10, settle=1.0)
    try:
        rig.run(GRACE + 0.5, beating=names(9))
        outcome = await rig.monitor.reconcile("nodes")
        assert "down" not in (await rig.states()).values()
        assert isinstance(outcome, Requeue) and outcome.after <= 0.6

        rig.run(outcome.after, beating=names(9))
        await rig.monitor.reconcile("nodes")

        assert {n for n, s in (await rig.states()).items() if s == "down"} == {"n009"}
        assert await rig.orphaned() == {"n009"}
    finally:
        await rig.informer.aclose()


@pytest.mark.parametrize(
    ("threshold", "engaged"),
    [pytest.param(0.55, True, id="default"), pytest.param(0.7, False, id="raised-by-flag")],
)
async def test_the_threshold_is_a_setting(threshold: float, engaged: bool) -> None:
    rig = await open_rig(10, disruption_threshold=threshold)
    try:
        rig.run(GRACE + 0.5, beating=names(4))
        await rig.monitor.reconcile("nodes")
        assert rig.monitor.guard.engaged is engaged
        assert bool(await rig.orphaned()) is not engaged
    finally:
        await rig.informer.aclose()


async def test_exactly_the_threshold_is_not_yet_a_disruption(rig10: Rig) -> None:
    rig10.run(GRACE + 0.5, beating=names(5))  # 5 of 10: 50 %

    await rig10.monitor.reconcile("nodes")

    assert not rig10.monitor.guard.engaged
    assert await rig10.orphaned() == names(5, start=5)


async def test_a_large_outage_below_the_threshold_is_orphaned_at_a_bounded_rate() -> None:
    # By default: a burst of 10 % of the nodes in service, then 1 % of them per
    # second; fixed figures here keep the arithmetic plain.
    rig = await open_rig(200, burst_share=0.0, burst_min=20, rate_share=0.0, rate_min=2.0)
    try:
        rig.run(GRACE + 0.5, beating=names(140))  # 60 silent: 30 %
        outcome = await rig.monitor.reconcile("nodes")

        states = await rig.states()
        assert sum(1 for s in states.values() if s == "down") == 20
        assert sum(1 for s in states.values() if s == "unknown") == 40
        assert len(await rig.orphaned()) == 20
        assert not rig.monitor.guard.engaged
        assert isinstance(outcome, Requeue) and outcome.after < 1.0

        downs = [20]
        for _ in range(5):
            rig.run(1.0, beating=names(140))
            await rig.monitor.reconcile("nodes")
            downs.append(sum(1 for s in (await rig.states()).values() if s == "down"))
        assert downs == [20, 22, 24, 26, 28, 30]
        assert len(await rig.orphaned()) == 30

        for _ in range(15):  # the monitor looks again as the budget allows
            rig.run(1.0, beating=names(140))
            await rig.monitor.reconcile("nodes")
        states = await rig.states()
        assert sum(1 for s in states.values() if s == "down") == 60
        assert len(await rig.orphaned()) == 60
    finally:
        await rig.informer.aclose()


async def test_default_burst_is_a_tenth_of_the_nodes_so_a_tenth_goes_at_once() -> None:
    rig = await open_rig(200)
    try:
        rig.run(GRACE + 0.5, beating=names(180))  # 20 silent: 10 %

        await rig.monitor.reconcile("nodes")

        assert len(await rig.orphaned()) == 20
    finally:
        await rig.informer.aclose()


async def test_a_node_that_registers_early_in_a_new_term_keeps_the_longer_grace(
    rig10: Rig,
) -> None:
    # A manager restarted under a herd: n000 registers at once, then its heartbeats wait
    # behind the other sessions' registrations for longer than the usual grace.
    rig10.tracker.restart(extra=5.0)
    rig10.tracker.registered("n000")
    rig10.run(GRACE + 1.0, beating=set())
    await rig10.monitor.reconcile("nodes")
    assert set((await rig10.states()).values()) == {"ready"}
    # Once the term's grace is over, silence counts as before.
    rig10.run(GRACE + 5.0, beating=names(9, start=1))
    await rig10.monitor.reconcile("nodes")
    assert (await rig10.states())["n000"] == "down"


async def test_a_node_heard_from_in_a_new_term_has_the_usual_grace(rig10: Rig) -> None:
    rig10.tracker.restart(extra=5.0)
    rig10.run(0.5, beating=names(10))  # heartbeats: the agents found this manager
    rig10.run(GRACE + 0.5, beating=names(9))
    await rig10.monitor.reconcile("nodes")
    assert (await rig10.states())["n009"] == "down"


async def test_a_node_heard_from_that_registers_again_in_a_new_term_starts_afresh(
    rig10: Rig,
) -> None:
    # Early in a term n000 heartbeats, loses its session and registers again 1.2 s
    # later: its silence counts from that registration, not from the old session.
    rig10.tracker.restart(extra=5.0)
    rig10.run(0.5, beating=names(10))
    rig10.run(1.2, beating=names(9, start=1))
    rig10.tracker.registered("n000")
    rig10.run(GRACE - 0.5, beating=names(9, start=1))
    await rig10.monitor.reconcile("nodes")
    assert (await rig10.states())["n000"] == "ready"


async def test_a_new_term_gives_every_node_a_fresh_grace(rig10: Rig) -> None:
    rig10.run(GRACE + 0.5, beating=set())
    rig10.tracker.restart(extra=5.0)

    await rig10.monitor.reconcile("nodes")
    assert set((await rig10.states()).values()) == {"ready"}

    rig10.run(GRACE + 5.0 + 0.2, beating=names(9))
    await rig10.monitor.reconcile("nodes")
    assert (await rig10.states())["n009"] == "down"


def test_heartbeats_are_counted_and_registering_or_forgiving_is_not_one() -> None:
    tracker = HeartbeatTracker(clock=ManualTime())
    tracker.registered("n1")
    tracker.forgive("n1")
    assert tracker.heard == 0
    tracker.beat("n1")
    tracker.beat("n2")
    assert tracker.heard == 2
