"""Nodes: what an agent described when it registered, plus the manager's view."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from shoal.models.base import Model
from shoal.models.resources import ResourceKind, ResourceUnit

# What one machine carries unless its agent says otherwise (``--max-tasks``).
DEFAULT_MAX_TASKS = 256


class Availability(StrEnum):
    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


class NodeState(StrEnum):
    UNKNOWN = "unknown"
    READY = "ready"
    DOWN = "down"


class RuntimeInfo(Model):
    name: str
    available: bool
    message: str = ""


class NodeDescription(Model):
    """Sent by the agent at registration; the manager never edits it."""

    hostname: str
    role: str = "worker"
    labels: dict[str, str] = Field(default_factory=dict)
    runtimes: list[RuntimeInfo] = Field(default_factory=list)
    cpus: float = 0.0
    memory: int = 0
    agent_version: str = ""
    # The most tasks the agent takes (``shoal agent --max-tasks``); None: no limit.
    max_tasks: int | None = None
    # Generic resources (``shoal agent --resource``, discovery): kind → its units.
    generic_resources: dict[ResourceKind, list[ResourceUnit]] = Field(
        default_factory=dict, exclude_if=lambda v: not v
    )
    # Where the agent serves /metrics (``--metrics-listen``, as bound); "" for none.
    # Listed by the managers' Prometheus service discovery (shoal.manager.discovery).
    metrics_address: str = Field(default="", exclude_if=lambda v: not v)
    # The address other nodes reach this one at (``shoal agent --advertise-address``);
    # "" lets the manager use the address it sees the agent's session come from.
    advertise_address: str = Field(default="", exclude_if=lambda v: not v)

    def runtime_available(self, name: str) -> bool:
        return any(r.name == name and r.available for r in self.runtimes)


class NodeSpec(Model):
    """Set by operators (``shoal node update``)."""

    availability: Availability = Availability.ACTIVE
    labels: dict[str, str] = Field(default_factory=dict)


class NodeStatus(Model):
    state: NodeState = NodeState.UNKNOWN
    message: str = ""
    address: str = ""
    # Where other nodes and clients reach this node's tasks: the agent's
    # ``--advertise-address``, else the host part of ``address``.
    advertise_address: str = Field(default="", exclude_if=lambda v: not v)
    updated_at: datetime | None = None


class Node(Model):
    id: str
    description: NodeDescription
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)

    @property
    def labels(self) -> dict[str, str]:
        """Labels the agent announced, overridden by labels an operator added."""
        return {**self.description.labels, **self.spec.labels}

    @property
    def schedulable(self) -> bool:
        return (
            self.status.state == NodeState.READY and self.spec.availability == Availability.ACTIVE
        )
