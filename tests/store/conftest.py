"""One fixture, every backend: each test here runs against memory, sqlite and etcd.

``metered`` is the SQLite store inside ``MeteredStore`` (what a manager opens:
its writes timed for ``/metrics``), which must keep the same contract.

etcd is a real 3-member cluster on loopback ports, started once per test
session; each store gets a key prefix of its own in it. Without the ``etcd``
binary the etcd cases skip, or fail under ``SHOAL_REQUIRE_ENGINES=1``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from shoal.store import MemoryStore, SqliteStore, Store
from shoal.store.etcd import EtcdStore
from shoal.store.memory import DEFAULT_HISTORY
from shoal.store.metered import MeteredStore, write_histogram
from tests.etcdcluster import EtcdCluster, etcd_cluster

StoreFactory = Callable[..., Awaitable[Store]]
_prefixes = itertools.count()


@dataclass(frozen=True)
class LeaseTiming:
    """A lease ttl the backend honours exactly, and how late expiry may come."""

    ttl: float
    slack: float


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def etcd_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A cluster that serves TLS only and requires client certificates."""
    with etcd_cluster(tmp_path_factory.mktemp("etcd-tls"), tls=True) as cluster:
        yield cluster


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("etcd", id="etcd"),
        pytest.param("etcd-tls", id="etcd-tls"),
        pytest.param("metered", id="metered"),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def lease_timing(backend: str) -> LeaseTiming:
    # etcd grants whole seconds and checks expiry every 500 ms.
    return LeaseTiming(1.0, 1.0) if backend.startswith("etcd") else LeaseTiming(0.3, 0.5)


@pytest.fixture
async def make_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    """Open stores of the parametrized backend (``history=`` passes through); closes them."""
    opened: list[Store] = []
    cluster: EtcdCluster | None = None
    if backend.startswith("etcd"):
        cluster = request.getfixturevalue(backend.replace("-", "_"))

    async def make(history: int = DEFAULT_HISTORY) -> Store:
        store: Store
        if backend == "memory":
            store = MemoryStore(history=history)
        elif backend in ("sqlite", "metered"):
            path = tmp_path / f"db{len(opened)}" / "state.db"
            store = await SqliteStore.open(path, history=history)
            if backend == "metered":
                store = MeteredStore(store, write_histogram(CollectorRegistry()))
        else:
            assert cluster is not None
            store = await EtcdStore.open(cluster.url(f"conformance/{next(_prefixes)}"))
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store()
