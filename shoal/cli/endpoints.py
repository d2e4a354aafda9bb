"""``shoal endpoints SERVICE``: where a service's healthy tasks can be reached.

An endpoint is a running task that is healthy (or has no health check): its
node, the address others reach that node at (``shoal agent
--advertise-address``) and its ports by name, as the agents push them to every
node (``shoal.manager.endpoints``). Any manager answers. ``-w`` prints the list
again whenever it changes, until interrupted; ``-o json`` / ``-o yaml`` print
``{"service", "endpoints": [...]}`` (one JSON object per line with ``-w``). An
unknown service exits 1.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from shoal.cli import remote
from shoal.cli.options import command, output_option, server_option
from shoal.cli.output import dump, render_table

if TYPE_CHECKING:
    from shoal.api.client import ControlClient

HEADERS = ["TASK", "SLOT", "NODE", "ADDRESS", "PORTS"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Where a service's healthy tasks are: node address and ports by name."
    parser.epilog = (
        "examples:\n  shoal endpoints web\n  shoal endpoints web -o json\n  shoal endpoints web -w"
    )
    parser.add_argument("service", metavar="SERVICE", help="the service")
    parser.add_argument("-w", "--watch", action="store_true", help="print the list on changes")
    output_option(parser, ("table", "json", "yaml"), "table (default), json or yaml")
    server_option(parser)
    command(parser, run)


def ports_cell(endpoint: dict[str, Any]) -> str:
    """``http=10.0.0.5:20417/tcp``; a container's own port follows (``->172.17.0.2:80``)."""
    shown = []
    for port in endpoint.get("ports", []):
        text = f"{port.get('name')}={port.get('port')}/{port.get('protocol', 'tcp')}"
        if port.get("target") and endpoint.get("containerAddress"):
            text += f" (->{endpoint['containerAddress']}:{port['target']})"
        shown.append(text)
    return ", ".join(shown) or "-"


def table(endpoints: list[dict[str, Any]]) -> str:
    rows = [
        [
            str(e.get("taskId", "-"))[:12],
            str(e.get("slot", "-")),
            str(e.get("nodeId", "-")),
            str(e.get("address", "-")),
            ports_cell(e),
        ]
        for e in endpoints
    ]
    return render_table(HEADERS, rows)


def show(item: dict[str, Any], output: str, watching: bool) -> None:
    if output == "json":
        print(json.dumps(item) if watching else json.dumps(item, indent=2), flush=True)
    elif output == "yaml":
        print(dump(item, "yaml") + ("\n---" if watching else ""), flush=True)
    elif item.get("deleted"):
        print(f"service {item.get('service')!r} was deleted", flush=True)
    elif item.get("endpoints"):
        print(table(item["endpoints"]) + ("\n" if watching else ""), flush=True)
    else:
        print(f"no healthy endpoints of service {item.get('service')!r}", flush=True)


def run(args: argparse.Namespace) -> int:
    async def session(control: ControlClient) -> None:
        request = {"service": args.service, "watch": bool(args.watch)}
        async for item in control.stream("Endpoints", request):
            show(item, args.output, args.watch)

    remote.on_loop(args, session)
    return 0
