"""The metered store times every write under its backend and result."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from shoal.errors import StoreUnavailableError
from shoal.store import Compare, Put, SqliteStore
from shoal.store.metered import MeteredStore, write_histogram


def writes(registry: CollectorRegistry, result: str) -> float:
    labels = {"backend": "sqlite", "result": result}
    return registry.get_sample_value("shoal_store_write_duration_seconds_count", labels) or 0.0


async def test_writes_are_timed_by_result(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = MeteredStore(await SqliteStore.open(tmp_path / "state.db"), write_histogram(registry))
    await store.put("/a", b"1")  # put is a transaction underneath
    won = await store.txn([Compare("/a", "version", "==", 1)], [Put("/a", b"2")])
    lost = await store.txn([Compare("/a", "version", "==", 1)], [Put("/a", b"3")])
    assert won.succeeded and not lost.succeeded
    await store.get("/a")  # reads are not writes
    assert writes(registry, "committed") == 2.0
    assert writes(registry, "conflict") == 1.0
    await store.aclose()
    with pytest.raises(StoreUnavailableError):
        await store.put("/b", b"1")
    assert writes(registry, "error") == 1.0
