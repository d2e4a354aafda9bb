"""Leader election and its fence, on a real 3-member etcd cluster.

The fence is what makes a deposed leader harmless, so the tests depose one
behind its back (its lease revoked by somebody else, as an expiry during a
pause would) and check that its next write fails in etcd, not just locally.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from shoal.errors import NotLeaderError
from shoal.manager.election import (
    LEADER_KEY,
    MANAGERS,
    LeaseElection,
    SoleElection,
    manager_info,
)
from shoal.models import Node, NodeDescription
from shoal.store import MemoryStore
from shoal.store.base import Event
from shoal.store.etcd import EtcdStore
from shoal.store.typed import Change, TypedStore
from tests.etcdcluster import EtcdCluster, etcd_cluster


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
async def store(etcd: EtcdCluster, request: pytest.FixtureRequest) -> AsyncIterator[EtcdStore]:
    opened = await EtcdStore.open(etcd.url(f"election/{request.node.name}"))
    yield opened
    await opened.aclose()


class Terms:
    """Records on_elected / on_deposed calls of one election."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.elected = asyncio.Event()
        self.deposed = asyncio.Event()

    async def on_elected(self) -> None:
        self.log.append("elected")
        self.elected.set()

    async def on_deposed(self) -> None:
        self.log.append("deposed")
        self.deposed.set()


def node(name: str) -> Node:
    return Node(id=name, description=NodeDescription(hostname=name))


async def test_one_leader_and_a_deposed_leader_cannot_write(store: EtcdStore) -> None:
    first, second = Terms(), Terms()
    # A long ttl: A renews only every 10 s, so it cannot notice the revocation below.
    a = LeaseElection(store, manager_info("127.0.0.1:1"), ttl=30.0)
    b = LeaseElection(store, manager_info("127.0.0.1:2"), ttl=2.0)
    await a.start(first.on_elected, first.on_deposed)
    await asyncio.wait_for(first.elected.wait(), 5)
    await b.start(second.on_elected, second.on_deposed)
    try:
        await asyncio.sleep(0.5)
        assert a.is_leader and not b.is_leader
        assert b.leader is not None and b.leader.id == a.me.id
        assert set(b.managers) == {a.me.id, b.me.id}
        a_writes, b_writes = TypedStore(store, fence=a), TypedStore(store, fence=b)
        await a_writes.commit([Change.put(node("n1"), 0)])
        with pytest.raises(NotLeaderError, match=r"the leader is 127\.0\.0\.1:1"):
            await b_writes.commit([Change.put(node("n2"), 0)])  # refused locally

        # A is "paused": its lease goes behind its back, B takes over.
        await store.revoke(a.me.lease)
        await asyncio.wait_for(second.elected.wait(), 5)
        assert a.is_leader  # it has not noticed yet: its local deadline has not passed
        with pytest.raises(NotLeaderError):
            await a_writes.commit([Change.put(node("n3"), 0)])  # refused by etcd: the fence
        assert await store.get("/nodes/n3") is None
        await asyncio.wait_for(first.deposed.wait(), 5)
        assert not a.is_leader and first.log == ["elected", "deposed"]
        await b_writes.commit([Change.put(node("n3"), 0)])
        assert await store.get("/nodes/n3") is not None
    finally:
        await b.aclose()
        await a.aclose()


async def test_leader_that_cannot_renew_steps_down_by_its_deadline(
    store: EtcdStore, etcd: EtcdCluster
) -> None:
    terms = Terms()
    election = LeaseElection(store, manager_info("127.0.0.1:1"), ttl=2.0)
    await election.start(terms.on_elected, terms.on_deposed)
    try:
        await asyncio.wait_for(terms.elected.wait(), 5)
        for member in etcd.members[1:]:
            member.stop()  # no quorum: keep-alives cannot succeed
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(terms.deposed.wait(), 5)
        # ttl, plus the 0.5 s election timeout during which an etcd leader that lost
        # its quorum still renews leases before it steps down itself.
        assert asyncio.get_running_loop().time() - started <= 2.0 + 1.0
        with pytest.raises(NotLeaderError, match="no shoal manager leads"):
            election.compares()
        for member in etcd.members[1:]:
            member.start()
        etcd.wait_healthy()
        # Quorum is back: the same election wins again without a restart.
        terms.elected.clear()
        await asyncio.wait_for(terms.elected.wait(), 15)
        assert election.is_leader
        kv = await store.get(LEADER_KEY)
        assert kv is not None and kv.lease == election.me.lease
    finally:
        await election.aclose()


