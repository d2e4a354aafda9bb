"""``shoal job run|status``: start a job's run now, and see its runs.

``run`` asks the manager for a run (``RunJob``) and, with ``--wait``, waits
until that run ended: exit 0 if it succeeded, 1 if it failed (with the
reason). While it waits, the run's counts are progress on stderr. ``status``
lists the kept runs: number, state, succeeded / failed / active tasks, when,
why it failed, and the schedule's next time and skipped count.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from shoal.cli import output, remote
from shoal.cli.options import (
    DEFAULT_TIMEOUT,
    duration,
    named_subcommand,
    subcommands,
)
from shoal.errors import ShoalError

POLL_INTERVAL = 0.25


def _job(view: dict[str, Any]) -> dict[str, Any]:
    return dict((view.get("status") or {}).get("job") or {})


def runs_table(view: dict[str, Any]) -> str:
    job = _job(view)
    rows = [
        [
            str(run.get("number")),
            str(run.get("state")),
            f"{run.get('succeeded', 0)}/{run.get('failed', 0)}/{run.get('active', 0)}",
            output.age_since(run.get("startedAt")),
            str(run.get("cause", "")),
            str(run.get("reason", "")),
        ]
        for run in job.get("runs", [])
    ]
    text = output.render_table(
        ["RUN", "STATE", "OK/FAILED/ACTIVE", "STARTED", "CAUSE", "REASON"], rows
    )
    if job.get("nextRunAt") or job.get("skipped"):
        text += f"\nnext run: {job.get('nextRunAt', '-')}, skipped runs: {job.get('skipped', 0)}"
    return text


def cmd_job_status(args: argparse.Namespace) -> int:
    async def get(control: Any) -> dict[str, Any]:
        items: list[dict[str, Any]] = await control.get("services", args.name)
        return items[0]

    print(runs_table(remote.unary(args, get)), flush=True)
    return 0


def cmd_job_run(args: argparse.Namespace) -> int:
    async def go(control: Any) -> int:
        before = _job((await control.get("services", args.name))[0])
        known = {r.get("number") for r in before.get("runs", [])}
        await control.run_job(args.name)
        print(f"job/{args.name}: run requested", flush=True)
        if not args.wait:
            return 0
        return await _wait_run(control, args.name, known, args.timeout)

    return (remote.on_loop if args.wait else remote.unary)(args, go)


async def _wait_run(control: Any, name: str, known: set[Any], timeout: float) -> int:
    """Until the run that is not in ``known`` has ended; its counts are progress (stderr)."""
    import asyncio

    progress = output.Progress()
    started = time.monotonic()
    line = f"job/{name}: waiting for the run to start"
    try:
        while time.monotonic() - started < timeout:
            job = _job((await control.get("services", name))[0])
            new = [r for r in job.get("runs", []) if r.get("number") not in known]
            if new:
                run = new[-1]
                if run.get("state") == "succeeded":
                    progress.clear()
                    print(f"job/{name}: run {run['number']} succeeded", flush=True)
                    return 0
                if run.get("state") != "active":
                    progress.clear()
                    print(
                        f"error: job/{name}: run {run['number']} failed: {run.get('reason', '')}",
                        file=sys.stderr,
                    )
                    return 1
                line = (
                    f"job/{name}: run {run['number']}: {run.get('succeeded', 0)} succeeded, "
                    f"{run.get('failed', 0)} failed, {run.get('active', 0)} running"
                )
            progress.update(line, output.format_age(time.monotonic() - started))
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        progress.clear()
    raise ShoalError(f"timed out after {output.format_age(timeout)} waiting for the run ({line})")


def configure(parser: argparse.ArgumentParser) -> None:
    group = subcommands(parser, "job_command")
    run = named_subcommand(group, "run", cmd_job_run, "start a run of a job now", names="services")
    run.add_argument(
        "--wait", action="store_true", help="wait until the run ended (exit 1 if it failed)"
    )
    run.add_argument(
        "--timeout",
        type=duration,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="with --wait: give up after this long (default 60s)",
    )
    named_subcommand(group, "status", cmd_job_status, "list a job's runs", names="services")
