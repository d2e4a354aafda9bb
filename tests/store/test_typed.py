"""Object batches on stores with transaction limits: split where allowed, refused where not.

The memory store is given etcd's default limits (128 operations, a byte
budget), so what etcd would refuse is refused here too; the same batches run
against a real etcd in ``test_etcd.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shoal.errors import ConflictError, StoreError
from shoal.models import Task
from shoal.models.service import TaskTemplate
from shoal.reconciler.informer import Informer
from shoal.store import MemoryStore
from shoal.store.base import Compare
from shoal.store.typed import TASKS, Change, TypedStore

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def task(index: int, env_bytes: int = 0) -> Task:
    env = {"PAD": "x" * env_bytes} if env_bytes else {}
    return Task(
        id=f"t{index:05d}",
        service="web",
        slot=index + 1,
        template=TaskTemplate(runtime="sim", command=["sim"], env=env),
        created_at=NOW,
    )


class OneCompareFence:
    """A fence like the leader's: one compare on every transaction."""

    def compares(self) -> list[Compare]:
        return [Compare("/election/term", "version", "==", 0)]

    async def check(self) -> None:
        return None


async def stored_tasks(store: MemoryStore) -> dict[str, int]:
    kvs, _ = await store.range(TASKS)
    return {kv.key[len(TASKS) :]: kv.mod_revision for kv in kvs}


async def test_a_batch_above_the_op_limit_goes_in_chunks_within_it() -> None:
    store = MemoryStore(max_txn_ops=128)
    typed = TypedStore(store, OneCompareFence())
    changes = [Change.put(task(i), 0) for i in range(1000)]
    chunks = [(list(chunk), revision) async for chunk, revision in typed.commit_in_chunks(changes)]
    # 127 changes + the fence's compare = 128 compares per transaction.
    assert [len(chunk) for chunk, _ in chunks] == [127] * 7 + [111]
    assert [c for chunk, _ in chunks for c in chunk] == changes
    written = await stored_tasks(store)
    assert len(written) == 1000
    assert len(set(written.values())) == 8  # one revision per chunk


async def test_a_batch_above_the_byte_budget_is_split_by_size() -> None:
    store = MemoryStore(max_txn_ops=128, max_txn_bytes=100_000)
    typed = TypedStore(store)
    changes = [Change.put(task(i, env_bytes=30_000), 0) for i in range(10)]
    sizes = [len(chunk) async for chunk, _ in typed.commit_in_chunks(changes)]
    assert sum(sizes) == 10 and max(sizes) <= 3
    assert len(await stored_tasks(store)) == 10


async def test_an_object_larger_than_the_budget_is_sent_alone_and_refused() -> None:
    store = MemoryStore(max_txn_bytes=1_000)  # smaller than one task
    typed = TypedStore(store)
    changes = [Change.put(task(i, env_bytes=2_000), 0) for i in range(3)]
    with pytest.raises(StoreError, match="too large"):
        [c async for c in typed.commit_in_chunks(changes)]
    assert await stored_tasks(store) == {}


async def test_a_chunk_that_loses_its_race_stops_the_batch_after_the_written_chunks() -> None:
    store = MemoryStore(max_txn_ops=100)
    typed = TypedStore(store)
    await typed.commit([Change.put(task(150), 0)])  # chunk 2 expects t00150 to be absent
    changes = [Change.put(task(i), 0) for i in range(300)]
    written = []
    with pytest.raises(ConflictError):
        async for chunk, _ in typed.commit_in_chunks(changes):
            written.extend(chunk)
    assert written == changes[:100]
    assert sorted(await stored_tasks(store)) == sorted(
        [f"t{i:05d}" for i in range(100)] + ["t00150"]
    )


async def test_an_atomic_commit_above_the_limit_is_refused_and_writes_nothing() -> None:
    store = MemoryStore(max_txn_ops=128)
    typed = TypedStore(store)
    with pytest.raises(StoreError, match="at most 128"):
        await typed.commit([Change.put(task(i), 0) for i in range(129)])
    assert await stored_tasks(store) == {}
    await typed.commit([Change.put(task(i), 0) for i in range(128)])
    assert len(await stored_tasks(store)) == 128


async def test_the_store_itself_refuses_a_transaction_above_its_limit() -> None:
    store = MemoryStore(max_txn_ops=128)
    typed = TypedStore(store)
    compares, ops = typed._encode([Change.put(task(i), 0) for i in range(129)])
    with pytest.raises(StoreError, match="too many operations"):
        await store.txn(compares[:1], ops)
    assert await stored_tasks(store) == {}


async def test_informer_applies_each_chunk_and_sees_the_whole_batch() -> None:
    store = MemoryStore(max_txn_ops=128)
    typed = TypedStore(store)
    informer = Informer(store, typed)
    seen: list[str] = []
    informer.subscribe(lambda old, new: seen.append(new.id) if isinstance(new, Task) else None)
    revision = await informer.commit([Change.put(task(i), 0) for i in range(500)])
    assert len(informer.tasks) == 500 and len(seen) == 500
    assert revision == await store.revision()
    # Deleting them all is chunked too.
    deletes = [Change.delete(TASKS + t, e.revision) for t, e in informer.tasks.items()]
    await informer.commit(deletes)
    assert informer.tasks == {} and await stored_tasks(store) == {}
