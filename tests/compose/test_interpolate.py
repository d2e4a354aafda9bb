"""Compose interpolation and the env-file format, as the Compose specification words them."""

from __future__ import annotations

import pytest

from shoal.compose.interpolate import InterpolationError, Interpolator, parse_env_file

VARIABLES = {"SET": "value", "EMPTY": "", "PORT": "8080"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("plain", "plain", id="no-dollar"),
        pytest.param("$SET and ${SET}", "value and value", id="both-forms"),
        pytest.param("${UNSET}", "", id="unset-is-blank"),
        pytest.param("${UNSET:-dflt}", "dflt", id="colon-dash-unset"),
        pytest.param("${EMPTY:-dflt}", "dflt", id="colon-dash-empty"),
        pytest.param("${EMPTY-dflt}", "", id="dash-empty-kept"),
        pytest.param("${UNSET-dflt}", "dflt", id="dash-unset"),
        pytest.param("${SET:+alt}", "alt", id="colon-plus-set"),
        pytest.param("${EMPTY:+alt}", "", id="colon-plus-empty"),
        pytest.param("${EMPTY+alt}", "alt", id="plus-empty"),
        pytest.param("$$SET costs $$5", "$SET costs $5", id="escaped-dollar"),
        pytest.param("${UNSET:-${PORT}}", "8080", id="nested-default"),
        pytest.param("host:${PORT}/x", "host:8080/x", id="inside-text"),
        pytest.param("${EMPTY?msg}", "", id="question-empty-is-fine"),
        pytest.param("a$", "a$", id="trailing-dollar"),
    ],
)
def test_interpolation(text: str, expected: str) -> None:
    assert Interpolator(VARIABLES)(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("${X:?X is required}", "X is required", id="colon-question-unset"),
        pytest.param("${EMPTY:?cannot be empty}", "cannot be empty", id="colon-question-empty"),
        pytest.param("${X?}", "required variable X is missing a value", id="no-message"),
        pytest.param("${X", "no closing '}'", id="unclosed"),
        pytest.param("${1X}", "expected a name", id="bad-name"),
        pytest.param("${X/a/b}", "after the name", id="bad-operator"),
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError, match=message):
        Interpolator(VARIABLES)(text)


def test_unset_variables_are_noted_once() -> None:
    interpolate = Interpolator(VARIABLES)
    interpolate("$A ${A} ${B:-x} $C")
    assert interpolate.unset == ["A", "C"]


def test_env_file_format() -> None:
    text = "\n".join(
        [
            "# a comment",
            "",
            "PLAIN=value  # trailing comment",
            "export EXPORTED=yes",
            'DOUBLE="two words\\nnext line with ${SET}"',
            "SINGLE='${SET} stays'",
            "UNQUOTED=${SET}-x",
            "FROM_SHELL",
            "NOT_IN_SHELL",
            "EMPTY=",
            "bad-name=1",
        ]
    )
    problems: list[tuple[int, str]] = []
    values = parse_env_file(
        text,
        Interpolator(VARIABLES),
        {"FROM_SHELL": "shell"},
        lambda line, message: problems.append((line, message)),
    )
    assert values == {
        "PLAIN": "value",
        "EXPORTED": "yes",
        "DOUBLE": "two words\nnext line with value",
        "SINGLE": "${SET} stays",
        "UNQUOTED": "value-x",
        "FROM_SHELL": "shell",
        "EMPTY": "",
    }
    assert problems == [(11, "invalid variable name 'bad-name' (expected NAME=VALUE)")]
