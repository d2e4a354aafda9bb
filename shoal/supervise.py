"""Background jobs that must not die unnoticed: log, count, restart.

A long-lived ``asyncio`` task (the informer's watch, the election's observer)
that raises an exception nobody expected simply ends: its result is never
awaited, and the part of the manager it fed goes quietly stale (a cache that
never changes again, a follower that never campaigns again). ``supervise``
runs such a job's body and, when it raises, logs the traceback, counts the
restart under the job's name and runs the body again after a back-off
(doubling from ``first_delay`` to ``max_delay``, reset after a body that ran
``healthy_after`` seconds). A body that returns is finished for good;
cancelling the supervisor cancels the body.

The counts are exported as ``shoal_background_restarts_total{background_job}``
by ``RestartsCollector`` (not ``job``: Prometheus gives every target a ``job``
label of its own); a rising counter is a bug to report.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import structlog
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)


async def supervise(
    job: str,
    body: Callable[[bool], Awaitable[None]],
    restarts: Counter[str],
    *,
    first_delay: float = 0.1,
    max_delay: float = 10.0,
    healthy_after: float = 60.0,
) -> None:
    """Run ``body(restarted)`` until it returns; restart it whenever it raises."""
    loop = asyncio.get_running_loop()
    delay = first_delay
    restarted = False
    while True:
        began = loop.time()
        try:
            await body(restarted)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            restarts[job] += 1
            if loop.time() - began >= healthy_after:
                delay = first_delay
            log.exception("background.crashed", job=job, restarts=restarts[job], restart_in=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
        restarted = True


class RestartsCollector(Collector):
    """Exports how often each supervised job was restarted."""

    def __init__(self, restarts: Counter[str]) -> None:
        self.restarts = restarts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "shoal_background_restarts",
            "Background jobs restarted after an unexpected error, by job.",
            labels=["background_job"],
        )
        for job, count in sorted(self.restarts.items()):
            family.add_metric([job], count)
        yield family
