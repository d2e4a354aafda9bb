"""Waiting for the cluster to get somewhere: ``delete --wait`` and ``rollout status``.

Writes return as soon as the store has the new desired state; the work happens
afterwards, on agents. Scripts and tests need to block until it has happened,
so these loops poll the manager (reads are cheap: served from its informer)
until the condition holds or a deadline passes. Polling rather than a watch
keeps them correct across a manager restart. While waiting, progress goes
to stderr (``output.Progress``: a line rewritten in place on a terminal, a
line per change otherwise); on timeout the last report becomes the error, so
the user learns what was still missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shoal.api.client import ControlClient
from shoal.cli.output import Progress, format_age, is_terminal, slot_label
from shoal.errors import ApiError, ShoalError

POLL_INTERVAL = 0.5
# Tasks looked at per service and poll (a deleted service may have 100,000).
WAIT_PAGE = 1000


class _Deadline:
    """Seconds left until a timeout, and how long we have waited."""

    def __init__(self, timeout: float) -> None:
        self.start = time.monotonic()
        self.timeout = timeout

    @property
    def waited(self) -> str:
        return format_age(time.monotonic() - self.start)

    @property
    def expired(self) -> bool:
        return time.monotonic() - self.start >= self.timeout


async def wait_tasks_gone(
    control: ControlClient, names: Sequence[str], timeout: float, progress: Progress
) -> None:
    """Until no task of these (deleted) services is still running or stopping."""
    deadline = _Deadline(timeout)
    remaining = {name: -1 for name in names}
    try:
        while True:
            for name in list(remaining):
                try:
                    # One page: past it, the tasks still listed are counted as stopping,
                    # which the count is exact again once one page holds them all.
                    page = await control.get_page("tasks", service=name, limit=WAIT_PAGE)
                except ApiError as exc:
                    if exc.code != "NOT_FOUND":
                        raise
                    page = {}  # neither the service nor any task is left
                live = sum(1 for t in page.get("items", []) if not is_terminal(t))
                live += int(page.get("remaining") or 0) if page.get("continue") else 0
                if live:
                    remaining[name] = live
                else:
                    del remaining[name]
            if not remaining:
                return
            summary = ", ".join(f"{n}: {count} task(s)" for n, count in remaining.items())
            if deadline.expired:
                raise ShoalError(
                    f"timed out after {format_age(timeout)} waiting for tasks to stop ({summary}); "
                    "they keep stopping in the background"
                )
            progress.update(f"waiting for tasks to stop ({summary})", deadline.waited)
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        progress.clear()


@dataclass(frozen=True)
class RolloutState:
    """How far a service is from running its current spec everywhere."""

    desired: int
    updated_running: int
    outdated: int
    done: bool
    reasons: list[str]

    def summary(self) -> str:
        text = f"{self.updated_running}/{self.desired} updated task(s) running"
        if self.outdated:
            text += f", {self.outdated} old task(s) still running"
        if self.reasons:
            text += "; " + "; ".join(self.reasons)
        return text


def rollout_state(payload: dict[str, Any]) -> RolloutState:
    """From a Describe payload: done when exactly the desired number of tasks run
    the service's current template and no task with an older one is still alive."""
    view = payload.get("service", {})
    status = view.get("status") or {}
    template = view.get("spec", {}).get("template", {})
    desired = int(status.get("desiredTasks", 0))
    alive = [t for t in payload.get("tasks", []) if not is_terminal(t)]
    current = [t for t in alive if t.get("template") == template]
    updated_running = sum(
        1
        for t in current
        if t.get("desiredState") == "running" and t.get("status", {}).get("state") == "running"
    )
    outdated = len(alive) - len(current)
    reasons = [
        f"{slot_label(slot)}: {note}" for slot, note in sorted(payload.get("notes", {}).items())
    ]
    if status.get("error"):
        reasons.insert(0, f"error: {status['error']}")
    done = updated_running == desired and outdated == 0 and len(current) == desired
    return RolloutState(desired, updated_running, outdated, done, reasons)


async def wait_rollout(
    control: ControlClient, name: str, timeout: float, progress: Progress
) -> RolloutState:
    deadline = _Deadline(timeout)
    try:
        while True:
            state = rollout_state(await control.describe("services", name))
            if state.done:
                return state
            if deadline.expired:
                raise ShoalError(
                    f"timed out after {format_age(timeout)} waiting for service/{name} to roll "
                    f"out: {state.summary()}"
                )
            progress.update(f"service/{name}: {state.summary()}", deadline.waited)
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        progress.clear()
