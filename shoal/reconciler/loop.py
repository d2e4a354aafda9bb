"""The reconcile loop framework: work queue, outcomes, retries, resync, metrics.

Controllers are level-triggered: ``reconcile(key)`` reads the whole desired and
actual state for one key from the informer and moves the world one step
towards the desired state. Events only say *which* key to look at, never what
to do, so missing or duplicated events are harmless and a periodic resync of
every key repairs anything a lost event left behind.

The ``WorkQueue`` holds each key at most once (de-duplication), never hands the
same key to two workers at once, and remembers a key that was added again while
it was being processed so it runs once more afterwards. A reconcile ends with
an explicit ``Outcome``:

* ``Done()``: nothing more to do until something changes;
* ``Requeue(after)``: look again after ``after`` seconds (a timer, e.g. a
  restart delay);
* ``Failed(message)``: a permanent error, recorded and not retried until the
  key changes or the next resync.

An exception is a temporary error: the key is retried with exponential
back-off per key (5 ms doubling to 30 s), reset by the next success.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shoal.store.typed import Object

if TYPE_CHECKING:
    from shoal.reconciler.events import EventRecorder
    from shoal.reconciler.reports import Reports

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Done:
    pass


@dataclass(frozen=True, slots=True)
class Requeue:
    after: float


@dataclass(frozen=True, slots=True)
class Failed:
    message: str


Outcome = Done | Requeue | Failed


class Controller(abc.ABC):
    """One reconcile loop. Subclasses set ``name`` and implement the two methods."""

    name: str
    workers: int = 1

    @abc.abstractmethod
    async def reconcile(self, key: str) -> Outcome: ...

    @abc.abstractmethod
    def all_keys(self) -> Iterable[str]:
        """Every key that exists now, for the periodic resync."""

    @abc.abstractmethod
    def keys_for(self, old: Object | None, new: Object | None) -> Iterable[str]:
        """The keys a store change (``old`` → ``new``) may affect; cheap, no I/O."""

    def starting(self) -> None:
        """Called each time a runner starts this controller (each term this manager leads).

        Changes are routed to a controller only while it runs, so anything it
        derived from them in an earlier term is stale: rebuild it from the informer.
        """
        return None


class WorkQueue:
    """Keys to reconcile; each key queued at most once and processed by one worker."""

    def __init__(self) -> None:
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._again: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: str, after: float = 0.0) -> None:
        if after > 0:
            existing = self._timers.get(key)
            due = asyncio.get_running_loop().time() + after
            if existing and existing.when() <= due:
                return
            if existing:
                existing.cancel()
            self._timers[key] = asyncio.get_running_loop().call_at(due, self._fire, key)
            return
        if key in self._active:
            self._again.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._ready.put_nowait(key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> str:
        while True:
            key = await self._ready.get()
            if key in self._queued:
                self._queued.discard(key)
                self._active.add(key)
                return key

    def done(self, key: str) -> None:
        self._active.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class LoopMetrics:
    """Reconcile metrics shared by every controller of one manager."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "shoal_reconcile_duration_seconds",
            "Time spent in one reconcile call.",
            ["controller"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.outcomes = Counter(
            "shoal_reconcile_total",
            "Reconcile calls by controller and outcome (done, requeue, failed, error).",
            ["controller", "outcome"],
            registry=registry,
        )
        self.depth = Gauge(
            "shoal_workqueue_depth",
            "Keys waiting in a controller's queue.",
            ["controller"],
            registry=registry,
        )


class ControllerRunner:
    """Runs one controller: workers pulling from its queue, back-off, resync."""

    def __init__(
        self,
        controller: Controller,
        metrics: LoopMetrics,
        resync_period: float = 30.0,
        max_backoff: float = 30.0,
        reports: Reports | None = None,
        events: EventRecorder | None = None,
    ) -> None:
        self.controller = controller
        # Where errors and permanent failures are told (``shoal events``).
        self.events = events
        self.queue = WorkQueue()
        self.metrics = metrics
        self.resync_period = resync_period
        self.max_backoff = max_backoff
        # Where each key's outcome is told (``shoal.reconciler.reports``).
        self.reports = reports
        self._failures: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        metrics.depth.labels(controller.name).set_function(lambda: len(self.queue))

    def enqueue(self, key: str, after: float = 0.0) -> None:
        self.queue.add(key, after)

    def start(self) -> None:
        name = self.controller.name
        self.controller.starting()
        for index in range(self.controller.workers):
            self._tasks.append(asyncio.create_task(self._work(), name=f"{name}-worker-{index}"))
        self._tasks.append(asyncio.create_task(self._resync(), name=f"{name}-resync"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.queue.close()

    async def _resync(self) -> None:
        while True:
            for key in self.controller.all_keys():
                self.queue.add(key)
            await asyncio.sleep(self.resync_period)

    async def _work(self) -> None:
        name = self.controller.name
        while True:
            key = await self.queue.get()
            started = time.perf_counter()
            try:
                outcome = await self.controller.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a temporary error: retry with back-off
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self.max_backoff, 0.005 * 2 ** (failures - 1))
                if self.reports is not None:
                    self.reports.record(key, exc)
                self.metrics.outcomes.labels(name, "error").inc()
                log.warning(
                    "reconcile.error",
                    controller=name,
                    key=key,
                    error=str(exc),
                    error_type=type(exc).__name__,
                    retry_in=round(delay, 3),
                )
                if self.events is not None:
                    self.events.record(
                        f"controller/{name}", "ReconcileError", f"{key}: {exc}", warning=True
                    )
                self.queue.done(key)
                self.queue.add(key, delay)
                continue
            finally:
                self.metrics.duration.labels(name).observe(time.perf_counter() - started)
            self._failures.pop(key, None)
            if self.reports is not None:
                self.reports.record(key, outcome)
            if isinstance(outcome, Requeue):
                self.metrics.outcomes.labels(name, "requeue").inc()
                self.queue.done(key)
                self.queue.add(key, outcome.after)
                continue
            if isinstance(outcome, Failed):
                self.metrics.outcomes.labels(name, "failed").inc()
                log.error("reconcile.failed", controller=name, key=key, error=outcome.message)
                if self.events is not None:
                    self.events.record(
                        f"controller/{name}", "ReconcileFailed", f"{key}: {outcome.message}", True
                    )
            else:
                self.metrics.outcomes.labels(name, "done").inc()
            self.queue.done(key)
