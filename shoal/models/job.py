"""Jobs: services whose tasks run to completion (``mode: replicated-job | global-job``).

``spec.job`` says how a run proceeds (completions, concurrency, retries,
deadlines) and, with ``schedule``, when runs start. ``status.job`` is written
by the manager only and kept in the store with the service: the numbered runs
(the current and recent ones) and the last schedule time, so that a new
leader neither repeats nor loses a run. The controller is
``shoal.reconciler.jobs``; schedules are read by ``shoal.schedule``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationInfo, field_validator

from shoal.models.base import Model
from shoal.models.units import Duration
from shoal.schedule import parse_schedule


class JobSpec(Model):
    """``spec.job``."""

    # replicated-job: successful tasks a run needs (one slot each).
    completions: int = Field(default=1, ge=1, le=100_000)
    # At most this many tasks of a run at once; default: completions (all at once).
    max_concurrent: int | None = Field(default=None, ge=1, le=100_000)
    # Failed tasks a run tolerates; one more and the run fails.
    backoff_limit: int = Field(default=6, ge=0)
    # A run not finished this long after it started fails.
    active_deadline: Duration | None = None
    # A finished run's tasks are deleted this long after it finished.
    ttl_after_finished: Duration | None = None
    # Cron (5 fields, @hourly, ...) or "@every 30s"; None: one run per change.
    schedule: str | None = None
    time_zone: str = "UTC"
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Forbid"
    # A scheduled run that could not start this long after its time is skipped.
    starting_deadline: Duration | None = None
    successful_runs_history_limit: int = Field(default=3, ge=0, le=100)
    failed_runs_history_limit: int = Field(default=1, ge=0, le=100)
    suspend: bool = False

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name like 'UTC', 'Europe/Paris')"
            ) from None
        return value

    @field_validator("schedule")
    @classmethod
    def _valid_schedule(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            parse_schedule(value, "UTC")  # raises ValueError with the reason
        return value

    @field_validator("max_concurrent")
    @classmethod
    def _concurrent_within_completions(cls, value: int | None, info: ValidationInfo) -> int | None:
        completions = info.data.get("completions")
        if value is not None and isinstance(completions, int) and value > completions:
            raise ValueError(f"maxConcurrent ({value}) cannot exceed completions ({completions})")
        return value

    @property
    def concurrency(self) -> int:
        return self.max_concurrent or self.completions


RunState = Literal["active", "succeeded", "failed"]


class JobRun(Model):
    """One run of a job: its tasks carry ``SHOAL_JOB_RUN=<number>``."""

    number: int
    state: RunState = "active"
    started_at: datetime
    finished_at: datetime | None = None
    # The schedule time it was started for (None: started by a change or `shoal job run`).
    scheduled_for: datetime | None = None
    cause: str = ""
    succeeded: int = 0
    failed: int = 0
    active: int = 0
    reason: str = ""
    # Its tasks were deleted (ttlAfterFinished).
    cleaned: bool = False


class JobStatus(Model):
    """``status.job``."""

    runs: list[JobRun] = Field(default_factory=list)
    # The last schedule time that was dealt with (run, skipped or missed).
    last_schedule_time: datetime | None = None
    next_run_at: datetime | None = None
    # Scheduled runs not started: Forbid while a run was active, or past startingDeadline.
    skipped: int = 0
    # The template the last run was started for: a change starts a new run.
    run_generation: int = 0
    # ``shoal job run`` asked for a run at this time.
    requested_at: datetime | None = None

    @property
    def next_number(self) -> int:
        return max((r.number for r in self.runs), default=0) + 1

    def active_runs(self) -> list[JobRun]:
        return [r for r in self.runs if r.state == "active"]
