"""Tasks: one attempt at running one slot of a service (swarmkit's model).

A task's observed ``status.state`` only moves forward through ``TaskState``;
the manager owns ``desired_state`` and the agent owns ``status``. Restarting a
slot means a new task in the same slot; old tasks stay as bounded history.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Self

import orjson
from pydantic import Field, ValidationError

from shoal.models.base import Model
from shoal.models.service import TaskTemplate


class TaskState(StrEnum):
    NEW = "new"
    PENDING = "pending"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    SHUTDOWN = "shutdown"
    REJECTED = "rejected"
    ORPHANED = "orphaned"

    @property
    def order(self) -> int:
        return _ORDER[self]

    @property
    def terminal(self) -> bool:
        return self.order >= _ORDER[TaskState.COMPLETE]

    def can_move_to(self, other: TaskState) -> bool:
        """States only move forward; terminal states never change."""
        return not self.terminal and other.order > self.order


_ORDER = {state: index for index, state in enumerate(TaskState)}
# Terminal states share one rank: once terminal, a task never changes state again.
for _state in (TaskState.FAILED, TaskState.SHUTDOWN, TaskState.REJECTED, TaskState.ORPHANED):
    _ORDER[_state] = _ORDER[TaskState.COMPLETE]


class DesiredState(StrEnum):
    RUNNING = "running"
    SHUTDOWN = "shutdown"


class TaskPort(Model):
    """A port a task got on its node (``template.ports`` with the agent's choices filled in)."""

    name: str
    # Where the node listens: the published port, fixed or picked by the agent.
    port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    # Containers: the port inside the container; None for processes.
    target: int | None = Field(default=None, ge=1, le=65535)


class TaskStatus(Model):
    state: TaskState = TaskState.NEW
    timestamp: datetime | None = None
    message: str = ""
    error: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    started_at: datetime | None = None
    # Only for tasks with a healthcheck: starting until a probe passes, then healthy.
    health: Literal["starting", "healthy", "unhealthy"] | None = None
    # The task's ports on its node, reported with ``running`` (``template.ports``).
    ports: list[TaskPort] = Field(default_factory=list, exclude_if=lambda v: not v)
    # Containers: the container's own address on its engine network.
    container_address: str | None = None


# Templates decoded by ``Task.from_wire``, by their JSON (keys sorted): the tasks of
# one service carry the same template, and validating one costs ten times what the
# rest of a task does. Frozen models can be shared, which also keeps one copy in
# memory instead of one per task. Bounded: cleared when full.
_TEMPLATES: dict[bytes, TaskTemplate] = {}
TEMPLATE_CACHE = 512


def _shared_template(raw: dict[str, Any]) -> TaskTemplate:
    key = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    template = _TEMPLATES.get(key)
    if template is None:
        template = TaskTemplate.from_wire(raw)
        if len(_TEMPLATES) >= TEMPLATE_CACHE:
            _TEMPLATES.clear()
        _TEMPLATES[key] = template
    return template


class Task(Model):
    id: str
    service: str
    # Replicated services number their slots 1..N; global services use slot 0
    # and are keyed by node.
    slot: int
    node_id: str | None = None
    desired_state: DesiredState = DesiredState.RUNNING
    status: TaskStatus = Field(default_factory=TaskStatus)
    template: TaskTemplate
    service_generation: int = 0
    # How many tasks ran in this slot before this one, and how many of the
    # most recent ones failed in a row (drives restart back-off).
    attempt: int = 0
    failure_streak: int = 0
    # With ``restartPolicy.window``: when this slot was restarted within the
    # window, oldest first (this task's own creation last). Carried from task
    # to task, so counting restarts does not depend on how much history is kept.
    restarts: list[datetime] = Field(default_factory=list, exclude_if=lambda v: not v)
    created_at: datetime
    # Jobs: the run this task belongs to (``SHOAL_JOB_RUN``).
    job_run: int | None = None
    # Generic resource units the scheduler gave this task on its node, kind → units
    # (``SHOAL_RESOURCE_<KIND>``); set with ``node_id``.
    resources: dict[str, list[str]] = Field(default_factory=dict, exclude_if=lambda v: not v)

    @classmethod
    def from_wire(cls, data: dict[str, Any] | bytes | str) -> Self:
        """As ``Model.from_wire``; a template seen before is not validated again (see
        ``_TEMPLATES``). A task that does not decode is reported as the plain path
        reports it, with the full location of the bad field."""
        try:
            wire = orjson.loads(data) if isinstance(data, bytes | str) else data
            raw = wire.get("template") if isinstance(wire, dict) else None
            if isinstance(raw, dict):
                return super().from_wire({**wire, "template": _shared_template(raw)})
        except (ValidationError, orjson.JSONDecodeError):
            pass
        return super().from_wire(data)

    @property
    def slot_key(self) -> str:
        return f"node:{self.node_id}" if self.slot == 0 else str(self.slot)

    @property
    def name(self) -> str:
        suffix = self.node_id if self.slot == 0 else str(self.slot)
        return f"{self.service}.{suffix}.{self.id[:8]}"
