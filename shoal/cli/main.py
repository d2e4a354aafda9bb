"""``shoal``: the command line, kubectl's habits applied to shoal.

This module owns the contract scripts rely on and the list of verbs; each verb
lives in a module of its own that is imported only when that verb is run, so
``shoal --help`` loads no verb at all and ``shoal get`` loads neither the
daemons (agent, manager, runtimes, engine SDKs) nor the models.

Adding a verb is one line in the table of ``VERBS``::

    diff        diff               show what apply would change, as a unified diff

where ``shoal.cli.diff.configure(parser)`` declares the verb's arguments on the
parser it is given and binds the function that runs it with
``shoal.cli.options.command(parser, run)``; ``run(args) -> int`` returns the
exit code. A verb with sub-verbs (``node ls``) opens them with
``options.subcommands`` and ``options.add_subcommand``. Keep the verb module's
own top-level imports light: import the client, the models or a daemon inside
the function that needs them, as the existing verb modules do.

Exit codes:

    0  success
    1  the command failed: the manager refused it, an object was not found, a
       spec has problems, the manager cannot be reached, a wait timed out
    2  the command line is wrong (unknown command or resource type, bad syntax)

Expected failures print ``error: ...`` on stderr (a spec's problems one
``FILE:LINE: field: message`` per line) and never a traceback; a traceback
means a bug in shoal. ``main`` returns the code instead of exiting, so tests
and the console script share one path.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import shoal
from shoal.cli.options import Formatter, Parser, UsageError
from shoal.errors import ShoalError, SpecError

# Not ``from typing import TYPE_CHECKING``: typing and dataclasses cost more to
# import than the whole of ``shoal --help`` is allowed to take on top of Python.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class Verb:
    """A top-level command: its name, its help line, and where it is declared.

    ``target`` is ``"module:function"``; the function receives the verb's
    parser and fills it in (see the module docstring).
    """

    __slots__ = ("aliases", "daemon", "name", "summary", "target")

    def __init__(
        self,
        name: str,
        summary: str,
        target: str,
        aliases: tuple[str, ...] = (),
        daemon: bool = False,
    ):
        self.name = name
        self.summary = summary
        self.target = target
        self.aliases = aliases
        # A long-running command: it ends with a normal interpreter shutdown.
        self.daemon = daemon

    def __repr__(self) -> str:
        return f"Verb({self.name!r}, {self.summary!r}, {self.target!r})"


# In the order ``shoal --help`` lists them: NAME, where it is declared (a module of
# ``shoal.cli``; ``commands:get`` is ``shoal.cli.commands:configure_get``, a bare module
# its ``configure``), and its help line.
# A ``*`` before the name marks a daemon (see ``Verb.daemon``).
_TABLE = """\
apply       commands:apply     create or update services from YAML specs
diff        diff               show what apply would change, as a unified diff
get         commands:get       list services, tasks or nodes
describe    commands:describe  show a service or node in detail, with its tasks and events
delete      commands:delete    delete services
scale       commands:scale     set the number of replicas of services
logs        commands:logs      print the output of a service's tasks
exec        exec               run a command inside a running container task
rollout     rollout            follow and steer the rollout of a service
job         jobs               run jobs and see their runs
node        commands:node      list and update nodes
sync        sync               keep the cluster in line with a directory or git repository
stack       stack              deploy Compose files as stacks
token       identity:token     print (or rotate) a join token
user        identity:user      add, list and remove users
context     identity:context   manage contexts: which cluster, as whom
version     version            print the client and server versions
ui          ui                 print a login link for the web UI
completion  completion         print the shell completion script (bash, zsh or fish)
cluster     cluster            the managers and the store
events      events             what the cluster did and why (-w to follow)
endpoints   endpoints          where a service's healthy tasks are (addresses, ports; -w to follow)
store       store              back up the store, restore it
secret      secrets:secret     manage secrets (encrypted at rest)
config      secrets:config     manage configs
*up         daemons:up         run a single-node cluster (manager + local agent, SQLite store)
*down       down               stop the tasks a stopped `shoal up` left running
*manager    daemons:manager    run a manager on a store
*agent      daemons:agent      run an agent that joins a manager
"""


def _verbs(table: str) -> tuple[Verb, ...]:
    verbs = []
    for row in table.splitlines():
        name, where, summary = row.split(maxsplit=2)
        module, _, function = where.partition(":")
        target = f"shoal.cli.{module}:configure{'_' + function if function else ''}"
        verbs.append(Verb(name.lstrip("*"), summary, target, daemon=name.startswith("*")))
    return tuple(verbs)


VERBS: tuple[Verb, ...] = _verbs(_TABLE)


def find_verb(name: str, verbs: Sequence[Verb] = VERBS) -> Verb | None:
    for verb in verbs:
        if name == verb.name or name in verb.aliases:
            return verb
    return None


def _configure(verb: Verb, parser: argparse.ArgumentParser) -> None:
    module_name, _, function = verb.target.partition(":")
    configure: Callable[[argparse.ArgumentParser], None] = getattr(
        importlib.import_module(module_name), function
    )
    configure(parser)


def _verb_in(argv: Sequence[str]) -> str | None:
    """The verb of a command line: its first word that is not an option.

    The top-level parser has only flags (``-h``, ``--version``), so the first
    word that does not start with ``-`` is the verb or a usage error.
    """
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word
    return None


def build_parser(
    argv: Sequence[str] = (), verbs: Sequence[Verb] = VERBS
) -> argparse.ArgumentParser:
    """The parser for ``argv``: only ``argv``'s verb when it names one, else every verb
    listed (``shoal --help``, a usage error) and none declared.

    Declaring a verb imports its module; the others stay unloaded, which is
    what keeps ``shoal --help`` and ``shoal version --client`` fast. Even an
    empty sub-parser costs: argparse looks up three translations for each (a few
    file lookups apiece), ~0.5 ms a verb, so a command builds its own verb's alone.
    """
    parser = Parser(
        prog="shoal",
        formatter_class=Formatter,
        description="shoal: run services across a cluster of machines.",
        epilog="exit codes: 0 success, 1 failure (refused, not found, unreachable,\n"
        "timed out), 2 wrong command line",
    )
    parser.add_argument("--version", action="version", version=f"shoal {shoal.__version__}")
    parser.set_defaults(command_parser=parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = _verb_in(argv)
    chosen = find_verb(wanted, verbs) if wanted is not None else None
    for verb in verbs if chosen is None else (chosen,):
        verb_parser = sub.add_parser(
            verb.name,
            aliases=list(verb.aliases),
            help=verb.summary,
            description=verb.summary,
            formatter_class=Formatter,
        )
        verb_parser.set_defaults(command_parser=verb_parser)
        if verb is chosen:
            _configure(verb, verb_parser)
    return parser


# --------------------------------------------------------------------- main


def _report(error: ShoalError) -> None:
    if isinstance(error, SpecError):
        count = len(error.problems)
        print(
            f"error: {count} problem{'s' if count != 1 else ''} in the spec; nothing was applied:",
            file=sys.stderr,
        )
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return
    print(f"error: {error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code is returned, never raised."""
    # gRPC's own INFO lines (a refused TLS handshake, say) would land in the middle of
    # our one-line errors and in the daemons' JSON logs; shoal says it in its own words.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    words = sys.argv[1:] if argv is None else argv
    if "_ARGCOMPLETE" in os.environ:  # the shell asks what Tab completes
        from shoal.cli import completion

        line = os.environ.get("COMP_LINE", "")
        point = int(os.environ.get("COMP_POINT", len(line)))
        completion.complete(build_parser(completion.words_of(line[:point])))
    parser = build_parser(words)
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    command_parser: argparse.ArgumentParser = args.command_parser
    if getattr(args, "func", None) is None:
        command_parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.func(args)
    except UsageError as exc:
        command_parser.print_usage(sys.stderr)
        print(f"{command_parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except ShoalError as exc:
        _report(exc)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`shoal get tasks | head`): not an error. Point
        # stdout at devnull so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


def run() -> None:
    """The ``shoal`` console script: ``main``, then exit without tearing the interpreter down.

    A client command has printed everything once ``main`` returns; what is left
    is Python's shutdown, which with gRPC loaded (its core, its threads, a few
    hundred modules to collect) costs more than the command's own work here.
    Output is flushed and the process ends with the exit code. Daemons (``up``,
    ``manager``, ``agent``) shut down normally.
    """
    words = sys.argv[1:]
    code = main(words)
    wanted = _verb_in(words)
    verb = find_verb(wanted) if wanted is not None else None
    if verb is not None and verb.daemon:
        raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader went away; nothing more to say to it
        pass
    os._exit(code)
