"""The process runtime when the agent dies in the middle of starting a task.

The agent here is a real subprocess that starts one task; the test kills it
with SIGKILL at the one moment that matters: the task's process exists, its
record does not yet. A FIFO in place of the record's temporary file holds the
agent exactly there (opening a FIFO for writing blocks until somebody reads).
Afterwards nothing may run that no record names, and a restarted agent must
start the task exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from shoal.models import TaskTemplate
from shoal.runtimes.base import RuntimeSettings, TaskLaunch
from shoal.runtimes.process import ProcessRuntime
from tests.e2e.cluster import processes_with_env, wait_for

AGENT = """
import asyncio, sys
from pathlib import Path
from shoal.models import TaskTemplate
from shoal.runtimes.base import RuntimeSettings, TaskLaunch
from shoal.runtimes.process import ProcessRuntime

state, task_id, mark = sys.argv[1:4]
runtime = ProcessRuntime(RuntimeSettings(state_dir=Path(state), node_name="n1"))
template = TaskTemplate(command=["sleep", "300"], env={"CRASH_MARK": mark})
launch = TaskLaunch(task_id=task_id, service="web", slot=1, template=template, env={})
asyncio.run(runtime.start(launch))
"""


def launch(task_id: str, template: TaskTemplate) -> TaskLaunch:
    return TaskLaunch(task_id=task_id, service="web", slot=1, template=template, env={})


def marked(mark: str) -> dict[str, list[int]]:
    """The live processes carrying ``mark``, by what they run: the wrapper or the command."""
    found: dict[str, list[int]] = {}
    for pid in processes_with_env("CRASH_MARK", mark):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        kind = "wrapper" if argv0 == b"/bin/sh" else Path(argv0.decode()).name
        found.setdefault(kind, []).append(pid)
    return found


def kill_marked(mark: str) -> None:
    for pid in processes_with_env("CRASH_MARK", mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_an_agent_killed_before_the_record_is_written_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    state, task_id, mark = tmp_path / "state", "t-crash", secrets.token_hex(6)
    task_dir = state / "tasks" / task_id
    task_dir.mkdir(parents=True)
    os.mkfifo(task_dir / "record.json.tmp")  # the agent blocks writing its record
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(state), task_id, mark])
    try:
        # The agent has forked the task's wrapper and is stuck before the record.
        wait_for(lambda: marked(mark), 20, "the task's wrapper to exist")
        agent.kill()
        agent.wait()
        # Nothing of the task may outlive an agent that never recorded it.
        wait_for(lambda: not marked(mark), 10, "the unrecorded task to go away")
        (task_dir / "record.json.tmp").unlink()

        async def restart_agent() -> None:
            runtime = ProcessRuntime(RuntimeSettings(state_dir=state, node_name="n1"))
            assert await runtime.recover() == []  # no record: nothing to adopt
            template = TaskTemplate(command=["sleep", "300"], env={"CRASH_MARK": mark})
            handle = await runtime.start(launch(task_id, template))  # the manager still wants it
            assert (await runtime.inspect(handle)).running
            await asyncio.to_thread(
                wait_for, lambda: "sleep" in marked(mark), 10, "the command to run"
            )
            assert len(marked(mark)["sleep"]) == 1  # started exactly once
            await runtime.stop(handle, "SIGKILL", 0.0)

        asyncio.run(restart_agent())
    finally:
        agent.kill()
        kill_marked(mark)


async def test_a_started_task_reads_an_empty_stdin_not_the_agents_go_ahead(
    tmp_path: Path,
) -> None:
    runtime = ProcessRuntime(RuntimeSettings(state_dir=tmp_path, node_name="n1"))
    template = TaskTemplate(command=["sh", "-c", "cat; echo end-of-stdin"])
    handle = await runtime.start(launch("t1", template))
    exit = await asyncio.wait_for(runtime.wait(handle), 10)
    assert exit.exit_code == 0
    assert [line async for line in runtime.logs(handle)] == ["end-of-stdin"]
    await runtime.remove(handle)
