"""``shoal rollout …``: follow and steer a service's rolling update.

``status`` waits until the update reaches a final state and says so by its exit
code: 0 on ``completed`` (or canaries healthy, ``awaiting_promotion``), 1 on
``paused``, ``rollback_paused`` or ``rollback_completed`` (the update did not
land), with the rollout's message, as soon as the state is final: that line
alone goes to stdout. The steps on the way (state, batch, updated/total) are
progress, on stderr (``output.Progress``: one live line on a terminal, a line
per change otherwise). A service that
was just created has no update to follow: ``status`` then waits for its tasks
to run, and fails at once when a slot gave up (``maxAttempts``).

``history`` lists the kept revisions; ``undo``, ``restart``, ``pause``,
``resume`` and ``promote`` ask the manager (the ``Rollout`` call), which
changes the update's state in the store; the work itself happens at the
update's pace afterwards.
"""

from __future__ import annotations

import argparse
import math
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


def revision_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a revision number (1, 2, ...), got {text!r}")
    return int(text)


SUCCESS = ("completed", "awaiting_promotion")
FAILURE = ("paused", "rollback_paused", "rollback_completed")


def progress_line(name: str, view: dict[str, Any]) -> str:
    """``service/web: updating to revision 3, batch 2/3, 2/5 updated``."""
    status = view.get("status") or {}
    update = status.get("update") or {}
    spec = view.get("spec", {})
    state = update.get("state", "-")
    rolling_back = str(state).startswith("rollback")
    config = spec.get("rollback" if rolling_back else "update") or {}
    parallelism = int(config.get("parallelism", 1)) or None
    updated, total = int(update.get("updated", 0)), int(update.get("total", 0))
    text = f"service/{name}: {state}, revision {update.get('revision', '-')}"
    if parallelism and total:
        batches = math.ceil(total / parallelism)
        batch = min(batches, updated // parallelism + 1)
        text += f", batch {batch}/{batches}"
    text += f", {updated}/{total} updated"
    return text


def cmd_rollout_status(args: argparse.Namespace) -> int:
    return remote.on_loop(args, lambda control: _follow(control, args.name, args.timeout))


async def _follow(control: Any, name: str, timeout: float) -> int:
    import asyncio

    from shoal.cli.waiting import rollout_state

    progress = output.Progress()
    started = time.monotonic()
    try:
        while True:
            payload = await control.describe("services", name)
            view = payload.get("service", {})
            update = (view.get("status") or {}).get("update")
            if update:
                state = str(update.get("state"))
                line = progress_line(name, view)
                if state in SUCCESS or state in FAILURE:
                    progress.clear()
                    message = update.get("message", "")
                    if state in SUCCESS:
                        print(f"{line}: {message}" if message else line, flush=True)
                        return 0
                    print(f"error: {line}: {message}", file=sys.stderr, flush=True)
                    return 1
            else:
                rolled = rollout_state(payload)
                if rolled.done:
                    progress.clear()
                    print(
                        f"service/{name} rolled out: {rolled.updated_running}/{rolled.desired} "
                        "running",
                        flush=True,
                    )
                    return 0
                given_up = [r for r in rolled.reasons if "gave up" in r or "restart condition" in r]
                if given_up and rolled.updated_running + len(given_up) >= rolled.desired:
                    progress.clear()
                    print(
                        f"error: service/{name} cannot roll out: {'; '.join(given_up)}",
                        file=sys.stderr,
                    )
                    return 1
                line = f"service/{name}: {rolled.summary()}"
            waited = time.monotonic() - started
            if waited >= timeout:
                raise ShoalError(
                    f"timed out after {output.format_age(timeout)} waiting for the rollout: {line}"
                )
            progress.update(line, output.format_age(waited))
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        progress.clear()


def cmd_rollout_history(args: argparse.Namespace) -> int:
    async def get(control: Any) -> dict[str, Any]:
        items: list[dict[str, Any]] = await control.get("services", args.name)
        return items[0]

    view = remote.unary(args, get)
    status = view.get("status") or {}
    revisions = status.get("revisions", [])
    if args.revision is not None:
        chosen = [r for r in revisions if r.get("number") == args.revision]
        if not chosen:
            kept = ", ".join(str(r.get("number")) for r in revisions) or "none"
            raise ShoalError(f"revision {args.revision} is not kept (kept: {kept})")
        print(output.dump(chosen[0], "yaml"), end="", flush=True)
        return 0
    current = status.get("revision")
    rows = [
        [
            f"{r.get('number')}{' *' if r.get('number') == current else ''}",
            output.age_since(r.get("createdAt")),
            r.get("cause", ""),
        ]
        for r in revisions
    ]
    print(output.render_table(["REVISION", "AGE", "CAUSE"], rows), flush=True)
    return 0


def _act(action: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        to_revision = getattr(args, "to_revision", None)
        answer = remote.unary(args, lambda control: control.rollout(args.name, action, to_revision))
        print(
            f"service/{args.name}: {answer.get('state')}, revision {answer.get('revision')}: "
            f"{answer.get('message', '')}",
            flush=True,
        )
        return 0

    return run


ACTIONS = {
    "undo": "go back to the previous revision (or --to-revision N), at the rollback's pace",
    "restart": "replace every task with a new one, at the update's pace",
    "pause": "stop starting new slots of the update under way",
    "resume": "continue a paused update (its failures are forgotten)",
    "promote": "let an update whose canaries are healthy replace the other slots",
}


def configure(parser: argparse.ArgumentParser) -> None:
    group = subcommands(parser, "rollout_command")
    status = named_subcommand(
        group,
        "status",
        cmd_rollout_status,
        "follow a service's update until it is completed, paused or rolled back",
        epilog="Exit code 0 on completed (or canaries awaiting promotion), 1 on paused or "
        "rolled back (with the reason) or on timeout.",
        names="services",
    )
    status.add_argument(
        "--timeout",
        type=duration,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="give up after this long, e.g. 30s, 2m (default 60s)",
    )
    history = named_subcommand(
        group,
        "history",
        cmd_rollout_history,
        "list the kept revisions of a service",
        names="services",
    )
    history.add_argument(
        "--revision", type=revision_number, metavar="N", help="print revision N's template"
    )
    for action, summary in ACTIONS.items():
        sub = named_subcommand(group, action, _act(action), summary, names="services")
        if action == "undo":
            sub.add_argument(
                "--to-revision", type=revision_number, metavar="N", help="a kept revision number"
            )
