"""The endpoint catalog on agent sessions: full after the assignments, then changes.

Sessions are opened the way the gRPC server would (the handler called
directly); tasks change in a memory store, time is virtual.
"""

from __future__ import annotations

import pytest

from shoal.api.transport import encode
from shoal.discovery.catalog import Catalog
from shoal.manager.dispatcher import Dispatcher, peer_host
from shoal.models import TaskState, TaskStatus
from tests.manager.test_dispatcher import dispatcher, open_session, world
from tests.manager.test_endpoints import addressed, running, update
from tests.reconciler.world import World, service

pytestmark = pytest.mark.looptime
__all__ = ["dispatcher", "world"]  # fixtures


async def test_an_agent_gets_the_full_catalog_then_only_what_changed(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(service("web"), service("db"), addressed("n1", "127.0.0.2"))
    await world.put(running("a", 1, 20001))
    session = await open_session(dispatcher, "n1", catalog=True)
    assert (await session.next())["type"] == "assignments"
    full = await session.next()
    assert (full["type"], full["full"]) == ("endpoints", True)
    catalog = Catalog()
    catalog.apply(full)
    assert catalog.endpoints("db") == ()  # known, nothing healthy: NODATA, not NXDOMAIN
    # n1 registered from 127.0.0.1 without --advertise-address: that is its address now.
    assert [(e.address, e.ports[0].port) for e in catalog.endpoints("web") or ()] == [
        ("127.0.0.1", 20001)
    ]
    await world.put(running("b", 2, 20002))
    await update(world, "a", status=TaskStatus(state=TaskState.FAILED))
    change = await session.next()
    while change["type"] != "endpoints":  # assignment diffs of the same tasks come too
        change = await session.next()
    assert change["full"] is False and list(change["services"]) == ["web"]
    catalog.apply(change)
    assert [e.task_id for e in catalog.endpoints("web") or ()] == ["b"]
    session.pump.cancel()


async def test_one_message_per_change_is_shared_by_every_session(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(service("web"), addressed("n1", "127.0.0.2"), addressed("n2", "127.0.0.3"))
    first = await open_session(dispatcher, "n1", catalog=True)
    second = await open_session(dispatcher, "n2", catalog=True)
    for session in (first, second):
        await session.next()  # assignments
        await session.next()  # full catalog
    await world.put(running("a", 1, 20001, node_id="n2"))
    seen = []
    for session in (first, second):
        message = await session.next()
        while message["type"] != "endpoints":
            message = await session.next()
        seen.append(message)
    assert seen[0] is seen[1]  # built once, sent twice
    assert encode(seen[0]) is encode(seen[1])  # and encoded once
    assert dispatcher.endpoint_push.messages == 2
    first.pump.cancel()
    second.pump.cancel()


async def test_an_agent_that_opted_out_gets_no_catalog(
    world: World, dispatcher: Dispatcher
) -> None:
    await world.put(service("web"), addressed("n1", "127.0.0.2"))
    session = await open_session(dispatcher, "n1", catalog=False)
    assert (await session.next())["type"] == "assignments"
    await world.put(running("a", 1, 20001, node_id="n2"))
    assert await session.quiet()
    assert dispatcher.endpoint_push.messages == 0
    session.pump.cancel()


async def test_the_session_tells_the_agent_the_address_the_manager_sees(
    world: World, dispatcher: Dispatcher
) -> None:
    session = await open_session(dispatcher, "n1")
    assert world.informer.nodes["n1"].obj.status.advertise_address == "127.0.0.1"
    session.pump.cancel()


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:10.0.0.5:41234", "10.0.0.5"),
        ("ipv6:[::1]:41234", "::1"),
        ("ipv6:%5B::1%5D:41234", "::1"),
        ("unix:/run/x.sock", ""),
    ],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host
