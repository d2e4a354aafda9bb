"""The pydantic models: the single source of truth for specs, tasks and nodes.

The names below are loaded on first use (PEP 562), each from its own module:
``from shoal.models import Service`` builds the Service models only, which is
what the CLI needs to check a spec, without the task and node models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULES = {
    "shoal.models.node": (
        "Availability",
        "Node",
        "NodeDescription",
        "NodeSpec",
        "NodeState",
        "NodeStatus",
        "RuntimeInfo",
    ),
    "shoal.models.service": (
        "API_VERSION",
        "Metadata",
        "Placement",
        "RestartPolicy",
        "Service",
        "ServiceSpec",
        "ServiceStatus",
        "TaskTemplate",
    ),
    "shoal.models.task": ("DesiredState", "Task", "TaskState", "TaskStatus"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
