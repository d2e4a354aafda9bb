"""One fixture, every backend: each test here runs against memory and sqlite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from shoal.store import MemoryStore, SqliteStore, Store
from shoal.store.memory import DEFAULT_HISTORY

StoreFactory = Callable[..., Awaitable[Store]]


@pytest.fixture(params=[pytest.param("memory", id="memory"), pytest.param("sqlite", id="sqlite")])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Open stores of the parametrized backend (``history=`` passes through); closes them."""
    opened: list[Store] = []

    async def make(history: int = DEFAULT_HISTORY) -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore(history=history)
        else:
            path = tmp_path / f"db{len(opened)}" / "state.db"
            store = await SqliteStore.open(path, history=history)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store()
