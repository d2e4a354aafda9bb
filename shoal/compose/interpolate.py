"""Compose's variable interpolation and its ``.env`` / ``env_file`` format.

Interpolation follows the Compose specification: ``$V`` and ``${V}`` are the
variable's value (a blank string, and a note, when it is not set);
``${V:-default}`` uses the default when V is unset or empty, ``${V-default}``
only when it is unset; ``${V:?message}`` refuses the file when V is unset or
empty, ``${V?message}`` only when it is unset; ``${V:+other}`` / ``${V+other}``
give ``other`` when V is set (and not empty); ``$$`` is a literal ``$``.
Defaults and messages may hold interpolations themselves (``${A:-${B}}``).

Env files hold ``KEY=VALUE`` lines (``export`` in front is allowed, ``#``
starts a comment line, and a ``#`` after a blank ends an unquoted value);
a value in double quotes knows ``\\n``, ``\\t``, ``\\"`` and ``\\\\`` and is
interpolated, one in single quotes is taken as written, an unquoted one is
interpolated and stripped. A line with a key and no ``=`` takes the variable
from the deploying environment, and is left out when it is not set there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")
# ``\$`` stays a literal dollar: it becomes ``$$`` before the value is interpolated.
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$$"}


class InterpolationError(ValueError):
    """A ``${V:?message}`` whose variable is missing, or a malformed ``${...}``."""


@dataclass
class Interpolator:
    """Interpolates strings from one set of variables, noting the unset ones it blanked."""

    variables: Mapping[str, str]
    unset: list[str] = field(default_factory=list)

    def __call__(self, text: str) -> str:
        if "$" not in text:
            return text
        out: list[str] = []
        index = 0
        while index < len(text):
            char = text[index]
            if char != "$" or index + 1 >= len(text):
                out.append(char)
                index += 1
                continue
            following = text[index + 1]
            if following == "$":
                out.append("$")
                index += 2
            elif following == "{":
                end = _closing_brace(text, index + 2)
                out.append(self._braced(text[index + 2 : end]))
                index = end + 1
            elif (match := NAME.match(text, index + 1)) is not None:
                out.append(self._value(match.group(0)))
                index = match.end()
            else:
                out.append(char)
                index += 1
        return "".join(out)

    def _value(self, name: str) -> str:
        value = self.variables.get(name)
        if value is None:
            if name not in self.unset:
                self.unset.append(name)
            return ""
        return value

    def _braced(self, inner: str) -> str:
        match = NAME.match(inner)
        if match is None:
            raise InterpolationError(f"invalid interpolation '${{{inner}}}': expected a name")
        name = match.group(0)
        rest = inner[match.end() :]
        if not rest:
            return self._value(name)
        operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
        if operator is None:
            raise InterpolationError(
                f"invalid interpolation '${{{inner}}}': after the name, expected one of "
                ":- - :? ? :+ +"
            )
        argument = rest[len(operator) :]
        value = self.variables.get(name)
        missing = value is None or (operator.startswith(":") and value == "")
        if operator in (":-", "-"):
            return self(argument) if missing else str(value)
        if operator in (":+", "+"):
            return "" if missing else self(argument)
        if missing:
            message = self(argument) or f"required variable {name} is missing a value"
            raise InterpolationError(message)
        return str(value)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    index = start
    while index < len(text):
        if text.startswith("${", index):
            depth += 1
            index += 2
            continue
        if text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise InterpolationError(f"invalid interpolation {text[start - 2 :]!r}: no closing '}}'")


def parse_env_file(
    text: str,
    lookup: Callable[[str], str],
    environ: Mapping[str, str],
    report: Callable[[int, str], None],
    values: dict[str, str] | None = None,
) -> dict[str, str]:
    """The variables of an env file; ``report(line, message)`` is told each problem.

    ``lookup`` interpolates a value; ``environ`` supplies keys written without ``=``.
    ``values`` is filled line by line (and returned), so a ``lookup`` that reads
    it sees the lines above the one it interpolates.
    """
    values = {} if values is None else values
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not NAME.fullmatch(key):
            report(number, f"invalid variable name {key!r} (expected NAME=VALUE)")
            continue
        if not sep:
            if key in environ:
                values[key] = environ[key]
            continue
        try:
            values[key] = _env_value(value.lstrip(), lookup)
        except InterpolationError as exc:
            report(number, f"{key}: {exc}")
    return values


def _env_value(value: str, lookup: Callable[[str], str]) -> str:
    if value.startswith("'"):
        end = value.find("'", 1)
        if end < 0:
            raise InterpolationError("unterminated single quote")
        return value[1:end]
    if value.startswith('"'):
        out: list[str] = []
        index = 1
        while index < len(value):
            char = value[index]
            if char == "\\" and index + 1 < len(value):
                escaped = value[index + 1]
                out.append(_ESCAPES.get(escaped, "\\" + escaped))
                index += 2
                continue
            if char == '"':
                return lookup("".join(out))
            out.append(char)
            index += 1
        raise InterpolationError("unterminated double quote")
    comment = re.search(r"\s#", value)
    if comment is not None:
        value = value[: comment.start()]
    return lookup(value.rstrip())
