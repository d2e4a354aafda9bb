"""The store contract: a small, etcd-shaped key-value interface.

Every backend (``sqlite``, ``memory``, ``etcd``) implements exactly this, and
``tests/store/test_conformance.py`` runs the same suite against each one (etcd
as a real 3-member cluster).

Model
-----
Keys are ``str`` paths (``/services/web``), values are ``bytes``. The store has a
single, strictly increasing 64-bit **revision**. Every successful write (a put,
a delete that removed something, or a transaction with at least one effective
operation) creates exactly one new revision, greater than every revision before
it, and every key touched in that write gets ``mod_revision`` equal to it.
A write that changes nothing creates no revision. Revisions need not be
consecutive: on etcd the revision is the cluster's, so writes by other clients
and under other prefixes advance it too, and an empty store may already be past
0. (The embedded backends do count 1, 2, 3, ... from 0.) Compare revisions,
never count them.

A key's ``create_revision`` is the revision that created it (reset if it is
deleted and created again); ``version`` counts puts since creation (1 after the
first put).

Methods
-------
``get(key)``
    The ``KeyValue`` or ``None``. A read: never changes the revision.
``range(prefix)``
    ``(kvs sorted by key, revision)``: all keys starting with ``prefix`` as one
    consistent snapshot, and the store revision that snapshot reflects. Use that
    revision to start a ``watch`` without missing or repeating anything.
``txn(compares, success, failure)``
    Atomic compare-and-set. If every ``Compare`` holds, the ``success``
    operations run, otherwise the ``failure`` ones; all in one revision.
    ``TxnResult.succeeded`` tells which. **Lost race = ``succeeded is False``**,
    never an exception. A compare on a missing key sees ``mod_revision == 0``,
    ``create_revision == 0`` and ``version == 0``, so "create if absent" is
    ``Compare(key, "version", "==", 0)``; a ``value`` compare on a missing key
    never holds, whatever its operator (etcd's rule).
``put(key, value, lease=0)`` / ``delete(key)`` / ``delete_prefix(prefix)``
    Unconditional writes; return the new revision (``delete*`` return the
    revision and how many keys went; deleting nothing does not bump the
    revision). Prefer ``txn`` with a compare for anything read-modify-write.
``watch(prefix, start_revision)``
    An async iterator of ``list[Event]`` batches: every change to a key under
    ``prefix`` with ``mod_revision >= start_revision``, in revision order, one
    batch per revision (a transaction's events arrive together). Raises
    ``CompactedError`` if ``start_revision`` is older than the store keeps
    history; the caller then relists with ``range`` and watches from the
    revision it returned + 1. How much history is kept is the backend's
    (memory and sqlite: the last ``history`` revisions; etcd: until its
    compaction). The iterator ends when the store closes; a backend that loses
    its connection resumes from the last revision it delivered by itself.
``grant_lease(ttl)`` / ``keepalive(lease)`` / ``revoke(lease)``
    Leases: a key put with ``lease=id`` is deleted (with a DELETE event, all
    its keys in one revision) when the lease expires or is revoked. A lease
    lasts at least ``ttl`` seconds from its grant or last ``keepalive``; a
    backend may round ``ttl`` up (etcd: whole seconds, at least its minimum
    TTL) and expires it shortly after the deadline (memory and sqlite within
    0.1 s, etcd within about 0.5 s). ``keepalive`` renews for another ``ttl``
    and raises ``NotFoundError`` if the lease already expired.
``compact(revision)``
    Drop history before ``revision``; later watches from older revisions raise
    ``CompactedError``. (On etcd this compacts the whole etcd keyspace.)
``health()``
    Each endpoint of the store with whether it works: one line for the
    embedded stores, one per member for etcd.
``aclose()``
    Release everything; pending watches end. Idempotent.

Limits
------
``max_txn_ops`` and ``max_txn_bytes`` say how large one transaction may be:
at most ``max_txn_ops`` compares and at most as many operations, and at most
``max_txn_bytes`` of keys and values in all (``None``: no limit of the
backend's own). etcd refuses larger ones (its defaults: ``--max-txn-ops 128``
and ``--max-request-bytes`` 1.5 MiB); callers that write many keys split their
writes (``shoal.store.typed.TypedStore.commit_in_chunks``).

Errors
------
``StoreUnavailableError``: the store cannot be reached, is closed, has lost
its quorum (etcd), or (sqlite) is locked by another manager; the message names
the cause. The outcome of a write that raised it is unknown; backends never
retry a write themselves and callers must not retry a non-idempotent
transaction blindly. ``NotFoundError``: a put names a lease that does not exist
(nothing is written).
``CompactedError``: see ``watch``. ``ValueError``: a malformed compare.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

from shoal.errors import StoreError

CompareTarget = Literal["mod_revision", "create_revision", "version", "value"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class EventType(StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    # For DELETE, ``kv.value`` is empty and ``kv.mod_revision`` is the deleting revision.
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Compare:
    key: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    # Number of keys each Delete op removed, in op order (0 for Puts).
    deleted: list[int] = field(default_factory=list)


def compare_holds(compare: Compare, kv: KeyValue | None) -> bool:
    """Evaluate one ``Compare`` against the current ``kv`` (``None`` if missing)."""
    actual: int | bytes
    if compare.target == "value":
        if not isinstance(compare.value, bytes):
            raise ValueError("a value compare needs bytes")
        if kv is None:
            if compare.op not in ("==", "!=", "<", ">"):
                raise ValueError(f"unknown compare operator {compare.op!r}")
            return False  # etcd's rule: a value compare on a missing key never holds
        actual = kv.value
    else:
        actual = getattr(kv, compare.target) if kv else 0
        if not isinstance(compare.value, int):
            raise ValueError(f"a {compare.target} compare needs an int")
    expected = compare.value
    if compare.op == "==":
        return actual == expected
    if compare.op == "!=":
        return actual != expected
    if compare.op == "<":
        return actual < expected  # type: ignore[operator]
    if compare.op == ">":
        return actual > expected  # type: ignore[operator]
    raise ValueError(f"unknown compare operator {compare.op!r}")


def validate_compares(compares: Sequence[Compare]) -> None:
    """Reject malformed compares (wrong value type, unknown target or operator)."""
    for compare in compares:
        if compare.target not in ("mod_revision", "create_revision", "version", "value"):
            raise ValueError(f"unknown compare target {compare.target!r}")
        compare_holds(compare, None)


def validate_ops(ops: Sequence[Op]) -> None:
    """Reject malformed operations before anything is applied; every backend calls this."""
    for op in ops:
        if isinstance(op, Put):
            if not op.key:
                raise ValueError("a put needs a non-empty key")
            if not isinstance(op.value, bytes):
                raise ValueError(f"the value for {op.key!r} must be bytes")
            if op.lease < 0:
                raise ValueError(f"lease id {op.lease} is negative")
        elif isinstance(op, Delete):
            if not op.key and not op.prefix:
                raise ValueError("a delete needs a non-empty key")
        else:
            raise ValueError(f"unknown operation {op!r}")


def txn_size(ops: Sequence[Op]) -> int:
    """Bytes of keys and values in ``ops``, as ``max_txn_bytes`` counts them."""
    return sum(len(op.key) + (len(op.value) if isinstance(op, Put) else 0) for op in ops)


def check_txn_limits(
    store: Store, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
) -> None:
    """Refuse a transaction above the store's limits, as etcd does (``StoreError``)."""
    limit = store.max_txn_ops
    if limit is not None and max(len(compares), len(success), len(failure)) > limit:
        raise StoreError(
            f"{store.url} refused a transaction: too many operations "
            f"({len(compares)} compares, {len(success)} + {len(failure)} operations; "
            f"at most {limit} each)"
        )
    size = store.max_txn_bytes
    if size is not None and txn_size(success) + txn_size(failure) > size:
        raise StoreError(f"{store.url} refused a transaction: request is too large")


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """One endpoint of a store (an etcd member, a database file) and whether it works."""

    endpoint: str
    healthy: bool
    detail: str
    leader: bool = False
    revision: int = 0


