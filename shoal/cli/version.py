"""``shoal version``: the client's version, then the manager's."""

from __future__ import annotations

import argparse

import shoal
from shoal.cli.options import command, server_option


def cmd_version(args: argparse.Namespace) -> int:
    print(f"Client Version: {shoal.__version__}", flush=True)
    if args.client:
        return 0
    from shoal.cli import remote

    print(f"Server Version: {remote.unary(args, lambda c: c.version())}", flush=True)
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_version)
    parser.epilog = (
        "Prints the client version, then asks the manager for its version. If the\n"
        "manager cannot be reached the client version is still printed, the error goes\n"
        "to stderr and the exit code is 1. --client never contacts the manager."
    )
    server_option(parser)
    parser.add_argument("--client", action="store_true", help="only the client version")
