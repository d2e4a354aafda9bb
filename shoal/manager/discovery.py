"""Prometheus HTTP service discovery: every manager's and agent's metrics endpoint.

Prometheus' ``http_sd_configs`` polls a URL answering a JSON list of target
groups (``[{"targets": ["HOST:PORT"], "labels": {...}}]``). Every manager
serves it at ``/prometheus/sd`` on its ``--metrics-listen``, from what it
already knows: the managers' records in the store (each announces its metrics
address, ``ManagerInfo.metrics_address``) and the nodes (each agent reports its
``--metrics-listen`` address when it registers, ``NodeDescription.
metrics_address``). A follower answers from its own copy of the state, so any
manager can be asked; a scrape configuration that lists several gets the same
targets from each (Prometheus merges identical targets).

Each target carries ``role`` (``manager`` or ``agent``) and, for an agent,
``node`` (the node's name); the ``__meta_shoal_*`` labels are there for
relabelling (the node id, its state, its labels). A node that is down stays a
target, so its ``up`` turns 0 and an alert can say so; a node removed from the
cluster is dropped. Agents sharing one endpoint (``shoal agent --sim-nodes``)
are one target. A listener bound to every interface (``0.0.0.0:9101``) is
listed at the host the agent registered from (or the manager's advertised
address).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.exposition import reachable_address
from shoal.manager.election import ManagerInfo
from shoal.models import Node
from shoal.reconciler.informer import Informer

SD_PATH = "/prometheus/sd"
_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")

TargetGroup = dict[str, object]


@dataclass
class _Group:
    role: str
    labels: dict[str, str] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string (``ipv4:127.0.0.2:5123``, ``ipv6:[::1]:5123``)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    host = rest.rpartition(":")[0]
    return host.strip("[]")


def _host_of(address: str) -> str:
    return address.rpartition(":")[0].strip("[]")


def _node_labels(node: Node) -> dict[str, str]:
    labels = {
        "__meta_shoal_node_id": node.id,
        "__meta_shoal_node_state": node.status.state.value,
        "__meta_shoal_node_availability": node.spec.availability.value,
    }
    for key, value in node.labels.items():
        labels[f"__meta_shoal_node_label_{_LABEL_CHARS.sub('_', key)}"] = value
    return labels


def target_groups(managers: list[ManagerInfo], nodes: list[Node]) -> list[TargetGroup]:
    """The document ``/prometheus/sd`` answers: one group per distinct metrics endpoint."""
    groups: dict[str, _Group] = {}
    for info in sorted(managers, key=lambda m: m.started_at):
        if not info.metrics_address:
            continue
        address = reachable_address(info.metrics_address, _host_of(info.address))
        groups[address] = _Group(
            "manager",
            {"__meta_shoal_manager_id": info.id, "__meta_shoal_manager_address": info.address},
        )
    for node in sorted(nodes, key=lambda n: n.description.hostname + n.id):
        reported = node.description.metrics_address
        if not reported:
            continue
        address = reachable_address(reported, peer_host(node.status.address))
        group = groups.setdefault(address, _Group("agent"))
        group.nodes.append(node)
    documents: list[TargetGroup] = []
    for address, group in groups.items():
        labels = {"role": group.role, **group.labels}
        if group.role == "agent" and len(group.nodes) == 1:
            # The node's name (the agent's --name), the label dashboards select on.
            labels["node"] = group.nodes[0].id
            labels.update(_node_labels(group.nodes[0]))
        elif group.role == "agent":
            labels["__meta_shoal_nodes"] = str(len(group.nodes))
        documents.append({"targets": [address], "labels": labels})
    return documents


def discovery_route(
    informer: Informer, managers: Callable[[], list[ManagerInfo]]
) -> Callable[[], list[TargetGroup]]:
    """The route for ``shoal.exposition``: runs on the listener's thread (snapshots only)."""

    def answer() -> list[TargetGroup]:
        nodes = [entry.obj for entry in list(informer.nodes.values())]
        return target_groups(managers(), nodes)

    return answer
