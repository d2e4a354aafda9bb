"""Options go anywhere on a command line, as with kubectl and docker.

``shoal get services web --server X``, ``shoal get services --server X web`` and
``shoal get --server X services web`` are one command. These walk every verb and
sub-verb the parser declares (so a new verb is covered without a new case), put
an option before, between and after its positional arguments, and check that
each spelling runs the same command with the same arguments. For ``exec``,
what follows ``--`` is the command's own, options included.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from shoal.cli.main import VERBS, build_parser

SERVER = ["--server", "127.0.0.1:9"]


def parse(words: list[str]) -> dict[str, object]:
    args = build_parser(words).parse_args(words)
    return {k: v for k, v in vars(args).items() if k not in ("command_parser", "func")}


def _children(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action._name_parser_map.items():
                if name in {a.dest for a in action._choices_actions}:
                    yield name, child


def _leaves(
    parser: argparse.ArgumentParser, path: list[str]
) -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    children = list(_children(parser))
    if not children:
        yield path, parser
    for name, child in children:
        yield from _leaves(child, [*path, name])


def _sample(action: argparse.Action) -> list[str]:
    """Words a user could give for a positional argument."""
    if action.choices:
        return [str(next(iter(action.choices)))]
    words = ["web=3", "api=2"] if "=" in str(action.metavar) else ["web", "api"]
    return words if action.nargs in ("+", "*") else words[:1]


def every_command() -> Iterator[object]:
    for verb in VERBS:
        top = build_parser([verb.name])
        (group,) = (a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        for path, leaf in _leaves(group._name_parser_map[verb.name], [verb.name]):
            positionals = [
                a
                for a in leaf._actions
                if not a.option_strings
                and a.nargs != argparse.REMAINDER
                and a.dest != getattr(leaf, "tail", None)  # exec's command: its own words
            ]
            if positionals and "--server" in leaf._option_string_actions:
                # Options the verb cannot go without come first, in every spelling.
                needed = [
                    w
                    for a in leaf._actions
                    if a.option_strings and a.required
                    for w in (a.option_strings[-1], *_sample(a)[:1])
                ]
                words = [w for a in positionals for w in _sample(a)]
                yield pytest.param([*path, *needed], words, id=" ".join(path))


COMMANDS = list(every_command())


def test_the_walk_finds_the_verbs_users_type() -> None:
    ids = {p.id for p in COMMANDS}  # type: ignore[attr-defined]
    assert {"get", "describe", "delete", "scale", "logs", "rollout status", "node update"} <= ids


@pytest.mark.parametrize(("path", "words"), COMMANDS)
def test_an_option_goes_before_between_or_after_positionals(
    path: list[str], words: list[str]
) -> None:
    first = parse([*path, *SERVER, *words])
    assert first["server"] == SERVER[1]
    for at in range(1, len(words) + 1):
        assert parse([*path, *words[:at], *SERVER, *words[at:]]) == first


def test_get_with_the_server_between_kind_and_name() -> None:
    args = parse(["get", "services", "--server", "m:7420", "web", "-o", "json"])
    assert (args["resource"], args["name"], args["server"], args["output"]) == (
        "services",
        "web",
        "m:7420",
        "json",
    )


@pytest.mark.parametrize(
    "words",
    [
        pytest.param(["exec", "--server", "m:1", "web.1", "--", "ls", "-l"], id="before"),
        pytest.param(["exec", "web.1", "--server", "m:1", "--", "ls", "-l"], id="after-task"),
    ],
)
def test_exec_options_anywhere_before_the_command(words: list[str]) -> None:
    args = parse(words)
    assert (args["task"], args["server"], args["argv"]) == ("web.1", "m:1", ["ls", "-l"])


def test_exec_leaves_what_follows_the_double_dash_to_the_command() -> None:
    args = parse(["exec", "web.1", "--", "sh", "-c", "x", "--server", "y", "--", "z"])
    assert args["server"] is None
    assert args["argv"] == ["sh", "-c", "x", "--server", "y", "--", "z"]


@pytest.mark.parametrize(
    "words",
    [
        pytest.param(["exec", "web.1", "ls", "-l", "--server", "x"], id="no-dashes"),
        pytest.param(["exec", "--server", "m:1", "web.1", "ls", "-l", "--server", "x"], id="opt"),
        pytest.param(["exec", "--server=m:1", "web.1", "ls", "-l", "--server", "x"], id="opt="),
    ],
)
def test_exec_without_dashes_gives_the_command_what_follows_the_task(words: list[str]) -> None:
    # As ``docker exec CONTAINER ls -l``: the command starts after the task, and its
    # own options stay its own.
    args = parse(words)
    assert args["task"] == "web.1"
    assert args["argv"] == ["ls", "-l", "--server", "x"]


def test_an_unknown_option_after_a_positional_is_still_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        parse(["get", "services", "web", "--no-such-option"])
    assert exc.value.code == 2
