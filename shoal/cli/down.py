"""``shoal down``: stop what a stopped ``shoal up`` left running, and what ``up`` says on stopping.

Stopping ``shoal up`` (Ctrl-C, SIGTERM) stops its manager and its agent, not
the tasks: processes and containers go on running, unwatched (nothing
restarts them, checks their health or collects their logs), and the next
``shoal up`` on the same state dir adopts them. That is the design (losing the
control plane never stops running work), but a user who typed Ctrl-C may not
expect it, so ``up`` says on its way out what keeps running and how to stop it.

``shoal down`` stops them: it asks each runtime what it still runs for the
node (``Runtime.recover``, the same list ``up`` would adopt), stops each task
with SIGTERM and a grace period, and removes it; then it unmounts and removes
the tasks' secret and config files (``shoal.agent.taskfiles``) and drops their
port records (``shoal.agent.ports``), as the agent does when a task ends. The
store is kept: services, secrets and history are still in the state dir, and
``shoal up`` starts the services again. It refuses while ``shoal up`` runs on
that state dir.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from shoal.cli.options import command, duration
from shoal.errors import ShoalError
from shoal.paths import default_state_dir

if TYPE_CHECKING:
    from shoal.runtimes.base import Runtime, TaskHandle

DEFAULT_GRACE = 10.0


async def leftovers(
    state_dir: Path, node_name: str, ended_too: bool = False
) -> list[tuple[Runtime, TaskHandle]]:
    """What the runtimes of ``up``'s agent in ``state_dir`` still run for ``node_name``
    (``ended_too``: with the records of tasks that ended since, for removal).

    A runtime whose engine cannot be reached is skipped (it says nothing of
    its tasks either way). The caller closes the runtimes returned (``_close``).
    """
    from shoal.errors import RuntimeBackendError
    from shoal.runtimes.base import RuntimeSettings
    from shoal.runtimes.registry import available_runtime_classes

    found: list[tuple[Runtime, TaskHandle]] = []
    for name, cls in available_runtime_classes().items():
        runtime = cls(RuntimeSettings(state_dir / "agent" / "runtimes" / name, node_name))
        try:
            handles = await runtime.recover()
        except RuntimeBackendError:
            handles = []
        mine = [h for h in handles if ended_too or (await runtime.inspect(h)).running]
        found += [(runtime, handle) for handle in mine]
        if not mine:
            await runtime.aclose()
    return found


def by_runtime(found: list[tuple[Runtime, TaskHandle]]) -> str:
    counts = Counter(runtime.name for runtime, _ in found)
    return ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))


async def stopping_message(state_dir: Path, node_name: str) -> str:
    """What ``shoal up`` prints once its manager and agent have stopped."""
    found = await leftovers(state_dir, node_name)
    await _close(found)
    kept = f"Services, secrets and history stay in {state_dir}; `shoal up` starts them again."
    if not found:
        return f"shoal up stopped; no task is left running. {kept}"
    count = len(found)
    tasks = f"{count} task{'s' if count != 1 else ''}"
    return (
        f"shoal up stopped; {tasks} keep running on this machine ({by_runtime(found)}), "
        "unwatched: nothing restarts them or checks their health now.\n"
        f"  stop them:       shoal down --state-dir {state_dir}\n"
        f"  adopt them again: shoal up --state-dir {state_dir}\n"
        f"{kept}"
    )


async def release_task_files(state_dir: Path, node_name: str, task_ids: set[str]) -> None:
    """Unmount and remove the secret and config files of ``task_ids`` (tasks of ``up``'s
    that ``down`` removed), and drop their port records: what the agent does when a task
    ends. Tasks of a runtime ``down`` could not reach keep theirs: they may still run."""
    from shoal.agent.ports import PortAllocator
    from shoal.agent.taskfiles import TaskFileStore, default_runtime_dir

    agent_dir = state_dir / "agent"
    files = TaskFileStore(default_runtime_dir(node_name, agent_dir))
    for task_id in files.leftovers():
        if task_id in task_ids:
            await files.release(task_id)
    ports = PortAllocator(agent_dir / "ports")
    held = ports.load()
    ports.forget_except(set(held) - task_ids)


async def _close(found: list[tuple[Runtime, TaskHandle]]) -> None:
    for runtime in {id(r): r for r, _ in found}.values():
        await runtime.aclose()


def cmd_down(args: argparse.Namespace) -> int:
    import asyncio

    from shoal.security.contexts import live_endpoints

    state_dir = (args.state_dir or default_state_dir()).resolve()
    running = live_endpoints(state_dir)
    if running:
        raise ShoalError(
            f"shoal up is running on {running[0]} with state in {state_dir}: stop it first "
            "(Ctrl-C, or SIGTERM), then run shoal down"
        )
    name = args.name or socket.gethostname()
    os.environ.setdefault("SHOAL_LOG_LEVEL", "warning")  # the runtimes' own log lines
    from shoal.logging import configure_logging

    configure_logging()

    async def down() -> list[tuple[Runtime, TaskHandle]]:
        found = await leftovers(state_dir, name, ended_too=True)
        stopped = []
        try:
            for runtime, handle in found:
                if (await runtime.inspect(handle)).running:
                    await runtime.stop(handle, "SIGTERM", args.grace)
                    stopped.append((runtime, handle))
                    print(f"task {handle.task_id} stopped ({runtime.name})", flush=True)
                await runtime.remove(handle)
        finally:
            await _close(found)
        await release_task_files(state_dir, name, {handle.task_id for _, handle in found})
        return stopped

    found = asyncio.run(down())
    if found:
        count = len(found)
        print(f"stopped {count} task{'s' if count != 1 else ''} ({by_runtime(found)})")
    else:
        print("nothing was running", file=sys.stderr)
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    command(parser, cmd_down)
    parser.epilog = (
        "Stops the processes and containers a stopped `shoal up` left running (they\n"
        "outlive it by design: the next `shoal up` adopts them). The services stay in\n"
        "the store; `shoal up` starts them again. Refused while `shoal up` runs."
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="shoal up's state dir (default: $SHOAL_STATE_DIR, else ~/.local/state/shoal)",
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        help="shoal up's node name, if it was given one (default: hostname)",
    )
    parser.add_argument(
        "--grace",
        type=duration,
        default=DEFAULT_GRACE,
        metavar="DURATION",
        help=f"how long each task has to exit after SIGTERM (default {DEFAULT_GRACE:g}s)",
    )
