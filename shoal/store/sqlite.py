"""The sqlite store: the durable, embedded default for a single manager.

Durability: the database runs in WAL mode with ``synchronous=FULL``, so a write
whose coroutine returned has been fsynced and survives a SIGKILL or power loss.
Every ``txn`` is one ``BEGIN IMMEDIATE ... COMMIT`` however many operations it
holds, with ``executemany`` for the rows, so one fsync pays for a whole batch.

Threading: sqlite calls block, so one connection lives on one dedicated worker
thread (a single-worker executor) and every call is queued to it. That queue is
also the serialisation point: reads and writes never interleave, so the
in-memory mirrors of the revision, the compacted revision and the lease
deadlines are only written by the worker and stay exact. Post-commit
bookkeeping happens on the worker too, so a caller cancelled mid-write cannot
leave the mirrors or the watchers behind.

Ownership: only one process may own a database. An exclusive ``flock`` on
``<db>.lock`` enforces it (the kernel drops it if the process dies), so the
mirrors can never go stale behind our back.

Watches read the ``events`` table from their cursor and are woken in-process
after every commit (the latest revisions' events are also kept in memory, so a
watcher that keeps up reads nothing back); a watcher that falls behind the kept history (the last
``history`` revisions, trimmed on every write) gets ``CompactedError``. Leases
store wall-clock deadlines so they survive a restart sensibly: a lease whose
holder was down longer than its ttl expires right after the store reopens.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import itertools
import math
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

import structlog

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
    compare_holds,
    validate_ops,
)
from shoal.store.memory import DEFAULT_HISTORY

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_REAP_INTERVAL = 0.1
_WATCH_CHUNK = 500  # revisions read per watch query
# The latest revisions' events are also kept in memory (up to this many bytes of keys
# and values), so a watcher that keeps up is served them without a query.
_RECENT_BYTES = 2 << 20
_EVENT_OVERHEAD = 150  # an Event and its KeyValue beside the key's and value's bytes
_IN_CHUNK = 500  # keys per "IN (...)" lookup

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    PRIMARY KEY (revision, seq)
);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ttl REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""
_KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease"
_UPSERT = (
    f"INSERT INTO kv ({_KV_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
    "value = excluded.value, create_revision = excluded.create_revision, "
    "mod_revision = excluded.mod_revision, version = excluded.version, lease = excluded.lease"
)

_Row = tuple[str, bytes, int, int, int, int]
# (revision, compacted, the revision's events) to publish after a commit
_Mark = tuple[int, int, list[Event]]


def _kv(row: _Row) -> KeyValue:
    return KeyValue(row[0], bytes(row[1]), row[2], row[3], row[4], row[5])


class SqliteStore(Store):
    """The store contract in one sqlite database file, owned by one process."""

    def __init__(self, path: str | os.PathLike[str], *, history: int = DEFAULT_HISTORY) -> None:
        """Not connected yet: use ``await SqliteStore.open(path)``."""
        if history < 1:
            raise ValueError("history must keep at least one revision")
        self.path = Path(path).absolute()
        self.url = f"sqlite://{self.path}"
        self._history_limit = history
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shoal-sqlite")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._changed = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        # Owned by the worker thread (the event loop only reads the two ints).
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._revision = 0
        self._compacted = 0
        self._lease_deadlines: dict[int, float] = {}
        self._next_deadline = math.inf
        self._recent: deque[tuple[int, list[Event]]] = deque()
        self._recent_bytes = 0

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, history: int = DEFAULT_HISTORY
    ) -> SqliteStore:
        """Lock and open (creating if needed) the database at ``path``."""
        store = cls(path, history=history)
        store._loop = asyncio.get_running_loop()
        try:
            await store._run(store._open_sync)
        except BaseException:
            # Also covers a cancelled open whose worker goes on to succeed.
            store._closed = True
            store._executor.submit(store._close_sync)
            store._executor.shutdown(wait=False)
            raise
        store._reaper = asyncio.create_task(store._reap(), name="shoal-sqlite-lease-reaper")
        return store

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the worker thread, mapping sqlite errors at the boundary."""
        if self._closed or self._loop is None:
            raise StoreUnavailableError(f"{self.url} is closed")
        call = functools.partial(fn, *args, **kwargs)
        try:
            return await self._loop.run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"{self.url}: {exc}") from exc

    # -- worker thread: open/close -------------------------------------------

    def _open_sync(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot open {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreUnavailableError(
                f"{self.path} is locked by another shoal manager (pid {holder})"
            ) from exc
        except OSError as exc:
            os.close(fd)
            raise StoreUnavailableError(f"cannot lock {lock_path}: {exc}") from exc
        self._lock_fd = fd
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
            self._conn = conn
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreUnavailableError(f"{self.path}: cannot enable WAL (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            self._revision, self._compacted = meta["revision"], meta["compacted"]
            self._lease_deadlines = dict(conn.execute("SELECT id, expires_at FROM leases"))
            self._next_deadline = min(self._lease_deadlines.values(), default=math.inf)
        except BaseException:
            self._close_sync()
            raise

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailableError(f"{self.url} is closed")
        return self._conn

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one immediate transaction; roll back if it raises."""
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    # -- reads ---------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        return await self._run(self._get_sync, key)

    def _get_sync(self, key: str) -> KeyValue | None:
        return self._fetch(self._db(), [key]).get(key)

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        return await self._run(self._range_sync, prefix)

    def _range_sync(self, prefix: str) -> tuple[list[KeyValue], int]:
        return list(self._scan(self._db(), prefix)), self._revision

    async def revision(self) -> int:
        if self._closed:
            raise StoreUnavailableError(f"{self.url} is closed")
        return self._revision  # the worker's mirror of the last committed revision

    @staticmethod
    def _fetch(conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, KeyValue]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, KeyValue] = {}
        for i in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[i : i + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT {_KV_COLUMNS} FROM kv WHERE key IN ({marks})"
            for row in conn.execute(query, chunk):
                found[row[0]] = _kv(row)
        return found

    @staticmethod
    def _scan(conn: sqlite3.Connection, prefix: str) -> Iterable[KeyValue]:
        # Walk the primary-key index from the prefix and stop at the first key
        # past it: no "upper bound" string to compute, and nothing else is read.
        query = f"SELECT {_KV_COLUMNS} FROM kv WHERE key >= ? ORDER BY key"
        for row in conn.execute(query, (prefix,)):
            if not row[0].startswith(prefix):
                break
            yield _kv(row)

    # -- writes --------------------------------------------------------------

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        return await self._run(self._txn_sync, list(compares), list(success), list(failure))

    def _txn_sync(self, compares: list[Compare], success: list[Op], failure: list[Op]) -> TxnResult:
        def body(conn: sqlite3.Connection) -> tuple[bool, list[int], _Mark]:
            current = self._fetch(conn, (c.key for c in compares))
            holds = [compare_holds(c, current.get(c.key)) for c in compares]
            succeeded = all(holds)
            ops = success if succeeded else failure
            validate_ops(ops)
            now = time.time()
            for op in ops:
                if isinstance(op, Put) and op.lease and not self._lease_alive(op.lease, now):
                    raise NotFoundError(f"lease {op.lease} does not exist or has expired")
            looked = {c.key: current.get(c.key) for c in compares}
            deleted, mark = self._apply(conn, ops, looked)
            return succeeded, deleted, mark

        succeeded, deleted, mark = self._write(body)
        self._committed(mark)
        return TxnResult(succeeded, self._revision, deleted)

    def _apply(
        self,
        conn: sqlite3.Connection,
        ops: Sequence[Op],
        fetched: dict[str, KeyValue | None] | None = None,
    ) -> tuple[list[int], _Mark]:
        """Apply ``ops`` inside the open transaction as one revision (if anything changes).

        ``fetched``: rows already read in this transaction (the compares'), by key,
        None for a key that does not exist; keys missing there are read here. Returns
        the per-op delete counts and the (revision, compacted, events) to publish once
        the transaction has committed.
        """
        rev = self._revision + 1
        keys = [op.key for op in ops if isinstance(op, Put) or not op.prefix]
        state: dict[str, KeyValue | None] = {}
        if fetched:
            state.update((k, fetched[k]) for k in keys if k in fetched)
            keys = [k for k in keys if k not in fetched]
        state.update(self._fetch(conn, keys))
        dirty: dict[str, None] = {}  # an insertion-ordered set
        events: list[Event] = []
        deleted: list[int] = []
        for op in ops:
            if isinstance(op, Put):
                old = state.get(op.key)
                kv = KeyValue(
                    key=op.key,
                    value=op.value,
                    create_revision=old.create_revision if old else rev,
                    mod_revision=rev,
                    version=old.version + 1 if old else 1,
                    lease=op.lease,
                )
                state[op.key] = kv
                dirty[op.key] = None
                events.append(Event(EventType.PUT, kv))
                deleted.append(0)
                continue
            if op.prefix:
                for kv in self._scan(conn, op.key):
                    state.setdefault(kv.key, kv)
                keys = sorted(k for k, v in state.items() if v and k.startswith(op.key))
            else:
                keys = [op.key] if state.get(op.key) else []
            for key in keys:
                state[key] = None
                dirty[key] = None
                events.append(Event(EventType.DELETE, KeyValue(key, b"", 0, rev, 0)))
            deleted.append(len(keys))
        if not events:
            return deleted, (self._revision, self._compacted, [])
        puts = [new for key in dirty if (new := state[key]) is not None]
        conn.executemany(
            _UPSERT,
            [(kv.key, kv.value, kv.create_revision, rev, kv.version, kv.lease) for kv in puts],
        )
        conn.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in dirty if not state[k]])
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(rev, i, e.type.value, *_event_row(e)) for i, e in enumerate(events)],
        )
        conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
        return deleted, (rev, self._trim(conn, rev - self._history_limit), events)

    def _trim(self, conn: sqlite3.Connection, compacted: int) -> int:
        if compacted <= self._compacted:
            return self._compacted
        conn.execute("DELETE FROM events WHERE revision <= ?", (compacted,))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (compacted,))
        return compacted

    def _committed(self, mark: _Mark) -> None:
        """Publish a committed revision (and its events) and wake the watchers."""
        revision, self._compacted, events = mark
        if revision != self._revision:
            self._revision = revision
            self._remember(revision, events)
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def compact(self, revision: int) -> None:
        await self._run(self._compact_sync, revision)

    def _compact_sync(self, revision: int) -> None:
        target = min(revision - 1, self._revision)
        if target > self._compacted:
            compacted = self._write(lambda conn: self._trim(conn, target))
            self._committed((self._revision, compacted, []))

    # -- watches -------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        return self._watch(prefix, start_revision)

    async def _watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        cursor = max(start_revision, 1)
        while not self._closed:
            changed = self._changed
            if cursor > self._revision:
                await changed.wait()
                continue
            try:
                batches, upto = await self._run(self._events_sync, prefix, cursor)
            except StoreUnavailableError:
                if self._closed:
                    return
                raise
            for batch in batches:
                yield batch
            cursor = upto + 1

    def _remember(self, revision: int, events: list[Event]) -> None:
        """Keep the latest revisions' events for the watchers (worker thread)."""
        recent = self._recent
        if recent and recent[-1][0] != revision - 1:
            recent.clear()  # never a gap: what is kept runs up to the current revision
        recent.append((revision, events))
        self._recent_bytes += _footprint(events)
        while len(recent) > 1 and (
            self._recent_bytes > _RECENT_BYTES or len(recent) > _WATCH_CHUNK
        ):
            _, dropped = recent.popleft()
            self._recent_bytes -= _footprint(dropped)

    def _events_sync(self, prefix: str, cursor: int) -> tuple[list[list[Event]], int]:
        """Events under ``prefix`` from ``cursor`` on, one list per revision."""
        if cursor <= self._compacted:
            raise CompactedError(cursor, self._compacted)
        upto = min(self._revision, cursor + _WATCH_CHUNK - 1)
        recent = self._recent
        if recent and recent[0][0] <= cursor and recent[-1][0] == self._revision:
            # Just written here: the events as committed, without reading them back.
            first = cursor - recent[0][0]
            kept = [
                [e for e in events if e.kv.key.startswith(prefix)]
                for _, events in itertools.islice(recent, first, first + upto - cursor + 1)
            ]
            return [batch for batch in kept if batch], upto
        rows = self._db().execute(
            "SELECT revision, type, key, value, create_revision, version, lease FROM events "
            "WHERE revision BETWEEN ? AND ? AND substr(key, 1, ?) = ? ORDER BY revision, seq",
            (cursor, upto, len(prefix), prefix),
        )
        batches: list[list[Event]] = []
        last = 0
        for rev, kind, key, value, create_revision, version, lease in rows:
            kv = KeyValue(key, bytes(value), create_revision, rev, version, lease)
            if rev != last:
                batches.append([])
                last = rev
            batches[-1].append(Event(EventType(kind), kv))
        return batches, upto

    # -- leases --------------------------------------------------------------

    async def grant_lease(self, ttl: float) -> int:
        if ttl <= 0:
            raise ValueError("a lease ttl must be positive")
        return await self._run(self._grant_sync, ttl)

    def _grant_sync(self, ttl: float) -> int:
        expires_at = time.time() + ttl

        def body(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO leases (ttl, expires_at) VALUES (?, ?)", (ttl, expires_at)
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        lease = self._write(body)
        self._set_deadline(lease, expires_at)
        return lease

    async def keepalive(self, lease: int) -> None:
        await self._run(self._keepalive_sync, lease)

    def _keepalive_sync(self, lease: int) -> None:
        now = time.time()
        if not self._lease_alive(lease, now):
            self._revoke_sync(lease)
            raise NotFoundError(f"lease {lease} does not exist or has expired")
        (ttl,) = self._db().execute("SELECT ttl FROM leases WHERE id = ?", (lease,)).fetchone()
        expires_at = now + ttl
        self._write(
            lambda conn: conn.execute(
                "UPDATE leases SET expires_at = ? WHERE id = ?", (expires_at, lease)
            )
        )
        self._set_deadline(lease, expires_at)

    async def revoke(self, lease: int) -> None:
        await self._run(self._revoke_sync, lease)

    def _revoke_sync(self, lease: int) -> None:
        if lease not in self._lease_deadlines:
            return

        def body(conn: sqlite3.Connection) -> _Mark:
            rows = conn.execute("SELECT key FROM kv WHERE lease = ? ORDER BY key", (lease,))
            _, mark = self._apply(conn, [Delete(key) for (key,) in rows.fetchall()])
            conn.execute("DELETE FROM leases WHERE id = ?", (lease,))
            return mark

        self._committed(self._write(body))
        self._set_deadline(lease, None)

    def _lease_alive(self, lease: int, now: float) -> bool:
        return self._lease_deadlines.get(lease, -math.inf) > now

    def _set_deadline(self, lease: int, expires_at: float | None) -> None:
        if expires_at is None:
            self._lease_deadlines.pop(lease, None)
        else:
            self._lease_deadlines[lease] = expires_at
        self._next_deadline = min(self._lease_deadlines.values(), default=math.inf)

    def _expire_due_sync(self) -> None:
        now = time.time()
        for lease in [id_ for id_, at in self._lease_deadlines.items() if at <= now]:
            self._revoke_sync(lease)

    async def _reap(self) -> None:
        while not self._closed:
            if self._next_deadline <= time.time():
                try:
                    await self._run(self._expire_due_sync)
                except StoreUnavailableError as exc:
                    if self._closed:
                        return
                    log.warning("lease expiry failed, will retry", store=self.url, error=str(exc))
                    await asyncio.sleep(1.0)
            delay = self._next_deadline - time.time()
            await asyncio.sleep(min(max(delay, 0.0), _REAP_INTERVAL))

    # -- lifecycle -----------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self._notify()
        assert self._loop is not None
        # Queued behind any call still in flight, so those finish first.
        await self._loop.run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=True)


def _footprint(events: list[Event]) -> int:
    """About what ``events`` take in memory: their keys and values, and the objects."""
    return sum(len(e.kv.key) + len(e.kv.value) + _EVENT_OVERHEAD for e in events)


def _event_row(event: Event) -> tuple[str, bytes, int, int, int]:
    kv = event.kv
    return kv.key, kv.value, kv.create_revision, kv.version, kv.lease
