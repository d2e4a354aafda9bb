"""``shoal sync ls|status|now|suspend|resume|delete``: the Syncs that keep the cluster in line.

A Sync is created with ``shoal apply -f sync.yaml`` like any document; these
verbs show and steer it. ``status`` exits 0 when the Sync is Ready and 1
otherwise, so scripts can check it; ``now`` asks for a run, waits for the
controller to answer exactly that request, and exits 1 when the run failed
(the reason and message are printed).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from shoal.cli import output, remote
from shoal.cli.options import (
    add_subcommand,
    named_subcommand,
    output_option,
    server_option,
    subcommands,
    wait_options,
)
from shoal.errors import NotFoundError, ShoalError

if TYPE_CHECKING:
    from shoal.api.client import ControlClient

POLL_INTERVAL = 0.2


def _condition(sync: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in (sync.get("status") or {}).get("conditions", []):
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def _source(sync: dict[str, Any]) -> str:
    source = sync.get("spec", {}).get("source", {})
    git = source.get("git")
    if git:
        return f"{git.get('url')}@{git.get('ref', 'main')}:{git.get('path', '.')}"
    return str(source.get("path", "-"))


def _short_revision(revision: str | None) -> str:
    if not revision:
        return "-"
    prefix, _, digest = revision.rpartition(":")
    return f"{prefix}:{digest[:12]}" if prefix else revision[:20]


def sync_table(items: list[dict[str, Any]]) -> str:
    rows = []
    for sync in items:
        status = sync.get("status") or {}
        ready = _condition(sync, "Ready")
        rows.append(
            [
                str(sync.get("metadata", {}).get("name", "-")),
                output.truncate(_source(sync), output.COMMAND_WIDTH),
                str(ready.get("status", "-")),
                str(ready.get("reason", "-")),
                str(status.get("health") or "-"),
                _short_revision(status.get("lastAppliedRevision")),
                "yes" if sync.get("spec", {}).get("suspend") else "no",
                output.age_since(status.get("lastAttemptedAt")),
            ]
        )
    headers = ["NAME", "SOURCE", "READY", "REASON", "HEALTH", "REVISION", "SUSPENDED", "LAST RUN"]
    return output.render_table(headers, rows)


def describe_sync(payload: dict[str, Any]) -> str:
    sync = payload.get("sync", {})
    spec = sync.get("spec", {})
    status = sync.get("status") or {}
    lines = [
        f"Name:                   {sync.get('metadata', {}).get('name', '-')}",
        f"Source:                 {_source(sync)}",
        f"Interval:               {spec.get('interval', '-')}",
        f"Prune:                  {spec.get('prune', False)}",
        f"Suspended:              {spec.get('suspend', False)}",
        f"Timeout:                {spec.get('timeout', '-')}",
        "Depends on:             "
        + (", ".join(d.get("name", "?") for d in spec.get("dependsOn", [])) or "-"),
        f"Last applied revision:  {status.get('lastAppliedRevision') or '-'}",
        f"Last attempted revision: {status.get('lastAttemptedRevision') or '-'}",
        f"Last run:               {output.age_since(status.get('lastAttemptedAt'))} ago",
        f"Health:                 {status.get('health') or '-'}"
        + (f" ({status['healthMessage']})" if status.get("healthMessage") else ""),
        "Conditions:",
    ]
    for condition in status.get("conditions", []):
        message = str(condition.get("message", "")).splitlines() or [""]
        lines.append(
            f"  {condition.get('type', '?'):<12} {condition.get('status', '?'):<8} "
            f"{condition.get('reason', '')}: {message[0]}"
        )
        lines += [f"      {more}" for more in message[1:]]
    inventory = status.get("inventory", [])
    lines.append(f"Inventory ({len(inventory)}):" + ("" if inventory else " -"))
    lines += [f"  {ref}" for ref in inventory]
    events = payload.get("events", [])
    lines.append("Events:" + ("" if events else " -"))
    for event in events[-15:]:
        first = str(event.get("message", "")).splitlines() or [""]
        lines.append(
            f"  {output.age_since(event.get('time')):>4}  {event.get('type', ''):<8} "
            f"{event.get('reason', ''):<16} {first[0]}"
        )
    return "\n".join(lines)


def _ready(sync: dict[str, Any]) -> bool:
    return _condition(sync, "Ready").get("status") == "True"


# ----------------------------------------------------------------- commands


def cmd_ls(args: argparse.Namespace) -> int:
    items = remote.unary(args, lambda control: control.get("syncs"))
    if args.output in ("json", "yaml"):
        print(output.dump({"items": items}, args.output))
    elif items:
        print(sync_table(items))
    else:
        print("No syncs found.", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    payload = remote.unary(args, lambda control: control.describe_sync(args.name))
    if args.output in ("json", "yaml"):
        print(output.dump(payload["sync"], args.output))
    else:
        print(describe_sync(payload))
    return 0 if _ready(payload["sync"]) else 1


def cmd_now(args: argparse.Namespace) -> int:
    if not args.wait:
        remote.unary(args, lambda control: control.sync_now(args.name))
        print(f"sync/{args.name} run requested")
        return 0

    async def run(control: ControlClient) -> dict[str, Any]:
        import asyncio

        requested = await control.sync_now(args.name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        progress = output.Progress()
        try:
            while True:
                items = await control.get("syncs", name=args.name)
                if not items:
                    raise NotFoundError(f"sync {args.name!r} not found")
                sync = items[0]
                if (sync.get("status") or {}).get("lastHandledRequest") == requested:
                    return sync
                if loop.time() > deadline:
                    raise ShoalError(
                        f"timed out after {output.format_age(args.timeout)} waiting for "
                        f"sync/{args.name} to run (is a manager leading?)"
                    )
                progress.update(f"sync/{args.name}: waiting for the run")
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            progress.clear()

    sync = remote.on_loop(args, run)
    status = sync.get("status") or {}
    ready = _condition(sync, "Ready")
    stalled = _condition(sync, "Stalled")
    if ready.get("reason") in ("FetchFailed", "ValidationFailed", "ApplyFailed") or (
        stalled.get("status") == "True"
    ):
        raise ShoalError(f"sync/{args.name}: {ready.get('reason')}: {ready.get('message', '')}")
    revision = status.get("lastAppliedRevision") or "-"
    print(
        f"sync/{args.name} applied revision {revision}: Ready={ready.get('status', '-')} "
        f"health={status.get('health') or '-'}"
    )
    return 0


def _suspend(args: argparse.Namespace, wanted: bool) -> int:
    changed = remote.unary(args, lambda control: control.sync_suspend(args.name, wanted))
    verb = "suspended" if wanted else "resumed"
    print(f"sync/{args.name} {verb}" + ("" if changed else " (already)"))
    return 0


def cmd_suspend(args: argparse.Namespace) -> int:
    return _suspend(args, True)


def cmd_resume(args: argparse.Namespace) -> int:
    return _suspend(args, False)


def cmd_delete(args: argparse.Namespace) -> int:
    kept = remote.unary(args, lambda control: control.delete_sync(args.name))
    print(f"sync/{args.name} deleted" + (f"; still running: {', '.join(kept)}" if kept else ""))
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Syncs are created with `shoal apply -f sync.yaml`; see docs/gitops.md.\n\n"
        "examples:\n  shoal sync ls\n  shoal sync status prod\n  shoal sync now prod"
    )
    group = subcommands(parser, "sync_command")
    ls = add_subcommand(group, "ls", cmd_ls, "list Syncs with their state")
    server_option(ls)
    output_option(ls, ("table", "yaml", "json"), "table (default), yaml or json")

    status = named_subcommand(
        group,
        "status",
        cmd_status,
        "show a Sync: revisions, conditions, health, inventory, events",
        epilog="Exit code 0 when the Sync is Ready, 1 otherwise.",
        names="syncs",
    )
    output_option(status, ("table", "yaml", "json"), "table (default), yaml or json")

    now = named_subcommand(
        group,
        "now",
        cmd_now,
        "fetch and apply at once instead of at the next interval",
        epilog="Waits for the run and exits 1 if it failed (--no-wait returns at once).",
        names="syncs",
    )
    wait_options(now, "for the run's outcome")
    for name, func, summary in (
        ("suspend", cmd_suspend, "stop fetching, applying and correcting drift"),
        ("resume", cmd_resume, "start again (runs at once)"),
        ("delete", cmd_delete, "delete a Sync; the services it applied keep running"),
    ):
        named_subcommand(group, name, func, summary, names="syncs")
