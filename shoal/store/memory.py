"""The in-memory store: the whole contract, nothing durable.

``memory://`` is a real backend, not a test double: a single-node manager that
does not need to survive a restart (a demo, a CI job, the simulator) can run on
it, and the conformance suite holds it to exactly the same behaviour as sqlite.

Everything happens on the event loop, and no method awaits between reading and
writing state, so every ``txn`` is atomic without a lock. History is a dict of
revision -> events holding exactly the revisions ``compacted + 1 .. revision``;
it is trimmed to the last ``history`` revisions on every write so memory stays
bounded. A watch is a cursor into that history rather than a queue: a watcher
that falls too far behind gets ``CompactedError`` and relists, instead of making
the store buffer for it without limit.

Lease deadlines use the monotonic clock (nothing outlives the process). A
background task, running only while leases exist, expires them within 0.1s of
their deadline even if nobody calls the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from shoal.errors import CompactedError, NotFoundError, StoreUnavailableError
from shoal.store.base import (
    Compare,
    Delete,
    Event,
    EventType,
    KeyValue,
    Op,
    Put,
    Store,
    TxnResult,
    check_txn_limits,
    compare_holds,
    validate_ops,
)

DEFAULT_HISTORY = 10_000
_REAP_INTERVAL = 0.1


@dataclass(slots=True)
class _Lease:
    ttl: float
    deadline: float
    keys: set[str] = field(default_factory=set)


class MemoryStore(Store):
    """The store contract held in process memory."""

    def __init__(
        self,
        *,
        history: int = DEFAULT_HISTORY,
        url: str = "memory://",
        max_txn_ops: int | None = None,
        max_txn_bytes: int | None = None,
    ) -> None:
        """``max_txn_*``: refuse larger transactions, as an etcd with those limits would."""
        if history < 1:
            raise ValueError("history must keep at least one revision")
        self.url = url
        self.max_txn_ops = max_txn_ops
        self.max_txn_bytes = max_txn_bytes
        self._history_limit = history
        self._kvs: dict[str, KeyValue] = {}
        self._revision = 0
        self._compacted = 0
        self._history: dict[int, list[Event]] = {}
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 1
        self._changed = asyncio.Event()
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None

    # -- reads ---------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        self._check_open()
        return self._kvs.get(key)

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        self._check_open()
        keys = sorted(key for key in self._kvs if key.startswith(prefix))
        return [self._kvs[key] for key in keys], self._revision

    async def revision(self) -> int:
        self._check_open()
        return self._revision

    # -- writes --------------------------------------------------------------

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        self._check_open()
        check_txn_limits(self, compares, success, failure)
        # Evaluate every compare (not all() on a generator) so a malformed one
        # raises ValueError whatever the others say.
        holds = [compare_holds(c, self._kvs.get(c.key)) for c in compares]
        succeeded = all(holds)
        ops = success if succeeded else failure
        validate_ops(ops)
        now = time.monotonic()
        for op in ops:
            if isinstance(op, Put) and op.lease and not self._lease_alive(op.lease, now):
                raise NotFoundError(f"lease {op.lease} does not exist or has expired")
        deleted = self._apply(ops)
        return TxnResult(succeeded, self._revision, deleted)

    def _apply(self, ops: Sequence[Op]) -> list[int]:
        """Apply validated ops as one revision (if any of them changes something)."""
        rev = self._revision + 1
        events: list[Event] = []
        deleted: list[int] = []
        for op in ops:
            if isinstance(op, Put):
                old = self._kvs.get(op.key)
                kv = KeyValue(
                    key=op.key,
                    value=op.value,
                    create_revision=old.create_revision if old else rev,
                    mod_revision=rev,
                    version=old.version + 1 if old else 1,
                    lease=op.lease,
                )
                self._detach(old)
                if op.lease:
                    self._leases[op.lease].keys.add(op.key)
                self._kvs[op.key] = kv
                events.append(Event(EventType.PUT, kv))
                deleted.append(0)
                continue
            if op.prefix:
                keys = sorted(k for k in self._kvs if k.startswith(op.key))
            else:
                keys = [op.key] if op.key in self._kvs else []
            for key in keys:
                self._detach(self._kvs.pop(key))
                events.append(Event(EventType.DELETE, KeyValue(key, b"", 0, rev, 0)))
            deleted.append(len(keys))
        if events:
            self._commit(rev, events)
        return deleted

    def _detach(self, kv: KeyValue | None) -> None:
        if kv is not None and kv.lease and kv.lease in self._leases:
            self._leases[kv.lease].keys.discard(kv.key)

    def _commit(self, rev: int, events: list[Event]) -> None:
        self._revision = rev
        self._history[rev] = events
        self._trim(rev - self._history_limit)
        self._notify()

    def _trim(self, compacted: int) -> None:
        while self._compacted < compacted:
            self._compacted += 1
            del self._history[self._compacted]

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def compact(self, revision: int) -> None:
        self._check_open()
        self._trim(min(revision - 1, self._revision))

    # -- watches -------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        return self._watch(prefix, start_revision)

    async def _watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        cursor = max(start_revision, 1)
        while not self._closed:
            if cursor <= self._compacted:
                raise CompactedError(cursor, self._compacted)
            if cursor > self._revision:
                await self._changed.wait()
                continue
            events = self._history[cursor]
            cursor += 1
            batch = [e for e in events if e.kv.key.startswith(prefix)]
            if batch:
                yield batch

    # -- leases --------------------------------------------------------------

    async def grant_lease(self, ttl: float) -> int:
        self._check_open()
        if ttl <= 0:
            raise ValueError("a lease ttl must be positive")
        lease_id = self._next_lease
        self._next_lease += 1
        self._leases[lease_id] = _Lease(ttl, time.monotonic() + ttl)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="shoal-memory-lease-reaper")
        return lease_id

    async def keepalive(self, lease: int) -> None:
        self._check_open()
        now = time.monotonic()
        if not self._lease_alive(lease, now):
            self._expire(lease)
            raise NotFoundError(f"lease {lease} does not exist or has expired")
        entry = self._leases[lease]
        entry.deadline = now + entry.ttl

    async def revoke(self, lease: int) -> None:
        self._check_open()
        self._expire(lease)

    def _lease_alive(self, lease: int, now: float) -> bool:
        entry = self._leases.get(lease)
        return entry is not None and entry.deadline > now

    def _expire(self, lease: int) -> None:
        entry = self._leases.pop(lease, None)
        if entry is not None:
            self._apply([Delete(key) for key in sorted(entry.keys)])

    async def _reap(self) -> None:
        while self._leases and not self._closed:
            now = time.monotonic()
            for lease, entry in list(self._leases.items()):
                if entry.deadline <= now:
                    self._expire(lease)
            if not self._leases:
                return
            nearest = min(entry.deadline for entry in self._leases.values())
            await asyncio.sleep(min(max(nearest - now, 0.0), _REAP_INTERVAL))

    # -- lifecycle -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError(f"{self.url} is closed")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self._notify()
