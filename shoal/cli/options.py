"""What verb modules share when they declare their command lines.

A verb module (see ``shoal.cli.main``) gets the parser of its verb and fills it
in with these: ``command`` binds a parser to the function that runs it,
``subcommands`` opens a group of sub-verbs (``node ls``, ``rollout status``),
``server_option`` and ``output_option`` are the options every client command
spells the same way, and the argument types turn text into values with an
argparse error (exit code 2) instead of a traceback.

This module imports only the standard library, ``shoal.errors`` and ``shoal.units``: it is on
the path of every command, ``shoal --help`` included.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from shoal.errors import ShoalError
from shoal.units import parse_duration

TYPE_CHECKING = False  # not from typing: see shoal.cli.main
if TYPE_CHECKING:
    from typing import Any

Command = Callable[[argparse.Namespace], int]

FORMATS = ("table", "wide", "yaml", "json")
DEFAULT_TIMEOUT = 60.0


class UsageError(ShoalError):
    """The command line is wrong in a way argparse cannot see; exit code 2."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs (examples).

    argparse makes a formatter for every option it declares, and without a width
    each one asks ``shutil`` for the terminal's (importing it, with its archive
    modules: a few ms of every command); this asks the way ``shutil`` does.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class Parser(argparse.ArgumentParser):
    """A parser that takes a verb's options before, between or after its positionals.

    argparse alone stops filling positionals at the first option, so
    ``get services --server X web`` left ``web`` over (exit 2). A parser whose
    positionals are plain words parses intermixed: its options first, then the
    words that are left, in order. A parser of sub-verbs (``node``) hands the
    words on as argparse does, and the sub-verb's parser, of this class too,
    parses them intermixed. With ``tail`` set (``exec``: see ``tail_after_dashes``),
    everything after the first ``--`` goes to that argument untouched, options
    and further ``--`` included. Shell completion (argcomplete) follows the plain
    argparse walk, which it is written against.
    """

    tail: str | None = None
    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if (
            self._intermixing
            or "_ARGCOMPLETE" in os.environ
            or any(isinstance(a, argparse._SubParsersAction) for a in self._actions)
        ):
            return super().parse_known_args(args, namespace)
        words = list(args) if args is not None else None
        tail: list[str] | None = None
        if self.tail is not None and words is not None:
            if "--" in words:
                at = words.index("--")
                words, tail = words[:at], words[at + 1 :]
            elif (start := self._tail_start(words)) is not None:
                words, tail = words[:start], words[start:]  # ``exec TASK ls -la``, as docker
        self._intermixing = True  # parse_known_intermixed_args calls back here
        try:
            parsed, extras = self.parse_known_intermixed_args(words, namespace)
        finally:
            self._intermixing = False
        if self.tail is not None and tail is not None:
            setattr(parsed, self.tail, [*(getattr(parsed, self.tail, None) or []), *tail])
        return parsed, extras

    def _tail_start(self, words: list[str]) -> int | None:
        """Without ``--``: where the tail starts, the first word after the positionals
        before it (options of this verb and their values skipped); None if none is left."""
        wanted = sum(1 for a in self._actions if not a.option_strings and a.dest != self.tail)
        seen = 0
        index = 0
        while index < len(words):
            word = words[index]
            action = self._option_string_actions.get(word)
            if action is not None:
                index += 1 if action.nargs == 0 else 2
                continue
            if (
                word.startswith("-")
                and "=" in word
                and word.split("=", 1)[0] in (self._option_string_actions)
            ):
                index += 1
                continue
            if seen == wanted:
                return index
            seen += 1
            index += 1
        return None


def command(parser: argparse.ArgumentParser, func: Command) -> argparse.ArgumentParser:
    """Make ``func(args) -> int`` run when this parser's command is given."""
    parser.set_defaults(func=func, command_parser=parser)
    return parser


def subcommands(parser: argparse.ArgumentParser, dest: str) -> Any:
    """A group of sub-verbs under ``parser``; add them with ``add_subcommand``.

    Without a sub-verb, ``shoal VERB`` prints this parser's help (exit code 2).
    """
    parser.set_defaults(command_parser=parser)
    return parser.add_subparsers(dest=dest, metavar="COMMAND")


