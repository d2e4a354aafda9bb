"""The process runtime alone: start, stop and remove N ``sleep 3600`` tasks, beside a bare loop.

What the agent does with a node's tasks, without the agent: N concurrent
``ProcessRuntime.start`` calls (as the agent's task runners make them), then N
concurrent ``stop`` (SIGTERM, as ``shoal delete`` asks) and N ``remove``. Each
round is timed from the outside:

- start: from the first ``start`` call until every task's command (``sleep``,
  the wrapper's child) is in ``/proc`` (``/proc/PID/task/PID/children`` of each
  wrapper);
- stop: until every ``stop`` has returned (each returns once nothing of its
  task runs); remove: until every ``remove`` has returned.

The peer, in the same run: a bare Python loop that spawns the same wrapped
command N times (``subprocess.Popen``, the same wrapper and arguments, the go
line written at once) with no task dir, record or log of its own, timed the
same way until every ``sleep`` runs: what the runtime's bookkeeping costs on
top of the fork and exec. Rounds alternate; every round is printed with the
load average.

    .venv/bin/python bench/process_runtime.py [--tasks 200] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from shoal.models import TaskTemplate
from shoal.runtimes.base import RuntimeSettings, TaskHandle, TaskLaunch
from shoal.runtimes.process import SHELL, WRAPPER, ProcessRuntime

COMMAND = ["sleep", "3600"]


def children_running(pids: list[int]) -> bool:
    """Whether each wrapper in ``pids`` has forked its command."""
    for pid in pids:
        try:
            if not Path(f"/proc/{pid}/task/{pid}/children").read_text().strip():
                return False
        except OSError:
            return False
    return True


async def until_running(pids: list[int], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not children_running(pids):
        if time.monotonic() > deadline:
            raise TimeoutError("not every task's command started")
        await asyncio.sleep(0.002)


def launch(number: int) -> TaskLaunch:
    task_id = f"bench-{number:04d}"
    template = TaskTemplate(command=COMMAND)
    return TaskLaunch(task_id=task_id, service="bench", slot=number, template=template, env={})


async def runtime_round(tasks: int, state: Path) -> dict[str, float]:
    runtime = ProcessRuntime(RuntimeSettings(state_dir=state, node_name="bench"))
    try:
        began = time.perf_counter()
        handles: list[TaskHandle] = await asyncio.gather(
            *(runtime.start(launch(n)) for n in range(tasks))
        )
        returned = time.perf_counter()
        await until_running([int(h.data["pid"]) for h in handles])
        running = time.perf_counter()
        await asyncio.gather(*(runtime.stop(h, "SIGTERM", 10.0) for h in handles))
        stopped = time.perf_counter()
        await asyncio.gather(*(runtime.remove(h) for h in handles))
        removed = time.perf_counter()
    finally:
        for handle in await runtime.recover():
            await runtime.stop(handle, "SIGKILL", 0.0)
            await runtime.remove(handle)
        await runtime.aclose()
    return {
        "start returned": returned - began,
        "start": running - began,
        "stop": stopped - running,
        "remove": removed - stopped,
    }


def spawn_bare(tasks: int, state: Path) -> list[subprocess.Popen[bytes]]:
    """The same wrapper spawned in a loop, nothing else (blocking, as a bare loop is)."""
    state.mkdir(parents=True, exist_ok=True)
    executable = shutil.which(COMMAND[0]) or COMMAND[0]
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    log = os.open(state / "all.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    popens = []
    try:
        for n in range(tasks):
            gate, go = os.pipe()
            argv = [SHELL, "-c", WRAPPER, "shoal-task", str(state / f"exit-{n}"), executable]
            popen = subprocess.Popen(
                [*argv, *COMMAND[1:]],
                stdin=gate,
                stdout=log,
                stderr=log,
                cwd=state,
                env=env,
                start_new_session=True,
            )
            os.close(gate)
            os.write(go, b"go\n")
            os.close(go)
            popens.append(popen)
    finally:
        os.close(log)
    return popens


async def bare_round(tasks: int, state: Path) -> dict[str, float]:
    began = time.perf_counter()
    popens = spawn_bare(tasks, state)
    try:
        await until_running([p.pid for p in popens])
        running = time.perf_counter()
    finally:
        for popen in popens:
            os.killpg(popen.pid, signal.SIGKILL)
        for popen in popens:
            popen.wait()
    return {"start": running - began}


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


async def main(args: argparse.Namespace) -> None:
    if args.threads:
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(args.threads)
        )
    figures: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        for number in range(1, args.rounds + 1):
            before = load()
            ours = await runtime_round(args.tasks, Path(tmp) / f"runtime-{number}")
            bare = await bare_round(args.tasks, Path(tmp) / f"bare-{number}")
            print(
                f"round {number} (load {before} -> {load()}): runtime "
                + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in ours.items())
                + f"; bare loop start {bare['start']:.3f} s"
            )
            for name, seconds in ours.items():
                figures.setdefault(name, []).append(seconds)
            figures.setdefault("bare start", []).append(bare["start"])
    print(
        "medians: "
        + ", ".join(f"{name} {statistics.median(v):.3f} s" for name, v in figures.items())
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="the default executor's size")
    asyncio.run(main(parser.parse_args()))
