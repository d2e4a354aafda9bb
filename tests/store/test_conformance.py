"""The store contract (``shoal/store/base.py``), run against every backend.

Tests taking ``store``/``make_store`` run once per backend (see conftest.py);
the ``sqlite_*`` tests at the end cover what only a durable backend promises.
Revisions are compared, never counted: on etcd other writers share the
revision counter, so expected revisions come from what each write returned.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from shoal.errors import CompactedError, NotFoundError, StoreUnavailableError
from shoal.store import (
    Compare,
    Delete,
    Event,
    EventType,
    MemoryStore,
    Put,
    SqliteStore,
    Store,
    open_store,
)
from tests.store.conftest import LeaseTiming

StoreFactory = Callable[..., Awaitable[Store]]  # the conftest fixture ``make_store``


async def next_batch(watch: AsyncIterator[list[Event]], within: float = 2.0) -> list[Event]:
    return await asyncio.wait_for(anext(watch), within)


def summary(batch: list[Event]) -> list[tuple[EventType, str, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in batch]


# -- revisions and key metadata -------------------------------------------------


async def test_revision_increases_with_effective_writes_only(store: Store) -> None:
    base = await store.revision()
    assert base >= 0
    first = await store.put("/a", b"1")
    second = await store.put("/a", b"2")
    assert base < first < second
    assert await store.delete("/missing") == (second, 0)
    assert await store.delete_prefix("/nothing/") == (second, 0)
    third, deleted = await store.delete("/a")
    assert third > second and deleted == 1
    assert await store.revision() == third
    result = await store.txn([Compare("/a", "version", "==", 5)], [Put("/a", b"x")])
    assert (result.succeeded, result.revision) == (False, third)
    assert await store.revision() == third


async def test_embedded_stores_count_revisions_from_zero(backend: str, store: Store) -> None:
    if backend.startswith("etcd"):
        pytest.skip("etcd's revision is the cluster's: other writers advance it too")
    assert await store.revision() == 0
    assert await store.put("/a", b"1") == 1
    assert await store.put("/a", b"2") == 2
    assert await store.delete("/a") == (3, 1)


async def test_create_revision_and_version(store: Store) -> None:
    await store.put("/other", b"")
    created = await store.put("/k", b"1")
    updated = await store.put("/k", b"2")
    kv = await store.get("/k")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision) == (b"2", created, updated)
    assert kv.version == 2
    deleted, _ = await store.delete("/k")
    assert await store.get("/k") is None
    again = await store.put("/k", b"again")
    assert again > deleted
    kv = await store.get("/k")
    assert kv is not None
    assert (kv.create_revision, kv.mod_revision, kv.version) == (again, again, 1)


async def test_range_is_a_sorted_snapshot_with_its_revision(store: Store) -> None:
    for key in ["/svc/b", "/svc/a", "/svcx", "/node/1", "/svc/c/d"]:
        last = await store.put(key, key.encode())
    kvs, revision = await store.range("/svc/")
    assert [kv.key for kv in kvs] == ["/svc/a", "/svc/b", "/svc/c/d"]
    assert [kv.value for kv in kvs] == [b"/svc/a", b"/svc/b", b"/svc/c/d"]
    assert revision == last
    everything, _ = await store.range("")
    assert len(everything) == 5
    assert await store.range("/none/") == ([], last)


# -- transactions ----------------------------------------------------------------


# Compare values as functions of (first, second): the revisions of the two puts.
@pytest.mark.parametrize(
    ("target", "good", "stale"),
    [
        pytest.param("mod_revision", lambda r1, r2: r2, lambda r1, r2: r1, id="mod_revision"),
        pytest.param("version", lambda r1, r2: 2, lambda r1, r2: 1, id="version"),
        pytest.param("create_revision", lambda r1, r2: r1, lambda r1, r2: r2, id="create_revision"),
        pytest.param("value", lambda r1, r2: b"v2", lambda r1, r2: b"v1", id="value"),
    ],
)
async def test_txn_compare_wins_or_runs_failure_ops(
    store: Store,
    target: str,
    good: Callable[[int, int], int | bytes],
    stale: Callable[[int, int], int | bytes],
) -> None:
    first = await store.put("/k", b"v1")
    second = await store.put("/k", b"v2")  # created at first, modified at second, version 2

    lost = await store.txn(
        [Compare("/k", target, "==", stale(first, second))],  # type: ignore[arg-type]
        [Put("/k", b"mine")],
        [Put("/lost", b"yes")],
    )
    assert lost.succeeded is False
    assert lost.revision > second
    assert (kv := await store.get("/lost")) is not None and kv.mod_revision == lost.revision
    assert (kv := await store.get("/k")) is not None and kv.value == b"v2"

    won = await store.txn(
        [Compare("/k", target, "==", good(first, second))],  # type: ignore[arg-type]
        [Put("/k", b"mine")],
    )
    assert won.succeeded and won.revision > lost.revision
    assert (kv := await store.get("/k")) is not None and kv.value == b"mine"


async def test_compare_operators_and_missing_keys(store: Store) -> None:
    written = await store.put("/k", b"b")
    assert (await store.txn([Compare("/k", "version", ">", 0)], [])).succeeded
    assert (await store.txn([Compare("/k", "version", "<", 2)], [])).succeeded
    assert (await store.txn([Compare("/k", "value", "!=", b"a")], [])).succeeded
    assert not (await store.txn([Compare("/k", "mod_revision", "!=", written)], [])).succeeded
    missing = [
        Compare("/none", "version", "==", 0),
        Compare("/none", "mod_revision", "==", 0),
        Compare("/none", "create_revision", "==", 0),
    ]
    assert (await store.txn(missing, [])).succeeded
    for op in ("==", "!=", "<", ">"):  # a value compare on a missing key never holds
        assert not (await store.txn([Compare("/none", "value", op, b"")], [])).succeeded  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await store.txn([Compare("/k", "value", "==", 1)], [Put("/x", b"")])
    with pytest.raises(ValueError):
        await store.txn([Compare("/k", "version", "==", b"1")], [Put("/x", b"")])
    assert await store.get("/x") is None
    assert await store.revision() == written


async def test_create_if_absent(store: Store) -> None:
    absent = [Compare("/leader", "version", "==", 0)]
    first = await store.txn(absent, [Put("/leader", b"a")])
    second = await store.txn(absent, [Put("/leader", b"b")])
    assert first.succeeded and not second.succeeded
    assert (kv := await store.get("/leader")) is not None and kv.value == b"a"


async def test_txn_is_one_revision_with_delete_counts(store: Store) -> None:
    await store.put("/t/1", b"")
    before = await store.put("/t/2", b"")
    result = await store.txn(
        [],
        [Put("/n/a", b"1"), Delete("/t/", prefix=True), Delete("/absent"), Put("/n/b", b"2")],
    )
    assert (result.succeeded, result.deleted) == (True, [0, 2, 0, 0])
    assert result.revision > before
    kvs, revision = await store.range("/")
    assert [(kv.key, kv.mod_revision) for kv in kvs] == [
        ("/n/a", result.revision),
        ("/n/b", result.revision),
    ]
    assert revision == result.revision


async def test_delete_prefix(store: Store) -> None:
    for key in ["/s/a", "/s/b/c", "/sx", "/t"]:
        last = await store.put(key, b"")
    revision, deleted = await store.delete_prefix("/s/")
    assert revision > last and deleted == 2
    kvs, _ = await store.range("")
    assert [kv.key for kv in kvs] == ["/sx", "/t"]


async def test_largest_txn_the_store_takes_is_atomic_at_one_revision(store: Store) -> None:
    # etcd's default --max-txn-ops is 128; the embedded stores declare no limit.
    # How fast is a benchmark's question (bench/); here: all or nothing, at one revision.
    count = store.max_txn_ops or 2000
    puts = [Put(f"/tasks/{i:05d}", b"x" * 300) for i in range(count)]
    refused = await store.txn([Compare("/tasks/00000", "version", "!=", 0)], puts)
    assert not refused.succeeded
    assert (await store.range("/tasks/"))[0] == []
    watch = store.watch("/tasks/", await store.revision() + 1)
    result = await store.txn([Compare("/tasks/00000", "version", "==", 0)], puts)
    assert result.succeeded
    kvs, _ = await store.range("/tasks/")
    assert len(kvs) == count and {kv.mod_revision for kv in kvs} == {result.revision}
    seen: list[Event] = []
    while len(seen) < count:
        seen += await next_batch(watch, within=10)
    assert len(seen) == count and {e.kv.mod_revision for e in seen} == {result.revision}


async def test_concurrent_compare_and_set_increments_are_exact(store: Store) -> None:
    async def increment() -> int:
        attempts = 0
        while True:
            attempts += 1
            kv = await store.get("/counter")
            value = int(kv.value) if kv else 0
            guard = Compare("/counter", "mod_revision", "==", kv.mod_revision if kv else 0)
            if (await store.txn([guard], [Put("/counter", str(value + 1).encode())])).succeeded:
                return attempts

    attempts = await asyncio.gather(*(increment() for _ in range(20)))
    assert (kv := await store.get("/counter")) is not None
    assert (kv.value, kv.version) == (b"20", 20)
    assert await store.revision() == kv.mod_revision
    assert sum(attempts) >= 20


# -- watches ---------------------------------------------------------------------


async def test_watch_replays_history_then_follows_live(store: Store) -> None:
    base = await store.revision()
    first = await store.put("/w/a", b"1")
    await store.put("/elsewhere", b"")  # filtered out
    third = await store.put("/w/b", b"2")
    watch = store.watch("/w/", base + 1)
    assert summary(await next_batch(watch)) == [(EventType.PUT, "/w/a", b"1", first)]
    assert summary(await next_batch(watch)) == [(EventType.PUT, "/w/b", b"2", third)]

    txn = await store.txn([], [Put("/w/c", b"3"), Delete("/w/a"), Put("/elsewhere", b"x")])
    fifth, _ = await store.delete("/w/b")
    batch = await next_batch(watch)
    assert summary(batch) == [
        (EventType.PUT, "/w/c", b"3", txn.revision),
        (EventType.DELETE, "/w/a", b"", txn.revision),
    ]
    assert (batch[0].kv.create_revision, batch[0].kv.version) == (txn.revision, 1)
    assert summary(await next_batch(watch)) == [(EventType.DELETE, "/w/b", b"", fifth)]


async def test_watch_replays_a_long_history_in_order(store: Store) -> None:
    base = await store.revision()
    even: list[int] = []
    for i in range(1, 1201):
        revision = await store.put(f"/{'even' if i % 2 == 0 else 'odd'}/{i}", b"")
        if i % 2 == 0:
            even.append(revision)
    watch = store.watch("/even/", base + 1)
    revisions = [(await next_batch(watch))[0].kv.mod_revision for _ in range(600)]
    assert revisions == even


async def test_watchers_behind_and_at_the_head_see_the_same_events(store: Store) -> None:
    # More revisions than one read of history takes (SQLite: 500) and more bytes than
    # a backend keeps of recent events in memory (SQLite: 2 MiB): a watcher that starts
    # late reads the early events back from the store and the latest from memory, and
    # crosses from one to the other; a transaction that fails in between leaves no gap.
    base = await store.revision()
    follower = store.watch("/big/", base + 1)
    written: list[tuple[EventType, str, bytes, int]] = []
    followed: list[tuple[EventType, str, bytes, int]] = []
    lease = await store.grant_lease(60)
    await store.revoke(lease)
    for i in range(640):
        value = bytes([i % 251]) * (16_384 if i % 5 == 0 else 64)
        result = await store.txn([], [Put(f"/big/{i % 7}", value), Put("/other", b"x")])
        written.append((EventType.PUT, f"/big/{i % 7}", value, result.revision))
        if i % 40 == 39:
            revision, _ = await store.delete(f"/big/{i % 7}")
            written.append((EventType.DELETE, f"/big/{i % 7}", b"", revision))
        if i % 100 == 50:
            with pytest.raises(NotFoundError):  # refused: no revision, no event
                await store.txn([], [Put("/big/refused", b"", lease=lease)])
        if i % 16 == 15:
            while len(followed) < len(written):
                followed += summary(await next_batch(follower))
    while len(followed) < len(written):
        followed += summary(await next_batch(follower))
    assert followed == written
    for start in (0, 1, 250, 499, 500, len(written) - 130, len(written) - 1):
        late = store.watch("/big/", written[start][3])
        replayed: list[tuple[EventType, str, bytes, int]] = []
        while len(replayed) < len(written) - start:
            replayed += summary(await next_batch(late))
        assert replayed == written[start:], start


async def test_watch_from_range_revision_misses_nothing(store: Store) -> None:
    await store.put("/w/old", b"")
    kvs, revision = await store.range("/w/")
    watch = store.watch("/w/", revision + 1)
    pending = asyncio.ensure_future(next_batch(watch))
    await asyncio.sleep(0.05)
    assert not pending.done()
    await store.put("/w/new", b"v")
    batch = await pending
    assert [kv.key for kv in kvs] == ["/w/old"]
    assert summary(batch) == [(EventType.PUT, "/w/new", b"v", revision + 1)]


async def test_watch_from_compacted_revision_raises(store: Store) -> None:
    revisions = [await store.put(f"/c/{i}", b"") for i in range(5)]
    await store.compact(revisions[3])
    with pytest.raises(CompactedError):
        await next_batch(store.watch("/c/", revisions[2]))
    batch = await next_batch(store.watch("/c/", revisions[3]))
    assert [e.kv.key for e in batch] == ["/c/3"]


async def test_history_is_bounded(backend: str, make_store: StoreFactory) -> None:
    if backend.startswith("etcd"):
        pytest.skip("etcd keeps history until it is compacted, cluster-wide (see the test above)")
    store = await make_store(history=5)
    for i in range(12):
        await store.put("/h", str(i).encode())
    with pytest.raises(CompactedError) as info:
        await next_batch(store.watch("/h", 7))
    assert info.value.compacted == 7
    batch = await next_batch(store.watch("/h", 8))
    assert summary(batch) == [(EventType.PUT, "/h", b"7", 8)]


async def test_slow_watcher_gets_compacted_error(backend: str, make_store: StoreFactory) -> None:
    if backend.startswith("etcd"):
        pytest.skip("etcd pushes events to the watcher; its history is not bounded per store")
    store = await make_store(history=3)
    await store.put("/s", b"0")
    watch = store.watch("/s", 1)
    await next_batch(watch)
    for i in range(10):
        await store.put("/s", str(i).encode())
    with pytest.raises(CompactedError):
        for _ in range(10):
            await next_batch(watch)


async def test_aclose_ends_watches_and_refuses_calls(store: Store) -> None:
    base = await store.revision()
    delivered = asyncio.Event()

    async def drain() -> int:
        seen = 0
        async for batch in store.watch("/", base + 1):
            seen += len(batch)
            delivered.set()
        return seen

    await store.put("/a", b"")
    watcher = asyncio.create_task(drain())
    await asyncio.wait_for(delivered.wait(), 2.0)  # the watch is live, then the store closes
    await store.aclose()
    assert await asyncio.wait_for(watcher, 2.0) == 1
    await store.aclose()  # idempotent
    with pytest.raises(StoreUnavailableError):
        await store.get("/a")
    with pytest.raises(StoreUnavailableError):
        await store.put("/a", b"")


# -- leases ----------------------------------------------------------------------


async def test_lease_expiry_deletes_keys_with_events(
    store: Store, lease_timing: LeaseTiming
) -> None:
    ttl = lease_timing.ttl
    lease = await store.grant_lease(ttl)
    await store.put("/l/a", b"", lease=lease)
    await store.put("/l/b", b"", lease=lease)
    await store.put("/l/keep", b"")
    granted = time.monotonic()
    watch = store.watch("/l/", await store.revision() + 1)
    batch = await next_batch(watch, within=ttl + lease_timing.slack + 2)  # nobody calls the store
    waited = time.monotonic() - granted
    revision = batch[0].kv.mod_revision
    assert summary(batch) == [
        (EventType.DELETE, "/l/a", b"", revision),
        (EventType.DELETE, "/l/b", b"", revision),
    ]
    assert ttl - 0.1 < waited < ttl + lease_timing.slack
    kvs, _ = await store.range("/l/")
    assert [kv.key for kv in kvs] == ["/l/keep"]
    with pytest.raises(NotFoundError):
        await store.keepalive(lease)
    with pytest.raises(NotFoundError):
        await store.put("/l/late", b"", lease=lease)


async def test_keepalive_extends_lease(store: Store, lease_timing: LeaseTiming) -> None:
    ttl = lease_timing.ttl
    lease = await store.grant_lease(ttl)
    await store.put("/k", b"", lease=lease)
    for _ in range(5):
        await asyncio.sleep(ttl / 3)
        await store.keepalive(lease)
    assert await store.get("/k") is not None  # 5/3 of the ttl in, past the original deadline
    await asyncio.sleep(ttl + lease_timing.slack)
    assert await store.get("/k") is None


async def test_revoke_deletes_keys_and_is_idempotent(store: Store) -> None:
    lease = await store.grant_lease(60)
    await store.put("/r/a", b"", lease=lease)
    await store.put("/r/a", b"moved off the lease")  # a put without lease detaches
    await store.put("/r/b", b"", lease=lease)
    kv = await store.get("/r/b")
    assert kv is not None and kv.lease == lease
    before = await store.revision()
    await store.revoke(lease)
    kvs, revision = await store.range("/r/")
    assert [(kv.key, kv.lease) for kv in kvs] == [("/r/a", 0)]
    assert revision > before
    await store.revoke(lease)
    await store.revoke(12345)
    assert await store.revision() == revision
    with pytest.raises(NotFoundError):
        await store.keepalive(lease)


async def test_put_with_unknown_lease_is_refused(store: Store) -> None:
    before = await store.revision()
    with pytest.raises(NotFoundError):
        await store.txn([], [Put("/a", b""), Put("/b", b"", lease=999)])
    assert await store.get("/a") is None
    assert await store.revision() == before
    with pytest.raises(ValueError):
        await store.grant_lease(0)


# -- opening by URL --------------------------------------------------------------


async def test_open_store_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = await open_store("memory://")
    assert isinstance(memory, MemoryStore)
    await memory.aclose()
    absolute = await open_store(f"sqlite://{tmp_path}/a/state.db")
    assert isinstance(absolute, SqliteStore) and (tmp_path / "a" / "state.db").exists()
    await absolute.aclose()
    monkeypatch.chdir(tmp_path)
    relative = await open_store("sqlite://rel/state.db")
    assert relative.url == f"sqlite://{tmp_path}/rel/state.db"
    await relative.aclose()
    for bad in ["sqlite://", "/var/lib/state.db", "memory://x", "etcd://"]:
        with pytest.raises(ValueError, match="memory://"):
            await open_store(bad)
    for bad in ["etcd://localhost/shoal", "etcd://h:99999/x", "etcd://:2379/x"]:
        with pytest.raises(ValueError, match="etcd://HOST:PORT"):
            await open_store(bad)


# -- sqlite only: durability and ownership ---------------------------------------


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await SqliteStore.open(path)
    await store.txn([], [Put("/a", b"1"), Put("/b", b"2")])
    await store.put("/a", b"3")
    lease = await store.grant_lease(60)
    await store.put("/leased", b"", lease=lease)
    await store.aclose()

    store = await SqliteStore.open(path)
    try:
        assert await store.revision() == 3
        kv = await store.get("/a")
        assert kv is not None and (kv.value, kv.create_revision, kv.version) == (b"3", 1, 2)
        await store.keepalive(lease)  # leases persist
        assert await store.put("/c", b"") == 4
        watch = store.watch("/", 1)  # history persists too
        assert [e.kv.key for e in await next_batch(watch)] == ["/a", "/b"]
    finally:
        await store.aclose()


async def test_sqlite_lease_that_lapsed_while_closed_expires_on_reopen(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    lease = await store.grant_lease(0.2)
    await store.put("/leased", b"", lease=lease)
    await store.aclose()
    await asyncio.sleep(0.3)  # wall-clock deadlines keep running while nobody has it open

    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        batch = await next_batch(store.watch("/", 2), within=1.0)
        assert summary(batch) == [(EventType.DELETE, "/leased", b"", 2)]
    finally:
        await store.aclose()


async def test_sqlite_second_open_is_refused(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        with pytest.raises(StoreUnavailableError, match=r"locked by another shoal manager \(pid"):
            await SqliteStore.open(tmp_path / "state.db")
    finally:
        await store.aclose()
    reopened = await SqliteStore.open(tmp_path / "state.db")  # the lock went with aclose
    await reopened.aclose()


_WRITER = """
import asyncio, sys
from shoal.store import open_store

async def main() -> None:
    store = await open_store(sys.argv[1])
    i = 0
    while True:
        await store.put(f"/crash/{i:06d}", str(i).encode())
        print(i, flush=True)
        i += 1

asyncio.run(main())
"""


async def test_sqlite_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, f"sqlite://{path}", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    acknowledged: list[int] = []
    try:
        while len(acknowledged) < 150:
            line = await asyncio.wait_for(proc.stdout.readline(), 10.0)
            assert line, "the writer exited early"
            acknowledged.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
    acknowledged += [int(line) for line in (await proc.stdout.read()).split()]
    assert await proc.wait() == -signal.SIGKILL

    store = await SqliteStore.open(path)  # the kernel released the dead writer's lock
    try:
        kvs, revision = await store.range("/crash/")
        present = {kv.key for kv in kvs}
        assert all(f"/crash/{i:06d}" in present for i in acknowledged)
        assert revision >= len(acknowledged) == acknowledged[-1] + 1
        assert await store.put("/after", b"") == revision + 1
    finally:
        await store.aclose()
