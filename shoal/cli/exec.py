"""``shoal exec TASK -- COMMAND...``: run a command inside a running container task.

TASK is named as ``shoal logs`` takes one: its name (``web.2.3f9c1a0b``), its
id, or a unique start of its id. The command runs without a terminal and
without input; its standard output and standard error are written to shoal's
as they arrive, and shoal exits with the command's exit code. A task on a
runtime without containers (``process``, ``sim``), one that is not running,
or a node that is not connected is refused with one line (exit 1). Needs an
admin certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import sys

from shoal.cli.options import UsageError, command, completes, server_option, tail_after_dashes


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Run a command inside a running container task; exit with its code."
    parser.epilog = (
        "examples:\n  shoal exec web.1.3f9c1a0b -- cat /etc/hostname\n"
        "  shoal exec 3f9c1a -- sh -c 'ls /data | wc -l'"
    )
    completes(
        parser.add_argument(
            "task", metavar="TASK", help="the task: its name, its id or the start of its id"
        ),
        "tasks",
    )
    tail_after_dashes(parser, "argv", "the command and its arguments")
    server_option(parser)
    command(parser, run)


def run(args: argparse.Namespace) -> int:
    from shoal.api.client import open_control

    argv = list(args.argv)
    if not argv:
        raise UsageError("give the command to run after --, e.g. shoal exec TASK -- ls /")

    async def session() -> int:
        code = 1  # the stream ended without an exit code: the server raised instead
        async with open_control(args.server, getattr(args, "context", None)) as control:
            request = {"task": args.task, "command": argv}
            items = control.stream("Exec", request)
            async with contextlib.aclosing(items):  # type: ignore[type-var]
                async for item in items:
                    if "exitCode" in item:  # the last item; the stream then ends
                        code = int(item["exitCode"])
                        continue
                    out = sys.stdout if item.get("stream") == "stdout" else sys.stderr
                    out.buffer.write(base64.b64decode(str(item.get("data", ""))))
                    out.buffer.flush()
        return code

    return asyncio.run(session())
