"""The endpoint catalog derived from the informer (memory store, virtual clock).

A task is an endpoint while it runs, is wanted running, is healthy (or has no
health check) and sits on a ready node with an address; anything else leaves
the list, and listeners hear which services changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.discovery.catalog import Catalog
from shoal.errors import NotFoundError
from shoal.manager.endpoints import EndpointIndex
from shoal.manager.endpointsapi import EndpointsApi
from shoal.models import DesiredState, NodeState, Task, TaskState, TaskStatus
from shoal.models.node import NodeStatus
from shoal.models.task import TaskPort
from shoal.store.typed import SERVICES, Change
from tests.reconciler.world import World, node, open_world, service

pytestmark = pytest.mark.looptime

HEALTHCHECK = {"healthcheck": {"tcp": {"port": 1}}}


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with open_world() as opened:
        yield opened


def addressed(node_id: str, address: str, state: NodeState = NodeState.READY) -> Any:
    base = node(node_id, state=state)
    return base.model_copy(
        update={"status": NodeStatus(state=state, address="ipv4:x", advertise_address=address)}
    )


def running(
    task_id: str,
    slot: int,
    port: int,
    *,
    node_id: str = "n1",
    health: str | None = None,
    svc: str = "web",
    **template: Any,
) -> Task:
    return Task(
        id=task_id,
        service=svc,
        slot=slot,
        node_id=node_id,
        template=service(svc, **template).spec.template,
        created_at=datetime.now(UTC),
        status=TaskStatus(
            state=TaskState.RUNNING,
            health=health,  # type: ignore[arg-type]
            ports=[TaskPort(name="http", port=port)],
        ),
    )


async def update(world: World, task_id: str, **changes: Any) -> None:
    entry = world.informer.tasks[task_id]
    await world.informer.commit([Change.put(entry.obj.model_copy(update=changes), entry.revision)])


def listed(index: EndpointIndex, name: str = "web") -> list[tuple[int, str, int]]:
    return [(e.slot, e.address, e.ports[0].port) for e in index.endpoints(name) or ()]


async def test_running_tasks_are_endpoints_with_their_node_address_and_ports(
    world: World,
) -> None:
    await world.put(service("web"), service("db"), addressed("n1", "127.0.0.2"))
    await world.put(addressed("n2", "127.0.0.3"))
    await world.put(running("a", 1, 20001), running("b", 2, 20002, node_id="n2"))
    index = EndpointIndex(world.informer)  # built from what the informer already holds
    assert listed(index) == [(1, "127.0.0.2", 20001), (2, "127.0.0.3", 20002)]
    # A service with nothing running is known and empty; an unknown one is None.
    assert index.endpoints("db") == []
    assert index.endpoints("nope") is None
    (endpoint, _) = index.endpoints("web") or ()
    assert (endpoint.task_id, endpoint.node_id, endpoint.port("http")) == (
        "a",
        "n1",
        endpoint.ports[0],
    )


async def test_a_task_that_stops_or_is_shut_down_leaves_and_listeners_hear_it(
    world: World,
) -> None:
    await world.put(service("web"), addressed("n1", "127.0.0.2"))
    index = EndpointIndex(world.informer)
    heard: list[frozenset[str]] = []
    index.subscribe(heard.append)
    await world.put(running("a", 1, 20001), running("b", 2, 20002))
    assert listed(index) == [(1, "127.0.0.2", 20001), (2, "127.0.0.2", 20002)]
    assert heard and set().union(*heard) == {"web"}
    heard.clear()
    await update(world, "a", status=TaskStatus(state=TaskState.FAILED))
    assert listed(index) == [(2, "127.0.0.2", 20002)]
    assert heard == [frozenset({"web"})]
    await update(world, "b", desired_state=DesiredState.SHUTDOWN)  # still running, not wanted
    assert listed(index) == []
    # A change that does not touch the endpoint says nothing.
    heard.clear()
    await update(world, "a", status=TaskStatus(state=TaskState.FAILED, message="again"))
    assert heard == []


async def test_only_healthy_tasks_count_when_there_is_a_health_check(world: World) -> None:
    await world.put(service("web"), addressed("n1", "127.0.0.2"))
    index = EndpointIndex(world.informer)
    await world.put(running("a", 1, 20001, health="starting", **HEALTHCHECK))
    await world.put(running("b", 2, 20002, health="healthy", **HEALTHCHECK))
    await world.put(running("c", 3, 20003, health="unhealthy", **HEALTHCHECK))
    assert listed(index) == [(2, "127.0.0.2", 20002)]


async def test_a_node_that_goes_down_takes_its_endpoints_along(world: World) -> None:
    await world.put(service("web"), addressed("n1", "127.0.0.2"), addressed("n2", "127.0.0.3"))
    index = EndpointIndex(world.informer)
    await world.put(running("a", 1, 20001), running("b", 2, 20002, node_id="n2"))
    await world.put(addressed("n2", "127.0.0.3", NodeState.DOWN))
    assert listed(index) == [(1, "127.0.0.2", 20001)]
    await world.put(addressed("n2", "127.0.0.9"))  # back, at a new address
    assert listed(index) == [(1, "127.0.0.2", 20001), (2, "127.0.0.9", 20002)]


async def test_messages_build_an_agents_catalog_full_then_changes(world: World) -> None:
    await world.put(service("web"), service("db"), addressed("n1", "127.0.0.2"))
    await world.put(running("a", 1, 20001))
    index = EndpointIndex(world.informer)
    catalog = Catalog()
    catalog.apply(index.full_message())
    assert catalog.services() == ["db", "web"]
    assert [e.task_id for e in catalog.endpoints("web") or ()] == ["a"]
    assert catalog.endpoints("db") == ()
    heard: set[str] = set()
    index.subscribe(heard.update)
    await world.put(running("d", 1, 20009, svc="db"))
    await world.informer.commit([Change.delete(SERVICES + "web", None)])
    message = index.changes_message(heard)
    assert message is not None and message["removed"] == ["web"]
    assert list(message["services"]) == ["db"]
    catalog.apply(message)
    assert catalog.services() == ["db"]
    assert [e.ports[0].port for e in catalog.endpoints("db") or ()] == [20009]


async def test_the_endpoints_method_lists_then_follows_a_service(world: World) -> None:
    await world.put(service("web"), addressed("n1", "127.0.0.2"))
    index = EndpointIndex(world.informer)
    api = EndpointsApi(index)
    with pytest.raises(NotFoundError, match="service 'nope' not found"):
        await anext(api.endpoints({"service": "nope"}, None))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service: name the service"):
        await anext(api.endpoints({}, None))  # type: ignore[arg-type]
    stream = api.endpoints({"service": "web", "watch": True}, None)  # type: ignore[arg-type]
    assert await anext(stream) == {"service": "web", "endpoints": []}
    await world.put(running("a", 1, 20001))
    item = await asyncio.wait_for(anext(stream), 5)
    assert [e["taskId"] for e in item["endpoints"]] == ["a"]
    await world.informer.commit([Change.delete(SERVICES + "web", None)])
    assert await asyncio.wait_for(anext(stream), 5) == {"service": "web", "deleted": True}
    await stream.aclose()