class LeaseRenewer(Protocol):
    """Renews one lease from any thread (``Store.lease_renewer``)."""

    def renew(self, timeout: float) -> None:
        """Renew once, blocking up to ``timeout`` s: ``NotFoundError`` if the lease is gone,
        ``StoreError`` if the store did not answer."""
        ...

    def close(self) -> None: ...


class Store(abc.ABC):
    """The contract above. Subclasses implement every abstract method."""

    url: str
    max_txn_ops: int | None = None
    max_txn_bytes: int | None = None

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    async def range(self, prefix: str) -> tuple[list[KeyValue], int]: ...

    @abc.abstractmethod
    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult: ...

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        result = await self.txn([], [Put(key, value, lease)])
        return result.revision

    async def delete(self, key: str) -> tuple[int, int]:
        result = await self.txn([], [Delete(key)])
        return result.revision, result.deleted[0]

    async def delete_prefix(self, prefix: str) -> tuple[int, int]:
        result = await self.txn([], [Delete(prefix, prefix=True)])
        return result.revision, result.deleted[0]

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]: ...

    @abc.abstractmethod
    async def revision(self) -> int:
        """The current store revision."""

    @abc.abstractmethod
    async def grant_lease(self, ttl: float) -> int: ...

    @abc.abstractmethod
    async def keepalive(self, lease: int) -> None: ...

    @abc.abstractmethod
    async def revoke(self, lease: int) -> None: ...

    def lease_renewer(self, lease: int) -> LeaseRenewer | None:
        """A renewer of ``lease`` to call from another thread (blocking), on a connection of
        its own; ``None`` (embedded stores): renew with ``keepalive`` on the loop."""
        return None

    @abc.abstractmethod
    async def compact(self, revision: int) -> None: ...

    async def health(self) -> list[EndpointHealth]:
        """The store's endpoints; embedded stores have one, healthy while they answer."""
        try:
            revision = await self.revision()
        except Exception as exc:
            return [EndpointHealth(self.url, False, str(exc))]
        return [EndpointHealth(self.url, True, "embedded", leader=True, revision=revision)]

    @abc.abstractmethod
    async def aclose(self) -> None: ...
