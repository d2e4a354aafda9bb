"""Services, tasks and nodes on top of the key-value contract.

Key layout (every backend, every version of shoal must agree on it):

    /services/<name>     Service (JSON, camelCase)
    /tasks/<id>          Task
    /nodes/<id>          Node
    /secrets/<name>      Secret (its bytes sealed with the data key)
    /configs/<name>      Config (the same)
    /syncs/<name>        Sync (GitOps source; status written by its controller)
    /applysets/<name>    ApplySet (what `apply --prune` and each Sync own)
    /cluster/config      ClusterConfig (cluster id)
    /cluster/datakey     the data key's check value (shoal.security.datakey)
    /security/...        the CA, tokens, users, revocations (shoal.security.state)
    /events/<id>         Event (shoal.reconciler.events: written and trimmed there, not here)

Writes are batches of ``Change``s. Each change carries the ``mod_revision``
it was computed from (optimistic concurrency): ``expect=0`` means "must not
exist yet", ``None`` means "whatever is there". ``commit`` writes a batch in
one transaction: if any compare fails nothing is written and
``ConflictError`` is raised. ``commit_in_chunks`` writes a large batch as
several transactions, each within the store's limits (etcd refuses more than
128 operations or 1.5 MiB by default) and at most ``CHUNK`` changes, so that
encoding one chunk never holds the event loop for long: each chunk is atomic,
the batch is not. It suits the reconcilers, which are level-triggered: after a
chunk lost its race the next reconcile sees the chunks already written and
computes only what is left.
A ``Fence`` adds compares to every transaction: a leader's "my term is still
current" check (``shoal.manager.election``). When a fenced transaction fails,
the fence is asked whether it still holds, so a deposed leader gets
``NotLeaderError`` instead of a ``ConflictError`` it would retry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from shoal.errors import ConflictError, StoreError
from shoal.models import Node, Service, Task
from shoal.models.base import Model
from shoal.models.secret import Config, Secret
from shoal.models.sync import ApplySet, Sync
from shoal.store.base import Compare, Delete, KeyValue, Op, Put, Store

SERVICES = "/services/"
TASKS = "/tasks/"
NODES = "/nodes/"
SECRETS = "/secrets/"
CONFIGS = "/configs/"
SYNCS = "/syncs/"
APPLYSETS = "/applysets/"
CLUSTER_CONFIG = "/cluster/config"

log = structlog.get_logger(__name__)

# Changes per transaction in ``commit_in_chunks`` when the store allows more:
# encoding and applying this many objects takes a few milliseconds.
CHUNK = 250

Object = Service | Task | Node | Secret | Config | Sync | ApplySet


class Fence(Protocol):
    def compares(self) -> list[Compare]:
        """Compares for the next write; raise (``NotLeaderError``) to refuse writing at all."""
        ...

    async def check(self) -> None:
        """After a fenced write failed: raise if the fence itself no longer holds."""
        ...


class ClusterConfig(Model):
    cluster_id: str
    # Before cluster identity, the join token lived here (now in /security/tokens).
    worker_token: str | None = None


def key_of(obj: Object) -> str:
    if isinstance(obj, Service):
        return SERVICES + obj.metadata.name
    if isinstance(obj, Task):
        return TASKS + obj.id
    if isinstance(obj, Secret):
        return SECRETS + obj.metadata.name
    if isinstance(obj, Config):
        return CONFIGS + obj.metadata.name
    if isinstance(obj, Sync):
        return SYNCS + obj.metadata.name
    if isinstance(obj, ApplySet):
        return APPLYSETS + obj.name
    return NODES + obj.id


def decode(kv: KeyValue) -> Object | None:
    """The object a key holds, or ``None`` for keys outside the object prefixes."""
    if kv.key.startswith(SERVICES):
        return Service.from_wire(kv.value)
    if kv.key.startswith(TASKS):
        return Task.from_wire(kv.value)
    if kv.key.startswith(NODES):
        return Node.from_wire(kv.value)
    if kv.key.startswith(SECRETS):
        return Secret.from_wire(kv.value)
    if kv.key.startswith(CONFIGS):
        return Config.from_wire(kv.value)
    if kv.key.startswith(SYNCS):
        return Sync.from_wire(kv.value)
    if kv.key.startswith(APPLYSETS):
        return ApplySet.from_wire(kv.value)
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


def _encode(change: Change) -> tuple[Compare | None, Op]:
    compare = None
    if change.expect is not None:
        compare = Compare(change.key, "mod_revision", "==", change.expect)
    if change.obj is None:
        return compare, Delete(change.key)
    return compare, Put(change.key, change.obj.to_json_bytes())


class TypedStore:
    """Commits batches of object changes atomically, with compares and a fence."""

    def __init__(self, store: Store, fence: Fence | None = None) -> None:
        self.store = store
        self.fence = fence

    async def commit(self, changes: Sequence[Change]) -> int:
        """Write every change in one transaction; return the new revision.

        Raises ``StoreError`` if the batch exceeds one transaction of the store.
        """
        fence = self.fence.compares() if self.fence is not None else []
        compares, ops = self._encode(changes)
        limit = self.store.max_txn_ops
        if limit is not None and max(len(fence) + len(compares), len(ops)) > limit:
            raise StoreError(
                f"{len(changes)} changes cannot be written at once: {self.store.url} takes at "
                f"most {limit - len(fence)} per transaction"
            )
        return await self._txn(fence, compares, ops, len(changes))

    async def commit_in_chunks(
        self, changes: Sequence[Change]
    ) -> AsyncIterator[tuple[Sequence[Change], int]]:
        """Write ``changes`` in chunks; yield each chunk once written, with its revision.

        Stops at the first chunk that loses its race (``ConflictError``): the
        chunks yielded before it are written, the rest are not.
        """
        fence = self.fence.compares() if self.fence is not None else []
        most = CHUNK
        if self.store.max_txn_ops is not None:
            most = max(1, min(most, self.store.max_txn_ops - len(fence)))
        budget = self.store.max_txn_bytes
        start = 0
        while start < len(changes):
            encoded = [_encode(c) for c in changes[start : start + most]]
            if budget is not None:
                size = 0
                for count, (_, op) in enumerate(encoded):
                    size += len(op.key) + (len(op.value) if isinstance(op, Put) else 0)
                    if size > budget and count > 0:
                        del encoded[count:]
                        break
            chunk = changes[start : start + len(encoded)]
            compares = [c for c, _ in encoded if c is not None]
            revision = await self._txn(fence, compares, [op for _, op in encoded], len(chunk))
            yield chunk, revision
            start += len(chunk)
            if start < len(changes):
                fence = self.fence.compares() if self.fence is not None else []

    def _encode(self, changes: Sequence[Change]) -> tuple[list[Compare], list[Op]]:
        encoded = [_encode(c) for c in changes]
        return [c for c, _ in encoded if c is not None], [op for _, op in encoded]

    async def _txn(
        self, fence: list[Compare], compares: list[Compare], ops: Sequence[Op], count: int
    ) -> int:
        result = await self.store.txn([*fence, *compares], ops)
        if not result.succeeded:
            if fence and self.fence is not None:
                await self.fence.check()
            raise ConflictError(f"{count} change(s) lost a race with another writer")
        if fence:
            log.debug("store.fenced_write", revision=result.revision, term=fence[0].value)
        return result.revision

    async def get_config(self) -> ClusterConfig | None:
        kv = await self.store.get(CLUSTER_CONFIG)
        return ClusterConfig.from_wire(kv.value) if kv else None

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
