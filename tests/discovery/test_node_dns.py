"""The agent's DNS listeners: opened at start, answering from the agent's catalog."""

from __future__ import annotations

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
