"""What only the etcd store promises: surviving members that die, and quorum loss.

Each test runs its own real 3-member cluster (``tests/etcdcluster.py``) so it
can kill, stop and restart members.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoal.errors import StoreError, StoreUnavailableError
from shoal.models import Task
from shoal.models.service import TaskTemplate
from shoal.store import EventType, Put
from shoal.store.etcd import EtcdStore, parse_etcd_url, prefix_end
from shoal.store.typed import TASKS, Change, TypedStore
from tests.etcdcluster import EtcdCluster, etcd_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path / "etcd") as running:
        yield running


def test_url_names_members_and_prefix() -> None:
    assert parse_etcd_url("etcd://10.0.0.1:2379,[::1]:2479/shoal/prod/") == (
        [("10.0.0.1", 2379), ("::1", 2479)],
        "/shoal/prod",
    )
    assert parse_etcd_url("etcd://h:1/") == ([("h", 1)], "")
    assert prefix_end(b"/a") == b"/b"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


async def test_prefixes_keep_tenants_apart(cluster: EtcdCluster) -> None:
    one = await EtcdStore.open(cluster.url("one"))
    two = await EtcdStore.open(cluster.url("two"))
    try:
        await one.put("/services/web", b"1")
        assert await two.get("/services/web") is None
        assert (await two.delete_prefix(""))[1] == 0
        kvs, _ = await one.range("")
        assert [kv.key for kv in kvs] == ["/services/web"]
        assert "/one/services/web" in cluster.etcdctl("get", "--prefix", "/", "--keys-only")
    finally:
        await one.aclose()
        await two.aclose()


async def test_killing_the_connected_member_moves_to_another(cluster: EtcdCluster) -> None:
    store = await EtcdStore.open(cluster.url())
    watch = store.watch("/w/", await store.revision() + 1)
    try:
        written: dict[str, int] = {}
        for i in range(20):
            written[f"/w/{i}"] = await store.put(f"/w/{i}", b"")
        # pick_first connects to the first member listed: that is the one to kill.
        cluster.members[0].kill()
        started = time.monotonic()
        unknown = 0
        i = 20
        streak = 0
        while streak < 40:  # until 40 writes in a row succeed on the other members
            assert time.monotonic() - started < 10, f"no failover: {unknown} writes failed"
            try:
                written[f"/w/{i}"] = await store.put(f"/w/{i}", b"")
                streak += 1
            except StoreUnavailableError as exc:
                # In flight when the member died, or during the election of a new etcd
                # leader if it was the leader: reported, never retried.
                assert "may or may not have been applied" in str(exc)
                unknown += 1
                streak = 0
            i += 1
        kvs, _ = await store.range("/w/")
        assert {kv.key for kv in kvs} >= set(written)
        # The watch resumed on another member: every event once, in order.
        seen: list[int] = []
        while len(seen) < len(kvs):
            batch = await asyncio.wait_for(anext(watch), 10)
            assert all(e.type == EventType.PUT for e in batch)
            seen.append(batch[0].kv.mod_revision)
        assert seen == sorted({kv.mod_revision for kv in kvs})
    finally:
        await store.aclose()


async def test_lost_quorum_fails_writes_clearly_and_recovers(cluster: EtcdCluster) -> None:
    store = await EtcdStore.open(cluster.url())
    store.timeout = 2.0
    watch = store.watch("/q/", await store.revision() + 1)
    try:
        before = await store.put("/q/before", b"")
        assert (await asyncio.wait_for(anext(watch), 5))[0].kv.mod_revision == before
        for member in cluster.members[1:]:
            member.stop()
        with pytest.raises(StoreUnavailableError, match="quorum") as info:
            await store.put("/q/during", b"")
        assert "may or may not have been applied" in str(info.value)
        with pytest.raises(StoreUnavailableError, match="quorum"):
            await store.get("/q/before")
        health = await store.health()
        assert [h.healthy for h in health] == [False, False, False]
        assert "no leader" in health[0].detail and "unreachable" in health[1].detail

        for member in cluster.members[1:]:
            member.start()
        deadline = time.monotonic() + 20
        while True:  # the same store object, no reopen
            try:
                after = await store.put("/q/after", b"")
                break
            except StoreUnavailableError:
                assert time.monotonic() < deadline, "etcd did not recover"
                await asyncio.sleep(0.2)
        keys: list[str] = []
        while "/q/after" not in keys:  # the watch came back by itself
            batch = await asyncio.wait_for(anext(watch), 10)
            keys += [e.kv.key for e in batch]
        assert keys[-1] == "/q/after" and after > before
        while sum(h.healthy for h in await store.health()) < 3:  # restarted members catch up
            assert time.monotonic() < deadline, "members did not all report healthy"
            await asyncio.sleep(0.2)
    finally:
        await store.aclose()


async def test_write_to_a_frozen_member_is_not_retried_blindly(cluster: EtcdCluster) -> None:
    store = await EtcdStore.open(cluster.url())
    store.timeout = 1.5
    frozen = cluster.members[0]  # the member the channel is connected to
    try:
        await store.put("/f/seed", b"")
        assert frozen.proc is not None
        frozen.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailableError, match="may or may not have been applied"):
                await store.txn([], [Put("/f/once", b"x")])
        finally:
            frozen.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.5)
        kv = await store.get("/f/once")
        assert kv is None or kv.version == 1  # applied at most once, never twice
    finally:
        await store.aclose()


async def test_open_fails_clearly_when_no_member_answers(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:1"):
        await EtcdStore.open("etcd://127.0.0.1:1/shoal", timeout=1.0)


async def test_default_limits_refuse_big_transactions_and_shoal_splits_its_batches(
    cluster: EtcdCluster,
) -> None:
    store = await EtcdStore.open(cluster.url())
    try:
        # The members run with etcd's defaults: a 129-operation transaction is refused.
        with pytest.raises(StoreError, match="too many operations"):
            await store.txn([], [Put(f"/big/{i}", b"x") for i in range(129)])
        assert (await store.range("/big/"))[0] == []

        def task(index: int, pad: int) -> Task:
            return Task(
                id=f"t{index:05d}",
                service="web",
                slot=index + 1,
                template=TaskTemplate(runtime="sim", command=["sim"], env={"PAD": "x" * pad}),
                created_at=datetime.now(UTC),
            )

        typed = TypedStore(store)
        many = [Change.put(task(i, 10), 0) for i in range(1000)]  # past the op limit
        large = [Change.put(task(2000 + i, 200_000), 0) for i in range(12)]  # 2.4 MB
        for batch in (many, large):
            async for _ in typed.commit_in_chunks(batch):
                pass
        kvs, _ = await store.range(TASKS)
        assert len(kvs) == 1012
        with pytest.raises(StoreError, match="at most 128"):
            await typed.commit([Change.put(task(5000 + i, 10), 0) for i in range(129)])
    finally:
        await store.aclose()