async def test_a_leader_whose_event_loop_is_held_past_its_ttl_keeps_the_lead(
    store: EtcdStore,
) -> None:
    terms = Terms()
    election = LeaseElection(store, manager_info("127.0.0.1:1"), ttl=2.0)
    await election.start(terms.on_elected, terms.on_deposed)
    try:
        await asyncio.wait_for(terms.elected.wait(), 5)
        kv = await store.get(LEADER_KEY)
        assert kv is not None
        term = kv.create_revision
        # A pass that holds the loop (and its thread) for 1.5 ttl: nothing on it runs.
        time.sleep(3.0)  # noqa: ASYNC251
        await asyncio.sleep(0.5)
        assert terms.log == ["elected"]
        assert election.is_leader
        election.compares()  # may still write
        kv = await store.get(LEADER_KEY)
        assert kv is not None and kv.create_revision == term  # the same term
    finally:
        await election.aclose()


async def test_closing_hands_over_at_once(store: EtcdStore) -> None:
    first, second = Terms(), Terms()
    a = LeaseElection(store, manager_info("127.0.0.1:1"), ttl=10.0)
    b = LeaseElection(store, manager_info("127.0.0.1:2"), ttl=10.0)
    await a.start(first.on_elected, first.on_deposed)
    await asyncio.wait_for(first.elected.wait(), 5)
    await b.start(second.on_elected, second.on_deposed)
    await a.aclose()  # revokes its lease: no need to wait out the 10 s ttl
    try:
        await asyncio.wait_for(second.elected.wait(), 3)
        kvs, _ = await store.range(MANAGERS)
        assert [kv.key for kv in kvs] == [MANAGERS + b.me.id]
    finally:
        await b.aclose()


async def test_sole_election_leads_at_once_without_a_fence() -> None:
    terms = Terms()
    election = SoleElection(manager_info("127.0.0.1:1"))
    await election.start(terms.on_elected, terms.on_deposed)
    assert election.is_leader and terms.log == ["elected"]
    assert election.compares() == []
    store = MemoryStore()
    await TypedStore(store).commit([Change.put(node("n1"), 0)])
    assert await store.get("/nodes/n1") is not None
    await election.aclose()


class BrokenWatchStore(MemoryStore):
    """A backend whose next watch raises an error it should not (a missed mapping)."""

    break_next_watch = False

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        inner = super().watch(prefix, start_revision)
        if not self.break_next_watch:
            return inner
        self.break_next_watch = False

        async def events() -> AsyncIterator[list[Event]]:
            async for _batch in inner:
                raise RuntimeError("a bug in the backend")
                yield _batch  # pragma: no cover - makes this an async generator

        return events()


async def test_a_follower_whose_observer_hit_a_bug_still_takes_over() -> None:
    store = BrokenWatchStore()
    first, second = Terms(), Terms()
    a = LeaseElection(store, manager_info("127.0.0.1:1"), ttl=2.0)
    b = LeaseElection(store, manager_info("127.0.0.1:2"), ttl=2.0)
    await a.start(first.on_elected, first.on_deposed)
    await asyncio.wait_for(first.elected.wait(), 5)
    store.break_next_watch = True  # B's observer: its first event raises
    await b.start(second.on_elected, second.on_deposed)
    try:
        while not b.restarts["election-observe"]:
            await asyncio.wait_for(b.changed.wait(), 5)
        await a.aclose()  # the leader key goes: only a live observer tells B
        await asyncio.wait_for(second.elected.wait(), 5)
        assert b.is_leader
    finally:
        await b.aclose()
        await a.aclose()
        await store.aclose()
