"""Label selectors, kubectl's equality-based ones: ``-l app=web,tier!=db,canary``.

A selector is a comma-separated list of requirements, all of which must hold
(comma means *and*):

    key=value   key==value   the label is there with this value
    key!=value               the label is absent or has another value
    key                      the label is there, whatever its value
    !key                     the label is absent

Keys are label keys as specs allow them (letters, digits, ``._/-``, starting
and ending with a letter or digit); values may be empty (``key=``) and hold no
commas or spaces. The empty selector matches everything.

The client parses a selector before it connects (a bad one is a usage error);
the manager parses it again and refuses a bad one with ``INVALID_ARGUMENT``
naming the ``selector`` field. This module imports only the standard library:
it is on the path of the CLI and of the manager.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The label keys of specs (shoal.models.service.LABEL_KEY).
_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^[A-Za-z0-9._/:@+-]*$")
_OPERATORS = ("==", "!=", "=")


class Requirement:
    """One ``key OP value`` of a selector; ``op`` is ``=``, ``!=``, ``exists`` or ``!exists``."""

    __slots__ = ("key", "op", "value")

    def __init__(self, key: str, op: str, value: str = "") -> None:
        self.key = key
        self.op = op
        self.value = value

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        return f"{self.key}{self.op}{self.value}"


class Selector:
    """Requirements that must all hold; ``str()`` gives the canonical text."""

    __slots__ = ("requirements",)

    def __init__(self, requirements: tuple[Requirement, ...] = ()) -> None:
        self.requirements = requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def parse_selector(text: str) -> Selector:
    """``text`` as a Selector; ``ValueError`` saying what is wrong and where."""
    text = text.strip()
    if not text:
        return Selector()
    return Selector(tuple(_requirement(part.strip(), text) for part in text.split(",")))


def _requirement(part: str, whole: str) -> Requirement:
    def bad(why: str) -> ValueError:
        return ValueError(f"invalid selector {whole!r}: {why}")

    if not part:
        raise bad("an empty requirement (two commas, or a comma at an end)")
    for op in _OPERATORS:
        key, found, value = part.partition(op)
        if found:
            key, value = key.strip(), value.strip()
            if not _VALUE.match(value):
                raise bad(f"{value!r} is not a label value")
            op = "=" if op == "==" else op
            break
    else:
        key, op, value = (
            part.lstrip("!").strip(),
            "!exists" if part.startswith("!") else "exists",
            "",
        )
    if not _KEY.match(key):
        hint = " (kubectl's set-based `in (...)` is not supported)" if " " in key else ""
        raise bad(f"{key!r} is not a label key{hint}; use key=value, key!=value, key or !key")
    return Requirement(key, op, value)
