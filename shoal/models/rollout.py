"""How a service moves from one template to the next: update and rollback settings,
the persisted state of the rollout, and kept revisions.

``spec.update`` and ``spec.rollback`` are what users write (Swarm's defaults
where Swarm has the field); ``status.update`` and ``status.revisions`` are
written by the manager only and kept in the store with the service, so a new
leader resumes a rollout where the last one left it. The state machine itself
lives in ``shoal.reconciler.rollout``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from shoal.models.base import Model
from shoal.models.units import Duration

DEFAULT_MONITOR = 5.0
DEFAULT_PROGRESS_DEADLINE = 600.0


class RollbackConfig(Model):
    """How a rollback proceeds. A rollback that fails pauses or continues; never rolls back."""

    # Slots replaced at once; 0 = every slot at once.
    parallelism: int = Field(default=1, ge=0)
    delay: Duration = 0.0
    order: Literal["stop-first", "start-first"] = "stop-first"
    failure_action: Literal["pause", "continue"] = "pause"
    monitor: Duration = DEFAULT_MONITOR
    max_failure_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    progress_deadline: Duration | None = DEFAULT_PROGRESS_DEADLINE

    @field_validator("failure_action", mode="before")
    @classmethod
    def _no_rollback_of_a_rollback(cls, value: object) -> object:
        if value == "rollback":
            raise ValueError(
                "a rollback is never rolled back: use failureAction pause or continue here"
            )
        return value

    @field_validator("progress_deadline")
    @classmethod
    def _positive_deadline(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("progressDeadline must be more than 0s (or null for no deadline)")
        return value


class UpdateConfig(Model):
    """How an update proceeds: ``spec.update``."""

    parallelism: int = Field(default=1, ge=0)
    delay: Duration = 0.0
    order: Literal["stop-first", "start-first"] = "stop-first"
    failure_action: Literal["pause", "continue", "rollback"] = "pause"
    monitor: Duration = DEFAULT_MONITOR
    max_failure_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    # A batch in which no new task becomes healthy for this long counts as failed.
    progress_deadline: Duration | None = DEFAULT_PROGRESS_DEADLINE
    # New tasks started beside the old ones before anything is replaced.
    canary: int = Field(default=0, ge=0)
    auto_promote: bool = False

    @field_validator("progress_deadline")
    @classmethod
    def _positive_deadline(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("progressDeadline must be more than 0s (or null for no deadline)")
        return value

    @field_validator("auto_promote")
    @classmethod
    def _promote_needs_canary(cls, value: bool, info: ValidationInfo) -> bool:
        if value and not info.data.get("canary"):
            raise ValueError("autoPromote needs canary of at least 1")
        return value


class UpdateState(StrEnum):
    UPDATING = "updating"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_PAUSED = "rollback_paused"
    ROLLBACK_COMPLETED = "rollback_completed"
    AWAITING_PROMOTION = "awaiting_promotion"

    @property
    def final(self) -> bool:
        """Nothing more happens until a user acts (apply, resume, undo, promote)."""
        return self in _FINAL

    @property
    def rolling_back(self) -> bool:
        return self in (UpdateState.ROLLBACK_STARTED, UpdateState.ROLLBACK_PAUSED)

    @property
    def paused(self) -> bool:
        return self in (UpdateState.PAUSED, UpdateState.ROLLBACK_PAUSED)


_FINAL = {
    UpdateState.PAUSED,
    UpdateState.COMPLETED,
    UpdateState.ROLLBACK_PAUSED,
    UpdateState.ROLLBACK_COMPLETED,
}


class UpdateStatus(Model):
    """``status.update``: where the current rollout is."""

    state: UpdateState
    # The revision being rolled out (or back to), and the one it replaces.
    revision: int
    previous_revision: int | None = None
    message: str = ""
    started_at: datetime
    completed_at: datetime | None = None
    updated: int = 0
    total: int = 0
    # Tasks of this rollout counted as failed (each once), for maxFailureRatio.
    failed_tasks: list[str] = Field(default_factory=list)
    # The last time a slot finished its update (or the start): drives progressDeadline.
    progress_at: datetime | None = None
    # The last time the window of in-flight slots emptied: drives ``delay``.
    batch_done_at: datetime | None = None
    # The update was paused by a user (``shoal rollout pause``), not by a failure.
    paused_by_user: bool = False
    # Canaries promoted (by ``rollout promote`` or autoPromote).
    promoted: bool = False
    # Set by ``rollout resume``: tasks that ended before this count for nothing.
    failures_since: datetime | None = None
    # ``rollout restart``: tasks created before this are replaced too.
    restarted_at: datetime | None = None
