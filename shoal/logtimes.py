"""Times of log lines: RFC 3339 text on the wire, ``--since`` parsing, engine prefixes.

A log line's time is when it was written, as near the source as the runtime
allows (see each runtime's ``timed_logs``). On the wire it is RFC 3339 in UTC
with microseconds (``2026-12-01T16:30:00.123456Z``). Plain functions with no
dependency, so the command line can parse ``--since`` without loading models.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shoal.units import parse_duration


def format_time(at: datetime) -> str:
    """``at`` as RFC 3339 in UTC with microseconds."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (``Z`` or an offset; digits past microseconds are dropped)."""
    value = text.strip()
    date, sep, rest = value.partition(".")
    if sep:  # engines give nanoseconds: keep six digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{date}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time") from None
    if "T" not in value.upper() or at.tzinfo is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time (it needs a date, time and zone)")
    return at


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``10m`` (that long before ``now``) or an RFC 3339 time."""
    try:
        return (now or datetime.now(UTC)) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: give a duration like '10m', '1h30m' "
            "or an RFC 3339 time like '2026-12-01T16:30:00Z'"
        ) from None


def split_stamp(line: str) -> tuple[datetime | None, str]:
    """``(time, rest)`` of an engine's ``TIMESTAMP SP line``; ``(None, line)`` without one."""
    stamp, sep, rest = line.partition(" ")
    if not sep and stamp.endswith("Z"):
        rest = ""  # an empty line: the engine sends only the stamp
    elif not sep:
        return None, line
    try:
        return parse_time(stamp), rest
    except ValueError:
        return None, line