def add_subcommand(
    group: Any, name: str, func: Command, summary: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """One sub-verb whose ``func(args) -> int`` runs it; ``summary`` is its help line."""
    kwargs.setdefault("description", summary)
    parser: argparse.ArgumentParser = group.add_parser(
        name, help=summary, formatter_class=Formatter, **kwargs
    )
    return command(parser, func)


def named_subcommand(
    group: Any, name: str, func: Command, summary: str, names: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """A sub-verb about one object on a manager (``sync now NAME``): ``add_subcommand``
    with ``--server``/``--context`` and a ``NAME`` that completes with ``names``."""
    parser = add_subcommand(group, name, func, summary, **kwargs)
    server_option(parser)
    completes(parser.add_argument("name", metavar="NAME"), names)
    return parser


def tail_after_dashes(parser: argparse.ArgumentParser, dest: str, help: str) -> None:
    """The words after ``--`` are ``dest``'s, untouched (``exec TASK -- COMMAND...``)."""
    parser.add_argument(dest, metavar="-- COMMAND", nargs="*", help=help)
    if isinstance(parser, Parser):
        parser.tail = dest


def server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="manager address, or several comma-separated, tried in order (default: "
        "$SHOAL_SERVER, else the context's or the local `shoal up`'s managers)",
    )
    context = parser.add_argument(
        "--context",
        metavar="NAME",
        help="use this context's credentials and managers (see `shoal context ls`)",
    )
    completes(context, "contexts")


def output_option(
    parser: argparse.ArgumentParser,
    choices: tuple[str, ...] = FORMATS,
    help: str = "table (default), wide (more columns), yaml or json",
) -> None:
    parser.add_argument("-o", "--output", choices=choices, default="table", help=help)


class Names:
    """Completes an argument with the names of one kind of object (``shoal.cli.completion``).

    ``kind``: services, nodes, tasks, syncs, secrets, configs (from the live
    cluster) or contexts (from the config file), or a function of the
    arguments parsed so far that says which (``get RESOURCE NAME``); ``suffix``
    is appended to each name (``=`` for ``scale NAME=REPLICAS``).
    """

    def __init__(
        self, kind: str | Callable[[argparse.Namespace], str | None], suffix: str = ""
    ) -> None:
        self.kind = kind
        self.suffix = suffix

    def __call__(self, prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
        from shoal.cli.completion import live_names

        kind = self.kind if isinstance(self.kind, str) else self.kind(parsed_args)
        if kind is None:
            return []
        return [name + self.suffix for name in live_names(kind, prefix, parsed_args)]


def completes(
    action: argparse.Action,
    kind: str | Callable[[argparse.Namespace], str | None],
    suffix: str = "",
) -> argparse.Action:
    """Have shell completion offer ``kind``'s names for this argument (see ``Names``)."""
    action.completer = Names(kind, suffix)  # type: ignore[attr-defined]
    return action


def wait_options(parser: argparse.ArgumentParser, until: str) -> None:
    """``--wait/--no-wait`` (on by default) and ``--timeout``: ``until`` says what is awaited."""
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"wait {until} (default; --no-wait returns at once)",
    )
    parser.add_argument(
        "--timeout",
        type=duration,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help=f"how long --wait waits, e.g. 30s, 2m (default {DEFAULT_TIMEOUT:g}s)",
    )


def selector_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``-l/--selector KEY=VALUE,...``: kubectl's label selectors (``shoal.selectors``)."""
    parser.add_argument(
        "-l",
        "--selector",
        type=selector,
        metavar="SELECTOR",
        help=f"only {what} whose labels match: k=v, k!=v, k (has it), !k (has not); "
        "comma means and, e.g. -l app=web,tier!=db",
    )


# ------------------------------------------------------------ argument types


def duration(text: str) -> float:
    """``500ms``, ``5s``, ``1m30s``, ``2h`` as seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def since_time(text: str) -> str:
    """``--since``: a duration back from now or an RFC 3339 time, checked here and
    sent as given (the manager measures the duration against its own clock)."""
    from shoal.logtimes import parse_since

    try:
        parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def selector(text: str) -> str:
    """A label selector, checked here and sent as its canonical text."""
    from shoal.selectors import parse_selector

    try:
        return str(parse_selector(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def whole_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def positive_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)
