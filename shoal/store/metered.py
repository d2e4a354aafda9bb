"""A store that times every write: ``shoal_store_write_duration_seconds``.

Every write of the manager (reconcilers' commits, status batches, the
election's puts) is a ``txn`` underneath (``put`` and ``delete`` are built on
it in ``Store``), so timing ``txn`` of the store the manager opened measures
them all, whatever the backend. Each is observed with the backend (``sqlite``,
``etcd``, ``memory``) and its result: ``committed`` (the compares held),
``conflict`` (a lost race, ``succeeded`` false) or ``error`` (the store raised;
the outcome is unknown). Everything else is passed through unchanged, so the
wrapped store keeps the contract of ``shoal.store.base`` (the conformance suite
runs against it too).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

from prometheus_client import CollectorRegistry, Histogram

from shoal.store.base import (
    Compare,
    EndpointHealth,
    Event,
    KeyValue,
    LeaseRenewer,
    Op,
    Store,
    TxnResult,
)

# From a memory store's microseconds to a struggling etcd's seconds.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def write_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "shoal_store_write_duration_seconds",
        "Time one store write (a transaction) took, by backend and result "
        "(committed, conflict, error).",
        ["backend", "result"],
        registry=registry,
        buckets=BUCKETS,
    )


class MeteredStore(Store):
    """``inner`` with its writes timed into ``histogram``."""

    def __init__(self, inner: Store, histogram: Histogram) -> None:
        self.inner = inner
        self.url = inner.url
        self.max_txn_ops = inner.max_txn_ops
        self.max_txn_bytes = inner.max_txn_bytes
        self.backend = inner.url.partition("://")[0] or "unknown"
        self._histogram = histogram

    async def get(self, key: str) -> KeyValue | None:
        return await self.inner.get(key)

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self.inner.range(prefix)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        began = time.perf_counter()
        result = "error"
        try:
            outcome = await self.inner.txn(compares, success, failure)
            result = "committed" if outcome.succeeded else "conflict"
            return outcome
        finally:
            self._histogram.labels(self.backend, result).observe(time.perf_counter() - began)

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        return self.inner.watch(prefix, start_revision)

    async def revision(self) -> int:
        return await self.inner.revision()

    async def grant_lease(self, ttl: float) -> int:
        return await self.inner.grant_lease(ttl)

    async def keepalive(self, lease: int) -> None:
        await self.inner.keepalive(lease)

    async def revoke(self, lease: int) -> None:
        await self.inner.revoke(lease)

    def lease_renewer(self, lease: int) -> LeaseRenewer | None:
        return self.inner.lease_renewer(lease)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def health(self) -> list[EndpointHealth]:
        return await self.inner.health()

    async def aclose(self) -> None:
        await self.inner.aclose()
