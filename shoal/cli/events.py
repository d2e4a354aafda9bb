"""``shoal events``: what the cluster did and why, from any manager.

Every manager keeps the same history (events live in the store, bounded by
``--event-limit`` and ``--event-ttl``), so the answer does not depend on which
manager is asked, nor on a failover in between. Filters are applied by the
manager. ``-w`` prints the kept events, then every new one as it is written,
until interrupted; if the manager goes away it reconnects and carries on from
the last event it printed, so nothing is shown twice. ``-o json`` prints one
JSON object per event (one per line with ``-w``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from shoal.cli import remote
from shoal.cli.options import command, duration, output_option, server_option, whole_number
from shoal.cli.output import age_since, render_table, truncate

if TYPE_CHECKING:
    from shoal.api.client import ControlClient

HEADERS = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
WIDE = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "COUNT", "SERVICE", "NODE", "MESSAGE"]
# With -w rows are printed one at a time: fixed widths instead of the widest cell.
WIDTHS = [9, 7, 22, 36, 5, 16, 16]
# How long -w keeps trying to reach a manager before it gives up.
RECONNECT_FOR = 60.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "What the cluster did and why, from any manager (they keep the same history)."
    )
    parser.epilog = (
        "examples:\n"
        "  shoal events --service web --since 10m\n"
        "  shoal events -w --type Warning\n"
        "  shoal events --node n1 -o json"
    )
    parser.add_argument("-w", "--watch", action="store_true", help="keep printing new events")
    parser.add_argument(
        "--since", type=duration, metavar="DURATION", help="only events this recent (10m, 1h)"
    )
    parser.add_argument("--service", metavar="NAME", help="a service's events and its tasks'")
    parser.add_argument("--node", metavar="NAME", help="a node's events and its tasks'")
    parser.add_argument("--type", choices=("Normal", "Warning"), help="only events of this type")
    parser.add_argument("--object", metavar="KIND/NAME", help="one object: service/web, node/n1")
    parser.add_argument(
        "--limit", type=whole_number, metavar="N", help="only the newest N (before -w's new ones)"
    )
    output_option(parser, ("table", "wide", "json"), "table (default), wide or json")
    server_option(parser)
    command(parser, run)


def _request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {}
    for name in ("service", "node", "type", "object"):
        value = getattr(args, name)
        if value is not None:
            request[name] = value
    if args.since is not None:
        request["sinceSeconds"] = args.since
    return request


def row(event: dict[str, Any], wide: bool) -> list[str]:
    cells = [
        age_since(event.get("time")),
        str(event.get("type", "Normal")),
        str(event.get("reason", "")),
        str(event.get("object", "")),
    ]
    if wide:
        cells += [
            str(event.get("count", 1)),
            str(event.get("service") or "-"),
            str(event.get("node") or "-"),
        ]
    message = str(event.get("message", ""))
    return [*cells, message if wide else truncate(message, 120)]


def render(events: list[dict[str, Any]], wide: bool = False) -> str:
    return render_table(WIDE if wide else HEADERS, [row(e, wide) for e in events])


def _fixed(cells: list[str]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells[:-1], WIDTHS, strict=False)]
    return "  ".join([*padded, cells[-1]]).rstrip()


class _Printer:
    def __init__(self, output: str) -> None:
        self.output = output
        self.wide = output == "wide"
        self.header = False

    def batch(self, events: list[dict[str, Any]], watching: bool) -> None:
        if self.output == "json":
            if watching:
                for event in events:
                    self.one(event)
            else:
                print(json.dumps({"items": events}, indent=2))
            return
        if not watching:
            if events:
                print(render(events, self.wide))
            return
        for event in events:
            self.one(event)

    def one(self, event: dict[str, Any]) -> None:
        if self.output == "json":
            print(json.dumps(event), flush=True)
            return
        if not self.header:
            print(_fixed(WIDE if self.wide else HEADERS), flush=True)
            self.header = True
        print(_fixed(row(event, self.wide)), flush=True)


def run(args: argparse.Namespace) -> int:
    request = _request(args)
    printer = _Printer(args.output)

    async def listed(control: ControlClient) -> int:
        reply = await control.events({**request, "limit": args.limit} if args.limit else request)
        events: list[dict[str, Any]] = reply.get("events", [])
        if args.watch:  # not yet written ones: the watch brings them once they are
            events = [e for e in events if e.get("cursor")]
        printer.batch(events, args.watch)
        if not events and not args.watch and args.output != "json":
            print("no events", file=sys.stderr)
        cursors = [int(e.get("cursor", 0)) for e in events]
        return max([int(reply.get("cursor", 0)), *cursors])

    async def watch(cursor: int) -> None:
        import asyncio

        from shoal.api.client import open_control
        from shoal.errors import ApiError

        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        # Several events share a cursor (one write): after a reconnect the watch starts
        # one revision back and what was already printed is skipped.
        printed: set[tuple[str, int]] = set()
        while True:
            try:
                async with open_control(args.server, args.context) as control:
                    resume = {**request, "cursor": max(0, cursor - 1) if printed else cursor}
                    async for item in control.stream("WatchEvents", resume):
                        failing_since = None
                        event = item["event"]
                        seen = (str(event.get("id")), int(event.get("cursor", 0)))
                        if seen in printed:
                            continue
                        if seen[1] > cursor:
                            printed = {p for p in printed if p[1] >= seen[1] - 1}
                        printed.add(seen)
                        cursor = max(cursor, seen[1])
                        printer.one(event)
            except ApiError as exc:
                if exc.code not in ("UNAVAILABLE", "ABORTED", "INTERNAL", "CANCELLED"):
                    raise
                failing_since = failing_since or loop.time()
                if loop.time() - failing_since > RECONNECT_FOR:
                    raise
            await asyncio.sleep(1.0)

    cursor = remote.unary(args, listed)  # the kept events: one unary call
    if args.watch:
        import asyncio

        asyncio.run(watch(cursor))
    return 0
