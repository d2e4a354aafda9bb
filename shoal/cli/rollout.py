"""``shoal rollout …``: follow (and, with the rollout work, steer) a service's rollout."""

from __future__ import annotations

import argparse
import asyncio

from shoal.cli import output
from shoal.cli.options import DEFAULT_TIMEOUT, add_subcommand, duration, server_option, subcommands


def cmd_rollout_status(args: argparse.Namespace) -> int:
    from shoal.api.client import open_control
    from shoal.cli.waiting import wait_rollout

    async def wait() -> str:
        async with open_control(args.server) as control:
            state = await wait_rollout(control, args.name, args.timeout, output.Progress())
        return f"service/{args.name} rolled out: {state.updated_running}/{state.desired} running"

    print(asyncio.run(wait()), flush=True)
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    group = subcommands(parser, "rollout_command")
    status = add_subcommand(
        group,
        "status",
        cmd_rollout_status,
        "wait until a service runs its current spec with all its replicas",
        epilog="Exit code 0 once done, 1 on timeout (the error says what is missing).",
    )
    server_option(status)
    status.add_argument("name", metavar="NAME")
    status.add_argument(
        "--timeout",
        type=duration,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="give up after this long, e.g. 30s, 2m (default 60s)",
    )
