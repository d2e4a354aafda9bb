"""Schedules (shoal.schedule): cron on daylight-saving days, @every, bad expressions."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from shoal.schedule import parse_schedule

LA = ZoneInfo("America/Los_Angeles")


def runs(expression: str, zone: str, start: datetime, count: int) -> list[datetime]:
    schedule = parse_schedule(expression, zone)
    found, moment = [], start
    for _ in range(count):
        moment = schedule.next_after(moment)
        found.append(moment)
    return found


def test_spring_forward_a_time_in_the_skipped_hour_runs_right_after_the_jump() -> None:
    # 2019-03-10: Los Angeles jumps from 02:00 to 03:00; 02:01 does not exist that day.
    found = runs("1 2 * * *", "America/Los_Angeles", datetime(2019, 3, 9, 12, tzinfo=LA), 3)
    assert [t.astimezone(LA).isoformat() for t in found] == [
        "2019-03-10T03:00:00-07:00",
        "2019-03-11T02:01:00-07:00",
        "2019-03-12T02:01:00-07:00",
    ]


def test_fall_back_a_time_in_the_repeated_hour_runs_once() -> None:
    # 2019-11-03: 01:00-02:00 happens twice in Los Angeles.
    found = runs("30 1 * * *", "America/Los_Angeles", datetime(2019, 11, 2, 12, tzinfo=LA), 2)
    assert [t.astimezone(LA).isoformat() for t in found] == [
        "2019-11-03T01:30:00-07:00",
        "2019-11-04T01:30:00-08:00",
    ]


def test_fall_back_a_wildcard_hour_runs_in_both_copies_of_the_hour() -> None:
    found = runs("0 * * * *", "America/Los_Angeles", datetime(2019, 11, 3, 0, 30, tzinfo=LA), 3)
    # Real time keeps going: 01:00 PDT, 01:00 PST, 02:00 PST are an hour apart each.
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(found)] == [
        3600,
        3600,
    ]


def test_every_runs_on_a_fixed_grid_and_latest_between_gives_one_catch_up() -> None:
    schedule = parse_schedule("@every 30s", "UTC")
    start = datetime(2026, 12, 1, 9, 0, 10, tzinfo=UTC)
    assert schedule.next_after(start) == datetime(2026, 12, 1, 9, 0, 30, tzinfo=UTC)
    # After an outage of ten minutes only the latest missed time is returned.
    later = datetime(2026, 12, 1, 9, 10, 12, tzinfo=UTC)
    assert schedule.latest_between(start, later) == datetime(2026, 12, 1, 9, 10, tzinfo=UTC)
    assert schedule.latest_between(later, later) is None


def test_cron_latest_between_after_a_day_down() -> None:
    schedule = parse_schedule("@hourly", "UTC")
    start = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    assert schedule.latest_between(start, datetime(2026, 12, 2, 9, 45, tzinfo=UTC)) == datetime(
        2026, 12, 2, 9, 0, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        pytest.param("* * *", "invalid cron expression", id="too-few-fields"),
        pytest.param("61 * * * *", "invalid cron expression", id="minute-out-of-range"),
        pytest.param("0 0 * * * *", "use 5 fields", id="six-fields"),
        pytest.param("@every", "needs a duration", id="every-without-duration"),
        pytest.param("@every 5x", "invalid duration", id="every-bad-duration"),
        pytest.param("@every 100ms", "at least 1s", id="every-too-short"),
        pytest.param("TZ=UTC 0 * * * *", "timeZone", id="zone-in-schedule"),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(expression: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_schedule(expression, "UTC")
