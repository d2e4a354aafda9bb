"""The work queue and the controller runner: de-duplication, requeue, back-off, resync.

Loop time is virtual (``looptime``): a 30-second back-off takes no real time,
and the times at which a controller is called are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry

from shoal.reconciler.loop import (
    Controller,
    ControllerRunner,
    Done,
    Failed,
    LoopMetrics,
    Outcome,
    Requeue,
    WorkQueue,
)
from shoal.reconciler.reports import Reports
from shoal.store.typed import Object

pytestmark = pytest.mark.looptime


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_a_key_added_many_times_is_handed_out_once() -> None:
    queue = WorkQueue()
    for _ in range(3):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]
    assert len(queue) == 0


async def test_a_key_added_while_it_is_processed_runs_once_more_after() -> None:
    queue = WorkQueue()
    queue.add("a")
    assert await queue.get() == "a"
    queue.add("a")
    queue.add("a")
    second = asyncio.create_task(queue.get())  # a second worker must not get it meanwhile
    await asyncio.sleep(1)
    assert not second.done()
    queue.done("a")
    assert await asyncio.wait_for(second, 1) == "a"
    queue.done("a")
    assert len(queue) == 0


async def test_a_delayed_key_arrives_after_its_delay_and_the_sooner_delay_wins() -> None:
    queue = WorkQueue()
    start = now()
    queue.add("a", after=10)
    queue.add("a", after=3)  # sooner: replaces the 10 s timer
    queue.add("a", after=20)  # later: ignored
    assert await queue.get() == "a"
    assert now() - start == pytest.approx(3)
    queue.done("a")
    assert len(queue) == 0
    await asyncio.sleep(30)
    assert len(queue) == 0  # the replaced timers never fire
    queue.close()


class Scripted(Controller):
    """Answers each reconcile with the next scripted outcome (an exception is raised)."""

    name = "scripted"

    def __init__(self, script: list[Outcome | Exception]) -> None:
        self.script = script
        self.calls: list[tuple[str, float]] = []
        self.called = asyncio.Event()

    async def reconcile(self, key: str) -> Outcome:
        self.calls.append((key, now()))
        self.called.set()
        step = self.script.pop(0) if self.script else Done()
        if isinstance(step, Exception):
            raise step
        return step

    def all_keys(self) -> Iterable[str]:
        return ()

    def keys_for(self, old: Object | None, new: Object | None) -> Iterable[str]:
        return ()

    async def calls_reach(self, count: int) -> None:
        while len(self.calls) < count:
            self.called.clear()
            await asyncio.wait_for(self.called.wait(), 120)


@pytest.fixture
def metrics() -> LoopMetrics:
    return LoopMetrics(CollectorRegistry())


def outcome_count(metrics: LoopMetrics, outcome: str) -> float:
    """``shoal_reconcile_total`` as a scrape would show it."""
    return sum(
        sample.value
        for family in metrics.outcomes.collect()
        for sample in family.samples
        if sample.name == "shoal_reconcile_total"
        and sample.labels == {"controller": "scripted", "outcome": outcome}
    )


async def test_errors_are_retried_with_doubling_back_off_reset_by_success(
    metrics: LoopMetrics,
) -> None:
    boom = RuntimeError("store hiccup")
    controller = Scripted([boom, boom, boom, Done(), boom])
    runner = ControllerRunner(controller, metrics, resync_period=3600)
    runner.start()
    start = now()
    runner.enqueue("k")
    await controller.calls_reach(4)
    gaps = [
        round(b - a, 3)
        for (_, a), (_, b) in zip(controller.calls, controller.calls[1:], strict=False)
    ]
    assert gaps == [0.005, 0.01, 0.02]
    assert controller.calls[0][1] == pytest.approx(start)
    runner.enqueue("k")  # fails again: the back-off starts over from 5 ms
    await controller.calls_reach(6)
    assert round(controller.calls[5][1] - controller.calls[4][1], 3) == 0.005
    assert outcome_count(metrics, "error") == 4
    assert outcome_count(metrics, "done") == 2
    await runner.aclose()


async def test_back_off_is_capped(metrics: LoopMetrics) -> None:
    controller = Scripted([RuntimeError("down")] * 14)
    runner = ControllerRunner(controller, metrics, resync_period=3600, max_backoff=30.0)
    runner.start()
    runner.enqueue("k")
    await controller.calls_reach(15)
    last_gap = controller.calls[14][1] - controller.calls[13][1]
    assert last_gap == pytest.approx(30.0)
    await runner.aclose()


async def test_requeue_looks_again_after_the_delay_and_failed_waits_for_a_change(
    metrics: LoopMetrics,
) -> None:
    controller = Scripted([Requeue(7.0), Failed("bad spec")])
    reports = Reports()
    runner = ControllerRunner(controller, metrics, resync_period=3600, reports=reports)
    runner.start()
    runner.enqueue("k")
    await controller.calls_reach(2)
    assert controller.calls[1][1] - controller.calls[0][1] == pytest.approx(7.0)
    await asyncio.sleep(600)
    assert len(controller.calls) == 2  # a permanent error is not retried on its own
    assert reports.error("k") == "bad spec"  # what describe and get show
    runner.enqueue("k")  # the key changed
    await controller.calls_reach(3)
    await runner.aclose()


async def test_resync_visits_every_key_periodically(metrics: LoopMetrics) -> None:
    controller = Scripted([])
    controller.all_keys = lambda: ("a", "b")  # type: ignore[method-assign]
    runner = ControllerRunner(controller, metrics, resync_period=30.0)
    runner.start()
    await controller.calls_reach(6)
    times = sorted({round(t) for _, t in controller.calls})
    assert len(times) == 3 and times[1] - times[0] == 30
    assert sorted(k for k, _ in controller.calls) == ["a", "a", "a", "b", "b", "b"]
    await runner.aclose()


async def test_one_key_is_never_reconciled_twice_at_once(metrics: LoopMetrics) -> None:
    running: set[str] = set()
    overlaps: list[str] = []

    class Slow(Scripted):
        workers = 4

        async def reconcile(self, key: str) -> Outcome:
            if key in running:
                overlaps.append(key)
            running.add(key)
            await asyncio.sleep(1)
            running.discard(key)
            return await super().reconcile(key)

    controller = Slow([])
    runner = ControllerRunner(controller, metrics, resync_period=3600)
    runner.start()
    for _ in range(5):
        runner.enqueue("k")
        runner.enqueue("other")
        await asyncio.sleep(0.3)
    await asyncio.sleep(5)
    assert overlaps == []
    # Adds at 0, 0.3, 0.6, 0.9 and 1.2 s, passes of 1 s: the adds during the first
    # pass collapse into one more (1-2 s), the add at 1.2 s into a third (2-3 s).
    assert sorted(k for k, _ in controller.calls) == ["k"] * 3 + ["other"] * 3
    await runner.aclose()
