"""Durations and sizes as pydantic types (the parsing lives in ``shoal.units``).

Durations are held as float seconds and sizes as int bytes; both accept plain
numbers too. They serialize back to the human form so that ``-o yaml`` output
can be applied again unchanged.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

from shoal.units import format_duration, format_size, parse_duration, parse_size

__all__ = ["Duration", "Size", "format_duration", "format_size", "parse_duration", "parse_size"]

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str, when_used="json"),
]
