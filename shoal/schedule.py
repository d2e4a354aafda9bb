"""When scheduled jobs run: cron expressions and ``@every``, behind one small interface.

``parse_schedule(text, zone)`` returns a ``Schedule`` whose ``next_after(t)``
is the first run time strictly after ``t`` (aware datetimes, UTC out), and
``latest_between(a, b)`` the last run time in ``(a, b]``, which is what a
manager needs after an outage: at most one missed run is caught up.

Cron (``"*/5 * * * *"``, ``"@hourly"``, 5 fields, with ``L``, ``W``, ``#``) is
read by cronsim, which evaluates in the job's IANA time zone and follows
Debian cron on daylight-saving days: on the spring-forward day a time inside
the skipped hour runs right after the jump (``30 2 * * *`` in a zone that
jumps 02:00 → 03:00 runs at 03:00); on the fall-back day a time inside the
repeated hour runs once, not twice. ``@every 30s`` (any duration) runs every
interval from a fixed origin (the Unix epoch) so that the times are the same
on every manager and after every restart; time zones do not apply to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from shoal.units import parse_duration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The nicknames of Vixie/Debian cron, written out for cronsim.
NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# A schedule whose runs are further apart than this is refused as a mistake.
MAX_GAP = timedelta(days=400)


class Schedule(ABC):
    """A sequence of run times."""

    @abstractmethod
    def next_after(self, moment: datetime) -> datetime:
        """The first run time strictly after ``moment`` (UTC)."""

    def latest_between(self, after: datetime, until: datetime) -> datetime | None:
        """The last run time in ``(after, until]``, or None."""
        latest = None
        moment = self.next_after(after)
        while moment <= until:
            latest = moment
            moment = self.next_after(moment)
        return latest


class Every(Schedule):
    def __init__(self, interval: float) -> None:
        self.interval = timedelta(seconds=interval)

    def next_after(self, moment: datetime) -> datetime:
        steps = (moment - EPOCH) // self.interval + 1
        return EPOCH + steps * self.interval

    def latest_between(self, after: datetime, until: datetime) -> datetime | None:
        latest = EPOCH + ((until - EPOCH) // self.interval) * self.interval
        return latest if latest > after else None


class Cron(Schedule):
    def __init__(self, expression: str, zone: str) -> None:
        self.expression = expression
        self.zone = ZoneInfo(zone)

    def next_after(self, moment: datetime) -> datetime:
        for candidate in CronSim(self.expression, moment.astimezone(self.zone)):
            found: datetime = candidate.astimezone(UTC)
            if found > moment:
                return found
        raise AssertionError("cronsim ended an infinite sequence")


def parse_schedule(text: str, zone: str) -> Schedule:
    """Raises ``ValueError`` saying what is wrong with ``text``."""
    value = text.strip()
    if value.startswith("@every"):
        rest = value[len("@every") :].strip()
        if not rest:
            raise ValueError("'@every' needs a duration, e.g. '@every 30s'")
        interval = parse_duration(rest)
        if interval < 1:
            raise ValueError(f"'@every {rest}': the interval must be at least 1s")
        if timedelta(seconds=interval) > MAX_GAP:
            raise ValueError(f"'@every {rest}': the interval must be at most 400 days")
        return Every(interval)
    value = NICKNAMES.get(value.lower(), value)
    if value.startswith("@"):
        known = ", ".join([*NICKNAMES, "@every DURATION"])
        raise ValueError(f"unknown schedule {text!r} (known: {known}, or 5 cron fields)")
    if "TZ=" in value:
        raise ValueError("put the time zone in timeZone, not in the schedule")
    try:
        CronSim(value, datetime(2026, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(f"invalid cron expression {text!r}: {exc}") from None
    if len(value.split()) == 6:
        raise ValueError(
            f"invalid cron expression {text!r}: use 5 fields (minute hour day month weekday)"
        )
    return Cron(value, zone)
