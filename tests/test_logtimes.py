"""Times of log lines (``shoal.logtimes``): ``--since``, RFC 3339 on the wire, and the
``TIMESTAMP SP line`` prefix Docker and Podman put on each line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shoal.logtimes import format_time, parse_since, parse_time, split_stamp

NOW = datetime(2026, 12, 1, 16, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("10m", NOW - timedelta(minutes=10), id="minutes"),
        pytest.param("1h30m", NOW - timedelta(minutes=90), id="compound"),
        pytest.param("1s", NOW - timedelta(seconds=1), id="seconds"),
        pytest.param("2026-12-01T16:00:00Z", datetime(2026, 12, 1, 16, tzinfo=UTC), id="utc"),
        pytest.param(
            "2026-12-01T17:00:00+01:00",
            datetime(2026, 12, 1, 16, tzinfo=UTC),
            id="offset",
        ),
    ],
)
def test_since_is_a_duration_back_from_now_or_a_time(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("yesterday", id="word"),
        pytest.param("-5m", id="negative"),
        pytest.param("2026-12-01", id="date-only"),
        pytest.param("2026-12-01T16:00:00", id="no-zone"),
        pytest.param("", id="empty"),
    ],
)
def test_a_bad_since_is_refused_with_the_forms_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration like '10m'.*RFC 3339"):
        parse_since(text, NOW)


def test_times_go_on_the_wire_in_utc_with_microseconds_and_come_back() -> None:
    at = datetime(2026, 12, 1, 17, 30, 1, 250, tzinfo=timezone(timedelta(hours=1)))
    text = format_time(at)
    assert text == "2026-12-01T16:30:01.000250Z"
    assert parse_time(text) == at


def test_an_engine_stamp_with_nanoseconds_is_split_from_the_line() -> None:
    at, line = split_stamp("2026-12-01T16:30:00.123456789Z hello  world ")
    assert at == datetime(2026, 12, 1, 16, 30, 0, 123456, tzinfo=UTC)
    assert line == "hello  world "
    assert split_stamp("2026-12-01T16:30:00.5Z") == (
        datetime(2026, 12, 1, 16, 30, 0, 500000, tzinfo=UTC),
        "",
    )


def test_a_line_without_a_stamp_is_kept_whole() -> None:
    assert split_stamp("hello world") == (None, "hello world")
    assert split_stamp("") == (None, "")
