"""Prometheus HTTP service discovery: the document and the listener that serves it.

The document is built from manager records and nodes as the store holds them;
the listener test asks a real ``serve_metrics`` listener over HTTP, as
Prometheus does.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter

from shoal.exposition import serve_metrics
from shoal.manager.discovery import SD_PATH, peer_host, target_groups
from shoal.manager.election import ManagerInfo
from shoal.models import Node, NodeState
from tests.reconciler.world import node


def manager(manager_id: str, address: str, metrics: str) -> ManagerInfo:
    return ManagerInfo(
        id=manager_id,
        address=address,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        metrics_address=metrics,
    )


def agent(name: str, metrics: str, peer: str, **labels: str) -> Node:
    base = node(name, labels=labels)
    return base.model_copy(
        update={
            "description": base.description.model_copy(update={"metrics_address": metrics}),
            "status": base.status.model_copy(update={"address": peer}),
        }
    )


def test_managers_and_agents_with_their_labels() -> None:
    groups = target_groups(
        [manager("m1", "10.0.0.1:7420", "10.0.0.1:7421")],
        [
            agent("n1", "127.0.0.2:9101", "ipv4:127.0.0.2:50000", zone="a"),
            agent("n2", "0.0.0.0:9101", "ipv4:10.0.0.7:50001"),  # every interface
            agent("quiet", "", "ipv4:10.0.0.8:50002"),  # serves no metrics
        ],
    )
    assert groups == [
        {
            "targets": ["10.0.0.1:7421"],
            "labels": {
                "role": "manager",
                "__meta_shoal_manager_id": "m1",
                "__meta_shoal_manager_address": "10.0.0.1:7420",
            },
        },
        {
            "targets": ["127.0.0.2:9101"],
            "labels": {
                "role": "agent",
                "node": "n1",
                "__meta_shoal_node_id": "n1",
                "__meta_shoal_node_state": "ready",
                "__meta_shoal_node_availability": "active",
                "__meta_shoal_node_label_zone": "a",
            },
        },
        {
            "targets": ["10.0.0.7:9101"],
            "labels": {
                "role": "agent",
                "node": "n2",
                "__meta_shoal_node_id": "n2",
                "__meta_shoal_node_state": "ready",
                "__meta_shoal_node_availability": "active",
            },
        },
    ]


def test_a_down_node_stays_a_target_and_a_shared_endpoint_is_one() -> None:
    down = agent("n1", "127.0.0.2:9101", "ipv4:127.0.0.2:1")
    down = down.model_copy(
        update={"status": down.status.model_copy(update={"state": NodeState.DOWN})}
    )
    assert down.status.state == NodeState.DOWN
    fleet = [agent(f"sim{i}", "127.0.0.9:9101", "ipv4:127.0.0.9:1") for i in range(3)]
    groups = target_groups([], [down, *fleet])
    assert [g["targets"] for g in groups] == [["127.0.0.2:9101"], ["127.0.0.9:9101"]]
    assert groups[0]["labels"]["__meta_shoal_node_state"] == "down"  # type: ignore[index]
    assert groups[1]["labels"] == {"role": "agent", "__meta_shoal_nodes": "3"}


def test_peer_hosts() -> None:
    assert peer_host("ipv4:127.0.0.2:5123") == "127.0.0.2"
    assert peer_host("ipv6:[::1]:5123") == "::1"
    assert peer_host("unix:/run/x.sock") == ""


def test_the_listener_serves_metrics_and_the_discovery_document() -> None:
    registry = CollectorRegistry()
    Counter("shoal_test_things_total", "Things.", registry=registry).inc(2)
    document = [{"targets": ["127.0.0.1:1"], "labels": {"role": "manager"}}]
    listener = serve_metrics("127.0.0.1:0", registry, {SD_PATH: lambda: document})
    try:
        base = f"http://{listener.address}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert "shoal_test_things_total 2.0" in text
        assert "process_resident_memory_bytes" in text  # this process's own
        with urllib.request.urlopen(base + SD_PATH, timeout=5) as reply:
            assert reply.headers["Content-Type"] == "application/json"
            assert json.loads(reply.read()) == document
    finally:
        listener.close()
