"""Durations (``500ms``, ``5s``, ``1m30s``) and sizes (``256Mi``, ``1G``) as text and numbers.

Durations are float seconds and sizes int bytes; both accept plain numbers too,
and format back to the human form. Plain functions with no dependency, so the
command line can parse ``--timeout 30s`` without loading the models;
``shoal.models.units`` makes pydantic types of them.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing costs the CLI a few ms it does not need at run time
if TYPE_CHECKING:
    from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|k|B)?$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def parse_duration(value: Any) -> float:
    """``"1m30s"`` → 90.0. Plain numbers are seconds. Negative values are refused."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '500ms', '5s', '1m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("a duration is a number of seconds or a string like '500ms', '5s', '1m'")
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r}: use forms like '500ms', '5s', '1m30s', '2h'")
    return total


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    if seconds < 1 or seconds != int(seconds):
        millis = round(seconds * 1000)
        if millis % 1000 == 0:
            return f"{millis // 1000}s"
        return f"{millis}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts)


def parse_size(value: Any) -> int:
    """``"256Mi"`` → 268435456. Plain numbers are bytes. Negative values are refused."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '256Mi', '1G'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("a size is a number of bytes or a string like '256Mi', '1G'")
    match = _SIZE.match(value.strip())
    if not match:
        raise ValueError(f"invalid size {value!r}: use forms like '512Ki', '256Mi', '2Gi', '1G'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def format_size(size: int) -> str:
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        factor = _SIZE_UNITS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
