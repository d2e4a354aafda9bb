"""An agent's copy of the endpoint catalog: fed by its session, kept when the managers go.

A manager (memory store) and an agent in one process, real gRPC on loopback,
the ``sim`` runtime: the agent advertises an address of its own, its task's
dynamic port shows in the status, the catalog arrives on the session and
survives the manager's end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from shoal.agent.agent import Agent, AgentSettings
from shoal.manager.server import ManagerSettings, open_manager
from shoal.models import Service, TaskState
from shoal.store.typed import Change


async def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_agent_keeps_the_last_catalog_when_the_manager_is_gone(
    tmp_path: Path,
) -> None:
    settings = ManagerSettings(
        store_url="memory://",
        state_dir=tmp_path / "manager",
        listen="127.0.0.1:0",
        join_listen="127.0.0.1:0",
        heartbeat_period=0.5,
    )
    web = Service.model_validate(
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "template": {"runtime": "sim", "command": ["x"], "ports": [{"name": "http"}]},
            },
        }
    )
    async with open_manager(settings) as manager:
        agent = Agent(
            AgentSettings(
                managers=[manager.address],
                token="",
                identity=await manager.security.local_node("n1"),
                state_dir=tmp_path / "agent",
                name="n1",
                runtimes=frozenset({"sim"}),
                advertise_address="127.0.0.5",
                port_range=(30000, 30999),
            )
        )
        await agent.start()
        try:
            await manager.informer.commit([Change.put(web, 0)])
            await until(lambda: bool(agent.catalog.endpoints("web")), "web's endpoint")
            node = manager.informer.nodes["n1"].obj
            assert node.status.advertise_address == "127.0.0.5"
            (task,) = (e.obj for e in manager.informer.tasks_of_service("web"))
            assert task.status.state == TaskState.RUNNING
            (port,) = task.status.ports
            assert port.name == "http" and 30000 <= port.port <= 30999
            (endpoint,) = agent.catalog.endpoints("web") or ()
            assert (endpoint.task_id, endpoint.address, endpoint.ports[0].port) == (
                task.id,
                "127.0.0.5",
                port.port,
            )
            version = agent.catalog.version
        except BaseException:
            await agent.aclose()
            raise
    try:
        # The manager is gone: the session ends, the catalog stays as it was.
        await until(lambda: not agent.connected.is_set(), "the session to end")
        assert agent.catalog.version == version
        assert [e.task_id for e in agent.catalog.endpoints("web") or ()] == [task.id]
    finally:
        await agent.aclose()
