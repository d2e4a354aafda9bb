"""The manager's task-creation stage alone: service applied → every task placed (and running).

The leader's orchestrator and scheduler on an informer over a real SQLite store
(``synchronous=FULL``, as the manager runs it), wired as ``shoal manager`` wires
them, with no agents and no gRPC: 1,000 nodes, then 10 services x 1,000
replicas in one write. It prints the CPU this process used (every thread, from
``/proc``) from that write until every task is ``assigned``, then until every
task is ``running`` (the status reports written through the manager's
``StatusWriter``, one call per node, as agents' batches arrive), per task, with
the passes each controller ran and the garbage collector's share.

    .venv/bin/python bench/placement.py [--runs 3] [--born-pending] [--default-gc]

``--born-pending``: no placer, so tasks are born pending and the scheduler
places them (the path before tasks were born placed). ``--default-gc``: keep
CPython's collector thresholds instead of the manager's (``shoal.gcpolicy``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from shoal import gcpolicy
from shoal.manager.statuswriter import StatusWriter
from shoal.models import (
    Node,
    NodeDescription,
    NodeState,
    NodeStatus,
    RuntimeInfo,
    Service,
    TaskState,
    TaskStatus,
)
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.loop import ControllerRunner, LoopMetrics, Outcome
from shoal.reconciler.orchestrator import Orchestrator
from shoal.reconciler.scheduler import Scheduler
from shoal.store.sqlite import SqliteStore
from shoal.store.typed import Change, Object, TypedStore


def node(node_id: str) -> Node:
    return Node(
        id=node_id,
        description=NodeDescription(
            hostname=node_id, runtimes=[RuntimeInfo(name="sim", available=True)], cpus=4.0
        ),
        status=NodeStatus(state=NodeState.READY),
    )


def service(name: str, replicas: int) -> Service:
    spec = {"replicas": replicas, "template": {"runtime": "sim", "command": ["work"]}}
    return Service.model_validate({"metadata": {"name": name, "generation": 1}, "spec": spec})


def cpu_seconds() -> float:
    with open(f"/proc/{os.getpid()}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GcClock:
    """CPU seconds spent in the garbage collector, and collections per generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections: Counter[int] = Counter()
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.process_time()
        else:
            self.seconds += time.process_time() - self._started
            self.collections[info["generation"]] += 1

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


async def run(args: argparse.Namespace, directory: Path) -> str:
    store = await SqliteStore.open(directory / "state.db")
    informer = Informer(store, TypedStore(store))
    await informer.start()
    if not args.default_gc:
        gcpolicy.long_lived_heap()
        gcpolicy.started()
    events = EventRecorder()
    scheduler = Scheduler(informer, events)
    placer = None if args.born_pending else scheduler
    orchestrator = Orchestrator(informer, events, placer=placer)
    passes: Counter[str] = Counter()
    runners = [ControllerRunner(c, LoopMetrics(CollectorRegistry())) for c in (orchestrator,)]
    runners.append(ControllerRunner(scheduler, LoopMetrics(CollectorRegistry())))
    for runner in runners:
        reconcile = runner.controller.reconcile
        name = runner.controller.name

        async def counted(key: str, reconcile: Any = reconcile, name: str = name) -> Outcome:
            passes[name] += 1
            result: Outcome = await reconcile(key)
            return result

        runner.controller.reconcile = counted  # type: ignore[method-assign]

    def route(old: Object | None, new: Object | None) -> None:
        for runner in runners:
            for key in runner.controller.keys_for(old, new):
                runner.enqueue(key)

    informer.subscribe(route)
    writer = StatusWriter(informer)
    placed: set[str] = set()
    reports: dict[str, dict[str, TaskStatus]] = {}

    def agents(old: Object | None, new: Object | None) -> None:
        task = new
        status = getattr(task, "status", None)
        node_id = getattr(task, "node_id", None)
        task_id = getattr(task, "id", "")
        assigned = status is not None and status.state == TaskState.ASSIGNED
        if assigned and node_id and task_id not in placed:
            placed.add(task_id)
            reports.setdefault(node_id, {})[task_id] = TaskStatus(state=TaskState.RUNNING)

    informer.subscribe(agents)
    for first in range(0, args.nodes, 250):
        batch = range(first, min(args.nodes, first + 250))
        await informer.commit([Change.put(node(f"node-{i:04d}"), None) for i in batch])
    for runner in runners:
        runner.start()
    await asyncio.sleep(0.5)
    total = args.services * args.replicas
    collector = GcClock()
    running = 0

    def count_running(old: Object | None, new: Object | None) -> None:
        nonlocal running
        was = getattr(old, "status", None)
        now = getattr(new, "status", None)
        running += (now is not None and now.state == TaskState.RUNNING) - (
            was is not None and was.state == TaskState.RUNNING
        )

    informer.subscribe(count_running)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    services = [service(f"svc-{i}", args.replicas) for i in range(args.services)]
    await informer.commit([Change.put(s, None) for s in services])
    cpu_placed = wall_placed = 0.0
    while running < total:
        if len(placed) == total and not cpu_placed:
            cpu_placed, wall_placed = cpu_seconds(), time.perf_counter()
        if reports:
            batch, reports = dict(reports), {}
            await asyncio.gather(*(writer.submit(n, r) for n, r in batch.items()))
        await asyncio.sleep(0.005)
    cpu1, wall1 = cpu_seconds(), time.perf_counter()
    collector.close()
    for runner in runners:
        await runner.aclose()
    await writer.aclose()
    await informer.aclose()
    await store.aclose()
    return (
        f"placed: {wall_placed - wall0:.2f} s, {cpu_placed - cpu0:.2f} s CPU = "
        f"{1000 * (cpu_placed - cpu0) / total:.3f} ms/task; running: {wall1 - wall0:.2f} s, "
        f"{cpu1 - cpu0:.2f} s CPU = {1000 * (cpu1 - cpu0) / total:.3f} ms/task; "
        f"passes {dict(passes)}; gc {collector.seconds:.2f} s {dict(collector.collections)}; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB; "
        f"load {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--born-pending", action="store_true")
    parser.add_argument("--default-gc", action="store_true")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    for number in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as directory:
            print(f"run {number}: {asyncio.run(run(args, Path(directory)))}", flush=True)


if __name__ == "__main__":
    main()
