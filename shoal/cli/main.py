"""``shoal``: the command line, kubectl's habits applied to shoal.

This module builds the argument parser and owns the contract scripts rely on;
the commands themselves live in ``shoal.cli.commands`` (client commands) and
``shoal.cli.daemons`` (``up``, ``manager``, ``agent``).

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
import os
import sys
from typing import Any

import shoal
from shoal.cli import commands
from shoal.cli.cluster import add_cluster_commands
from shoal.cli.commands import KINDS, SERVICE_KINDS, UsageError
from shoal.cli.daemons import add_daemon_commands
from shoal.cli.output import FORMATS
from shoal.errors import ShoalError, SpecError
from shoal.models.units import parse_duration

RESOURCE_KINDS = list(KINDS)
DEFAULT_TIMEOUT = 60.0


# ------------------------------------------------------------ argument types


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def scale_target(text: str) -> tuple[str, int]:
    name, sep, count = text.partition("=")
    if not sep or not name or not count.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected NAME=REPLICAS with REPLICAS a whole number >= 0, got {text!r}"
        )
    return name, int(count)


def label_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def positive_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


# ------------------------------------------------------------------- parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs (examples)."""


def _server_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="manager address (default: $SHOAL_SERVER, else the manager of a local "
        "`shoal up`, else 127.0.0.1:7420)",
    )
    return parent


