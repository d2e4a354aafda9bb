"""Wall-clock time for the controllers, passed in so tests can set it.

Controllers compare times written into objects (a task's ``created_at``, the
timestamp an agent put on its status) with "now": restart delays, restart
windows, how long a task ran. They take a ``Clock`` instead of calling
``datetime.now`` themselves, so a test drives them with a ``ManualClock`` and
checks a five-minute back-off without waiting five minutes. Timers inside the
event loop (``Requeue(after)``, back-off of the work queue) use the loop's own
clock, which tests fast-forward with ``looptime``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to (``advance``): for tests and simulations."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now


SYSTEM_CLOCK = SystemClock()
