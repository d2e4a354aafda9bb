"""``shoal cluster status``: the managers, which one leads, and the store's health.

Any manager answers (a follower as well as the leader), from its own view of
the store: the live managers are the ones announced under a lease, the leader
is whoever holds the leader key, and every store endpoint (each etcd member,
or the one database file) is asked directly. Conditions follow: the
disruption guard (engaged when too many nodes are silent at once, see
``shoal.reconciler.nodemonitor``). Exit code 0 when there is a leader, every
endpoint is healthy and no guard is engaged, 1 otherwise, so scripts can wait on it.
"""

from __future__ import annotations

import argparse
from typing import Any

from shoal.cli import remote
from shoal.cli.options import add_subcommand, output_option, server_option, subcommands
from shoal.cli.output import age_since, dump, render_table


def cmd_cluster_status(args: argparse.Namespace) -> int:
    status = remote.unary(args, lambda control: control.cluster_status())
    if args.output in ("json", "yaml"):
        print(dump(status, args.output))
    else:
        print(render_status(status))
    endpoints = status.get("store", {}).get("endpoints", [])
    engaged = any(c.get("engaged") for c in status.get("conditions", []))
    healthy = status.get("leader") and all(e.get("healthy") for e in endpoints) and not engaged
    return 0 if healthy else 1


def render_status(status: dict[str, Any]) -> str:
    managers = status.get("managers", [])
    rows = [
        [
            str(m.get("id", "-")),
            str(m.get("address", "-")),
            "leader" if m.get("leader") else "follower",
            age_since(m.get("startedAt")),
            "*" if m.get("self") else "",
        ]
        for m in managers
    ]
    lines = [render_table(["MANAGER", "ADDRESS", "ROLE", "AGE", "ANSWERED"], rows)]
    if not status.get("leader"):
        problem = status.get("electionError") or "an election is in progress"
        lines.append(f"no leader: {problem}")
    store = status.get("store", {})
    lines += ["", f"store: {store.get('url', '-')}"]
    endpoints = [
        [
            str(e.get("endpoint", "-")),
            "healthy" if e.get("healthy") else "UNHEALTHY",
            str(e.get("revision") or "-"),
            str(e.get("detail", "")),
        ]
        for e in store.get("endpoints", [])
    ]
    lines.append(render_table(["ENDPOINT", "HEALTH", "REVISION", "DETAIL"], endpoints))
    conditions = status.get("conditions", [])
    if conditions:
        rows = [
            [
                str(c.get("type", "-")),
                "ENGAGED" if c.get("engaged") else "ok",
                str(c.get("message", "")),
            ]
            for c in conditions
        ]
        lines += ["", render_table(["CONDITION", "STATUS", "DETAIL"], rows)]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    group = subcommands(parser, "cluster_command")
    status = add_subcommand(
        group,
        "status",
        cmd_cluster_status,
        "managers, which one leads, store endpoints and their health",
        description="Managers, which one leads, store endpoints and their health, and cluster\n"
        "conditions (the disruption guard). Exit code 0 when a leader exists, every\n"
        "store endpoint is healthy and no guard is engaged, else 1.",
    )
    server_option(status)
    output_option(status, help="table (default), yaml or json")
