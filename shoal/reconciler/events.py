"""Events: what the control plane did and why, for ``shoal describe`` and the log.

Kept in memory on the manager in a bounded ring per object (like Kubernetes
events, they are a diagnostic aid, not state: they are not replicated and a
manager restart starts them afresh). Every event is also logged.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger("shoal.events")


@dataclass(frozen=True, slots=True)
class Event:
    time: datetime
    object: str  # "service/web", "node/n1", "task/abc123"
    reason: str  # CamelCase, e.g. "TaskCreated", "NodeDown"
    message: str
    warning: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "object": self.object,
            "reason": self.reason,
            "message": self.message,
            "type": "Warning" if self.warning else "Normal",
        }


class EventRecorder:
    """A bounded ring of recent events per object."""

    def __init__(self, per_object: int = 50) -> None:
        self._events: dict[str, deque[Event]] = defaultdict(lambda: deque(maxlen=per_object))

    def record(self, obj: str, reason: str, message: str, warning: bool = False) -> None:
        event = Event(datetime.now(UTC), obj, reason, message, warning)
        ring = self._events[obj]
        if ring and ring[-1].reason == reason and ring[-1].message == message:
            ring[-1] = event  # collapse repeats, keep the newest time
        else:
            ring.append(event)
        (log.warning if warning else log.info)(reason, object=obj, message=message)

    def for_object(self, obj: str) -> list[Event]:
        return list(self._events.get(obj, ()))

    def forget(self, obj: str) -> None:
        self._events.pop(obj, None)
