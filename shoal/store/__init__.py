"""Pick a store backend from a URL.

The backend is the one pluggable axis of state, so callers name it with a URL
(``--store sqlite:///var/lib/shoal/state.db``) and get back the ``Store``
contract from ``shoal.store.base``; nothing outside this package imports a
backend module directly.
"""

from __future__ import annotations

from shoal.store.base import (
    Compare,
    Delete,
    EndpointHealth,
    Event,
    EventType,
    KeyValue,
    Put,
    Store,
    TxnResult,
)
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SqliteStore

__all__ = [
    "Compare",
    "Delete",
    "EndpointHealth",
    "Event",
    "EventType",
    "KeyValue",
    "MemoryStore",
    "Put",
    "SqliteStore",
    "Store",
    "TxnResult",
    "open_store",
]

_ACCEPTED = (
    "sqlite:///abs/path/state.db, sqlite://relative/path.db, memory:// "
    "or etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
)


async def open_store(url: str) -> Store:
    """Open the store ``url`` names; the caller owns it and must ``aclose()`` it."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "memory" and rest == "":
        return MemoryStore(url=url)
    if sep and scheme == "sqlite" and rest:
        return await SqliteStore.open(rest)
    if sep and scheme == "etcd" and rest:
        from shoal.store.etcd import EtcdStore  # grpc stubs load only when etcd is used

        return await EtcdStore.open(url)
    raise ValueError(f"unsupported store URL {url!r}; use {_ACCEPTED}")
