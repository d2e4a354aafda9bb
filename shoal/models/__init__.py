"""The pydantic models: the single source of truth for specs, tasks and nodes."""

from shoal.models.node import (
    Availability,
    Node,
    NodeDescription,
    NodeSpec,
    NodeState,
    NodeStatus,
    RuntimeInfo,
)
from shoal.models.service import (
    API_VERSION,
    Metadata,
    Placement,
    RestartPolicy,
    Service,
    ServiceSpec,
    ServiceStatus,
    TaskTemplate,
)
from shoal.models.task import DesiredState, Task, TaskState, TaskStatus

__all__ = [
    "API_VERSION",
    "Availability",
    "DesiredState",
    "Metadata",
    "Node",
    "NodeDescription",
    "NodeSpec",
    "NodeState",
    "NodeStatus",
    "Placement",
    "RestartPolicy",
    "RuntimeInfo",
    "Service",
    "ServiceSpec",
    "ServiceStatus",
    "Task",
    "TaskState",
    "TaskStatus",
    "TaskTemplate",
]