def _add(
    subparsers: Any, name: str, func: commands.Command, summary: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """A subcommand whose ``func(args) -> int`` runs it; ``summary`` is its help line."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        formatter_class=_Formatter,
        **kwargs,
    )
    parser.set_defaults(func=func, command_parser=parser)
    return parser


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default="table",
        help="table (default), wide (more columns), yaml or json",
    )


def _add_get(sub: Any, server: argparse.ArgumentParser) -> None:
    get = _add(
        sub,
        "get",
        commands.cmd_get,
        "list services, tasks or nodes",
        parents=[server],
        epilog="examples:\n  shoal get services\n  shoal get tasks --service web -a\n"
        "  shoal get svc web -o yaml\n\n"
        '-o json|yaml prints {"items": [...]} for a list, the object itself with NAME.\n'
        "An unknown resource type (e.g. pods) is a usage error: exit code 2.",
    )
    get.add_argument(
        "resource",
        metavar="RESOURCE",
        choices=RESOURCE_KINDS,
        help="services (service, svc), tasks (task) or nodes (node)",
    )
    get.add_argument("name", metavar="NAME", nargs="?", help="only this object")
    _output_option(get)
    get.add_argument("--service", metavar="NAME", help="tasks: only the tasks of this service")
    get.add_argument(
        "-a", "--all", action="store_true", help="tasks: include finished tasks kept as history"
    )


def _add_delete(sub: Any, server: argparse.ArgumentParser) -> None:
    delete = _add(
        sub,
        "delete",
        commands.cmd_delete,
        "delete services",
        parents=[server],
        usage="shoal delete (service NAME [NAME ...] | -f PATH [-f PATH ...]) [options]",
        epilog="By default waits until the services' tasks have stopped; --no-wait returns\n"
        "as soon as the services are deleted.",
    )
    delete.add_argument("targets", nargs="*", metavar="service NAME", help=argparse.SUPPRESS)
    delete.add_argument(
        "-f",
        "--filename",
        action="append",
        default=[],
        metavar="PATH",
        help="delete the services defined in these files or directories",
    )
    delete.add_argument(
        "--ignore-not-found",
        action="store_true",
        help="a service that does not exist is not an error",
    )
    delete.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until the tasks of the deleted services have stopped",
    )
    delete.add_argument(
        "--timeout",
        type=duration,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="how long --wait waits, e.g. 30s, 2m (default 60s)",
    )


def _add_node(sub: Any, server: argparse.ArgumentParser) -> None:
    node = sub.add_parser("node", help="list and update nodes", description="list and update nodes")
    node.set_defaults(command_parser=node)
    node_sub = node.add_subparsers(dest="node_command", metavar="COMMAND")
    ls = _add(node_sub, "ls", commands.cmd_node_ls, "list nodes (as `get nodes`)", parents=[server])
    ls.add_argument("name", metavar="NAME", nargs="?", help="only this node")
    _output_option(ls)
    update = _add(
        node_sub,
        "update",
        commands.cmd_node_update,
        "change a node's availability or labels",
        parents=[server],
        epilog="availability: active (takes tasks), pause (keeps its tasks, takes no\n"
        "new ones), drain (its tasks move elsewhere)",
    )
    update.add_argument("name", metavar="NAME")
    update.add_argument("--availability", choices=["active", "pause", "drain"])
    update.add_argument(
        "--label-add",
        action="append",
        type=label_pair,
        default=[],
        metavar="KEY=VALUE",
        help="add or change a label (repeatable)",
    )
    update.add_argument(
        "--label-rm",
        action="append",
        default=[],
        metavar="KEY",
        help="remove a label an operator added (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal",
        formatter_class=_Formatter,
        description="shoal: run services across a cluster of machines.",
        epilog="exit codes: 0 success, 1 failure (refused, not found, unreachable,\n"
        "timed out), 2 wrong command line",
    )
    parser.add_argument("--version", action="version", version=f"shoal {shoal.__version__}")
    parser.set_defaults(command_parser=parser)
    server = _server_parent()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    apply = _add(
        sub,
        "apply",
        commands.cmd_apply,
        "create or update services from YAML specs",
        parents=[server],
        epilog="Every file is validated first; if any has a problem nothing is sent.",
    )
    apply.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="PATH",
        help="a YAML file, a directory of them, or - for standard input (repeatable)",
    )
    apply.add_argument(
        "--dry-run", action="store_true", help="show what would change without changing it"
    )

    _add_get(sub, server)

    describe = _add(
        sub,
        "describe",
        commands.cmd_describe,
        "show a service or node in detail, with its tasks and events",
        parents=[server],
    )
    describe.add_argument(
        "resource",
        metavar="RESOURCE",
        choices=[*SERVICE_KINDS, "node", "nodes"],
        help="service (svc) or node",
    )
    describe.add_argument("name", metavar="NAME")

    _add_delete(sub, server)

    scale = _add(
        sub,
        "scale",
        commands.cmd_scale,
        "set the number of replicas of services",
        parents=[server],
        epilog="example:\n  shoal scale web=3 worker=0",
    )
    scale.add_argument("targets", nargs="+", type=scale_target, metavar="NAME=REPLICAS")

    logs = _add(
        sub, "logs", commands.cmd_logs, "print the output of a service's tasks", parents=[server]
    )
    logs.add_argument("service", metavar="SERVICE")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C"
    )
    logs.add_argument(
        "--tail", type=positive_int, metavar="N", help="start with the last N lines of each task"
    )
    logs.add_argument(
        "--prefix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prefix each line with `TASKNAME | ` (default on)",
    )

    rollout = sub.add_parser(
        "rollout",
        help="follow the rollout of a service",
        description="follow the rollout of a service",
    )
    rollout.set_defaults(command_parser=rollout)
    rollout_sub = rollout.add_subparsers(dest="rollout_command", metavar="COMMAND")
    status = _add(
        rollout_sub,
        "status",
        commands.cmd_rollout_status,
        "wait until a service runs its current spec with all its replicas",
        parents=[server],
        epilog="Exit code 0 once done, 1 on timeout (the error says what is missing).",
    )
    status.add_argument("name", metavar="NAME")
    status.add_argument(
        "--timeout",
        type=duration,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="give up after this long, e.g. 30s, 2m (default 60s)",
    )

    _add_node(sub, server)

    token = _add(
        sub, "token", commands.cmd_token, "print the token agents join with", parents=[server]
    )
    token.add_argument("role", choices=["worker"], nargs="?", default="worker")

    _add(
        sub,
        "version",
        commands.cmd_version,
        "print the client and server versions",
        parents=[server],
        epilog="Prints the client version, then asks the manager for its version. If the\n"
        "manager cannot be reached the client version is still printed, the error goes\n"
        "to stderr and the exit code is 1. --client never contacts the manager.",
    ).add_argument("--client", action="store_true", help="only the client version")

    add_cluster_commands(sub, server)
    add_daemon_commands(sub)
    return parser


# --------------------------------------------------------------------- main


def _report(error: ShoalError) -> None:
    if isinstance(error, SpecError):
        count = len(error.problems)
        print(
            f"error: {count} problem{'s' if count != 1 else ''} in the spec; nothing was sent:",
            file=sys.stderr,
        )
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return
    print(f"error: {error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code is returned, never raised."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
