"""Services, tasks and nodes on top of the key-value contract.

Key layout (every backend, every version of shoal must agree on it):

    /services/<name>     Service (JSON, camelCase)
    /tasks/<id>          Task
    /nodes/<id>          Node
    /cluster/config      ClusterConfig (join tokens)

Writes are batches of ``Change``s committed in one transaction. Each change
carries the ``mod_revision`` it was computed from (optimistic concurrency):
``expect=0`` means "must not exist yet", ``None`` means "whatever is there".
If any compare fails nothing is written and ``ConflictError`` is raised.
A ``Fence`` adds compares to every transaction: a leader's "my term is still
current" check (``shoal.manager.election``). When a fenced transaction fails,
the fence is asked whether it still holds, so a deposed leader gets
``NotLeaderError`` instead of a ``ConflictError`` it would retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from shoal.errors import ConflictError
from shoal.models import Node, Service, Task
from shoal.models.base import Model
from shoal.store.base import Compare, Delete, KeyValue, Put, Store

SERVICES = "/services/"
TASKS = "/tasks/"
NODES = "/nodes/"
CLUSTER_CONFIG = "/cluster/config"

log = structlog.get_logger(__name__)

Object = Service | Task | Node


class Fence(Protocol):
    def compares(self) -> list[Compare]:
        """Compares for the next write; raise (``NotLeaderError``) to refuse writing at all."""
        ...

    async def check(self) -> None:
        """After a fenced write failed: raise if the fence itself no longer holds."""
        ...


class ClusterConfig(Model):
    worker_token: str
    cluster_id: str


def key_of(obj: Object) -> str:
    if isinstance(obj, Service):
        return SERVICES + obj.metadata.name
    if isinstance(obj, Task):
        return TASKS + obj.id
    return NODES + obj.id


def decode(kv: KeyValue) -> Object | None:
    """The object a key holds, or ``None`` for keys outside the object prefixes."""
    if kv.key.startswith(SERVICES):
        return Service.model_validate_json(kv.value)
    if kv.key.startswith(TASKS):
        return Task.model_validate_json(kv.value)
    if kv.key.startswith(NODES):
        return Node.model_validate_json(kv.value)
    return None


@dataclass(frozen=True, slots=True)
class Change:
    """Put ``obj`` (or delete ``key`` when ``obj`` is None), compared on ``expect``."""

    key: str
    obj: Object | None
    expect: int | None

    @classmethod
    def put(cls, obj: Object, expect: int | None) -> Change:
        return cls(key_of(obj), obj, expect)

    @classmethod
    def delete(cls, key: str, expect: int | None) -> Change:
        return cls(key, None, expect)


class TypedStore:
    """Commits batches of object changes atomically, with compares and a fence."""

    def __init__(self, store: Store, fence: Fence | None = None) -> None:
        self.store = store
        self.fence = fence

    async def commit(self, changes: Sequence[Change]) -> int:
        """Write every change in one transaction; return the new revision."""
        fence = self.fence.compares() if self.fence is not None else []
        compares = list(fence)
        ops: list[Put | Delete] = []
        for change in changes:
            if change.expect is not None:
                compares.append(Compare(change.key, "mod_revision", "==", change.expect))
            if change.obj is None:
                ops.append(Delete(change.key))
            else:
                ops.append(Put(change.key, change.obj.to_json_bytes()))
        result = await self.store.txn(compares, ops)
        if not result.succeeded:
            if fence and self.fence is not None:
                await self.fence.check()
            raise ConflictError(f"{len(changes)} change(s) lost a race with another writer")
        if fence:
            log.debug("store.fenced_write", revision=result.revision, term=fence[0].value)
        return result.revision

    async def get_config(self) -> ClusterConfig | None:
        kv = await self.store.get(CLUSTER_CONFIG)
        return ClusterConfig.model_validate_json(kv.value) if kv else None

    async def create_config(self, config: ClusterConfig) -> ClusterConfig:
        """Store ``config`` unless one exists; return whichever is stored."""
        result = await self.store.txn(
            [Compare(CLUSTER_CONFIG, "version", "==", 0)],
            [Put(CLUSTER_CONFIG, config.to_json_bytes())],
        )
        if result.succeeded:
            return config
        existing = await self.get_config()
        assert existing is not None
        return existing
