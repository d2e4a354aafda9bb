"""The agent's DNS listeners: opened at start, answering from the agent's catalog."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
from prometheus_client import CollectorRegistry

from shoal.agent.agent import Agent, AgentSettings
from shoal.agent.discovery import DnsSettings, NodeDiscovery
from shoal.discovery.catalog import Catalog, Endpoint, EndpointPort, message
from shoal.errors import RuntimeBackendError
from shoal.runtimes.base import RuntimeSettings
from shoal.runtimes.containers import ContainerRuntime


async def ask(address: str, name: str) -> dns.message.Message:
    host, _, port = address.rpartition(":")
    query = dns.message.make_query(name, "A")
    return await dns.asyncquery.udp(query, host, port=int(port), timeout=5)


async def test_the_agent_answers_from_its_catalog(tmp_path: Path) -> None:
    settings = AgentSettings(
        managers=["127.0.0.1:1"],
        token="",
        state_dir=tmp_path,
        name="n1",
        runtimes=frozenset({"sim"}),
        dns=DnsSettings(listen="127.0.0.1:0", required=True),
    )
    agent = Agent(settings)
    await agent.discovery.start({})
    try:
        address = agent.discovery.address
        assert address is not None
        assert (await ask(address, "web.shoal.")).rcode() == dns.rcode.SERVFAIL
        web = Endpoint(
            service="web",
            task_id="t1",
            slot=1,
            node_id="n1",
            address="127.0.0.2",
            ports=[EndpointPort(name="http", port=20001)],
        )
        agent.catalog.apply(message({"web": [web]}, full=True))
        response = await ask(address, "web.shoal.")
        assert [r.to_text() for r in response.answer[0]] == ["127.0.0.2"]
        samples = {
            s.labels["rcode"]: s.value
            for metric in agent.registry.collect()
            if metric.name == "shoal_agent_dns_queries"
            for s in metric.samples
            if s.name.endswith("_total")
        }
        assert samples == {"SERVFAIL": 1.0, "NOERROR": 1.0}
    finally:
        await agent.discovery.aclose()


async def test_a_taken_address_stops_the_agent_only_when_it_was_asked_for() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        asked = NodeDiscovery(
            Catalog(), "n1", DnsSettings(listen=address, required=True), CollectorRegistry()
        )
        with pytest.raises(RuntimeBackendError, match="cannot answer DNS on"):
            await asked.start({})
        default = NodeDiscovery(Catalog(), "n1", DnsSettings(listen=address), CollectorRegistry())
        await default.start({})  # a warning: the agent runs on without DNS
        assert default.address is None
        await default.aclose()


async def test_an_explicit_container_address_serves_every_container_runtime(
    tmp_path: Path,
) -> None:
    from shoal.runtimes.docker import DockerRuntime
    from shoal.runtimes.podman import PodmanRuntime

    # A loopback address of this test's own, for port 53 (nothing is asked of the engines).
    address = (
        f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 2}"
    )
    catalog = Catalog()
    box = Endpoint(
        service="web",
        task_id="t1",
        slot=1,
        node_id="n1",
        address="192.0.2.10",
        ports=[EndpointPort(name="http", port=20001, target=8080)],
        container_address="172.17.0.9",
    )
    catalog.apply(message({"web": [box]}, full=True))
    runtimes = {
        name: cls(RuntimeSettings(state_dir=tmp_path / name, node_name="n1"))
        for name, cls in (("docker", DockerRuntime), ("podman", PodmanRuntime))
    }
    discovery = NodeDiscovery(
        catalog, "n1", DnsSettings(listen=None, containers=address), CollectorRegistry()
    )
    await discovery.start(runtimes)
    try:
        assert set(discovery.container_listeners) == {"docker", "podman"}
        response = await ask(f"{address}:53", "web.shoal.")
        assert [r.to_text() for r in response.answer[0]] == ["172.17.0.9"]  # as a container
        for runtime in runtimes.values():
            assert isinstance(runtime, ContainerRuntime) and runtime.dns_server == address
    finally:
        await discovery.aclose()
        for runtime in runtimes.values():
            await runtime.aclose()
