"""The runtime contract (``shoal/runtimes/base.py``): one suite, run against every runtime.

Two kinds of tests, one file:

* the lifecycle stated through *workloads* ("runs until stopped", "exits with
  3 after a moment", "cannot start") that each runtime spells its own way
  (``workload``), so ``sim``, which executes nothing real, is held to the same
  start / inspect / wait / stop / remove / recover / logs rules as the others;
* behaviour of real programs, as shell scripts (environment, signals, forked
  children, logs, adoption), for the runtimes that execute them: ``process``,
  ``docker``, ``podman``.

The last sections hold what only the ``process`` runtime promises (pid
records, the exit file, process groups) and entry-point discovery. Real
processes and engines throughout; nothing waits for time to pass on hope: a
test that needs a task to have ended first observes the end from outside the
runtime (``/proc``, the engine).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from shoal.errors import TaskRejectedError
from shoal.models import TaskTemplate
from shoal.runtimes.base import LogLine, Runtime, RuntimeSettings, TaskHandle, TaskLaunch
from shoal.runtimes.process import UNKNOWN_EXIT, ProcessRuntime
from shoal.runtimes.registry import available_runtime_classes, runtime_catalogue
from tests.engines import ENGINES, TEST_IMAGE, client, engines_required, template_extras
from tests.runtimes.conftest import RUNTIMES

PROCESS_ONLY = pytest.mark.parametrize("runtime_name", [pytest.param("process", id="process")])
# The lifecycle contract also binds the simulated runtime.
EVERY_RUNTIME = pytest.mark.parametrize("runtime_name", [*RUNTIMES, pytest.param("sim", id="sim")])
LIMIT = 10.0  # no single await in this file should take longer
# What the runtime under test needs in every template (container runtimes: the
# test image and the test's tmp dir mounted at the same path); set per test.
EXTRAS: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _template_extras(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    name = request.getfixturevalue("runtime_name") if "runtime_name" in request.fixturenames else ""
    EXTRAS.clear()
    EXTRAS.update(template_extras(name, tmp_path))
    yield
    EXTRAS.clear()


def make_launch(
    task_id: str,
    command: list[str],
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    workdir: Path | None = None,
    launch_env: dict[str, str] | None = None,
) -> TaskLaunch:
    template = TaskTemplate.model_validate(
        {
            "command": command,
            "args": args or [],
            "env": env or {},
            "workdir": None if workdir is None else str(workdir),
            **EXTRAS,
        }
    )
    return TaskLaunch(
        task_id=task_id,
        service="svc",
        slot=1,
        template=template,
        env={"SHOAL_TASK_ID": task_id, **(launch_env or {})},
    )


def sh(script: str, task_id: str = "t1", **kwargs: Any) -> TaskLaunch:
    return make_launch(task_id, ["sh", "-c", script], **kwargs)


async def collect(runtime: Runtime, handle: TaskHandle, **kwargs: Any) -> list[str]:
    async with asyncio.timeout(LIMIT):
        return [line async for line in runtime.logs(handle, **kwargs)]


async def wait_for_line(runtime: Runtime, handle: TaskHandle, prefix: str) -> str:
    async with asyncio.timeout(LIMIT):
        while True:
            for line in await collect(runtime, handle):
                if line.startswith(prefix):
                    return line
            await asyncio.sleep(0.05)


async def finished(runtime: Runtime, handle: TaskHandle) -> Any:
    async with asyncio.timeout(LIMIT):
        return await runtime.wait(handle)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(name))
    return members


async def eventually_dead(pid: int) -> bool:
    for _ in range(50):
        if not alive(pid):
            return True
        await asyncio.sleep(0.02)
    return False


# -- the lifecycle, every runtime ------------------------------------------


def workload(runtime_name: str, task_id: str, kind: str, code: int = 0) -> TaskLaunch:
    """A launch that behaves as ``kind`` says: forever, exits, rejected."""
    template: dict[str, Any] = {"runtime": runtime_name}
    if runtime_name == "sim":
        template["command"] = ["sim"]
        template["sim"] = {
            "forever": {},
            "exits": {"runFor": "200ms", "exitCode": code},
            "rejected": {"reject": True},
        }[kind]
    else:
        template["command"] = {
            "forever": ["sleep", "60"],
            "exits": ["sh", "-c", f"sleep 0.2; exit {code}"],
            "rejected": ["no-such-program-here"],
        }[kind]
    if runtime_name in ENGINES:
        # The test image, with an init as pid 1 so that sleep gets SIGTERM as on a
        # host; "cannot start" is an image that exists nowhere.
        rejected = kind == "rejected"
        template.update(
            image="shoal-test/no-such-image:none" if rejected else TEST_IMAGE,
            imagePullPolicy="never",
            init=True,
            command=["sleep", "60"] if rejected else template["command"],
        )
    return TaskLaunch(
        task_id=task_id,
        service="svc",
        slot=1,
        template=TaskTemplate.model_validate(template),
        env={"SHOAL_TASK_ID": task_id},
    )


async def within(awaitable: Any) -> Any:
    async with asyncio.timeout(LIMIT):
        return await awaitable


async def ended_outside(runtime: Runtime, runtime_name: str, handle: TaskHandle) -> None:
    """Until the task has ended, seen from outside the runtime (which must not look)."""
    async with asyncio.timeout(LIMIT):
        while True:
            if runtime_name == "process":
                ended = not alive(int(handle.data["pid"]))
            elif runtime_name in ENGINES:
                container = client(runtime_name).containers.get(handle.data["containerId"])
                ended = str(container.status) == "exited"
            else:  # sim: a task's life is a function of the clock, looking changes nothing
                ended = (await runtime.inspect(handle)).exit is not None
            if ended:
                return
            await asyncio.sleep(0.02)


@EVERY_RUNTIME
async def test_describe_reports_available(
    new_runtime: Callable[..., Runtime], runtime_name: str
) -> None:
    # Not through the ``runtime`` fixture, which skips unavailable runtimes: this
    # is the test that must fail when a runtime that should work does not.
    runtime = new_runtime()
    info = await runtime.describe()
    if not info.available and runtime_name in ENGINES and not engines_required():
        pytest.skip(f"{runtime_name} engine not usable here: {info.message}")
    assert info.available, info.message
    assert info.name == runtime_name == runtime.name


@EVERY_RUNTIME
async def test_started_task_runs_and_its_handle_survives_json(
    runtime: Runtime, runtime_name: str
) -> None:
    handle = await runtime.start(workload(runtime_name, "t1", "forever"))
    assert (handle.task_id, handle.runtime) == ("t1", runtime.name)
    assert TaskHandle.from_json(json.loads(json.dumps(handle.to_json()))) == handle

    observation = await runtime.inspect(handle)
    assert observation.running
    assert observation.exit is None
    assert observation.started_at is not None
    if runtime_name != "sim":
        assert observation.pid is not None and observation.pid > 0
    await runtime.stop(handle, "SIGKILL", 0.0)


@pytest.mark.parametrize("code", [0, 3])
@EVERY_RUNTIME
async def test_exit_code_is_recorded(runtime: Runtime, runtime_name: str, code: int) -> None:
    handle = await runtime.start(workload(runtime_name, "t1", "exits", code))
    status = await within(runtime.wait(handle))
    assert status.exit_code == code
    assert status.signal is None
    assert status.succeeded is (code == 0)
    assert status.message == f"exited with code {code}"
    observation = await runtime.inspect(handle)
    assert not observation.running
    assert observation.exit == status


@pytest.mark.parametrize(
    ("signal_name", "code"),
    [pytest.param("SIGTERM", 143, id="term"), pytest.param("SIGKILL", 137, id="kill")],
)
@EVERY_RUNTIME
async def test_stop_ends_the_task_with_the_signal(
    runtime: Runtime, runtime_name: str, signal_name: str, code: int
) -> None:
    handle = await runtime.start(workload(runtime_name, "t1", "forever"))
    # A grace far beyond the test's limit: a stop that waited for it instead of
    # returning once the signal ended the task would run out of time, and one
    # that killed at the end of it would report SIGKILL for SIGTERM.
    await within(runtime.stop(handle, signal_name, 10 * LIMIT))

    status = await within(runtime.wait(handle))
    assert (status.exit_code, status.signal) == (code, code - 128)
    assert not (await runtime.inspect(handle)).running


@EVERY_RUNTIME
async def test_exited_is_wait_as_a_future(runtime: Runtime, runtime_name: str) -> None:
    """What the task runner waits on: cancelling one such future leaves the task alone,
    and another resolves as ``wait`` does once the task is stopped."""
    handle = await runtime.start(workload(runtime_name, "t1", "forever"))
    given_up = runtime.exited(handle)
    await asyncio.sleep(0.1)
    given_up.cancel()
    assert (await runtime.inspect(handle)).running
    exited = runtime.exited(handle)
    assert not exited.done()
    await within(runtime.stop(handle, "SIGTERM", 10 * LIMIT))
    status = await within(exited)
    assert (status.exit_code, status.signal) == (143, 15)
    assert status == await within(runtime.wait(handle))


@EVERY_RUNTIME
async def test_stop_of_an_exited_task_changes_nothing(runtime: Runtime, runtime_name: str) -> None:
    handle = await runtime.start(workload(runtime_name, "t1", "exits", 4))
    status = await within(runtime.wait(handle))
    await runtime.stop(handle, "SIGTERM", 5.0)
    assert (await runtime.inspect(handle)).exit == status


@EVERY_RUNTIME
async def test_a_task_that_cannot_start_is_rejected(runtime: Runtime, runtime_name: str) -> None:
    with pytest.raises(TaskRejectedError):
        await runtime.start(workload(runtime_name, "t1", "rejected"))
    assert await runtime.recover() == []


@EVERY_RUNTIME
async def test_restarted_runtime_recovers_and_still_controls_the_task(
    new_runtime: Callable[..., Runtime], runtime_name: str
) -> None:
    first = new_runtime()
    handle = await first.start(workload(runtime_name, "t1", "forever"))
    started_at = (await first.inspect(handle)).started_at

    second = new_runtime()  # the agent restarted
    recovered = await second.recover()
    assert [h.task_id for h in recovered] == ["t1"]
    observation = await second.inspect(recovered[0])
    assert observation.running
    assert observation.started_at == started_at

    await within(second.stop(recovered[0], "SIGKILL", 0.0))
    assert (await within(second.wait(recovered[0]))).exit_code == 137


@EVERY_RUNTIME
async def test_recovery_knows_how_a_task_ended_while_the_agent_was_away(
    new_runtime: Callable[..., Runtime], runtime_name: str
) -> None:
    first = new_runtime()
    handle = await first.start(workload(runtime_name, "t1", "exits", 5))
    await ended_outside(first, runtime_name, handle)  # it ends while nobody watches

    second = new_runtime()
    recovered = await second.recover()
    assert [h.task_id for h in recovered] == [handle.task_id]
    status = await within(second.wait(recovered[0]))
    assert status.exit_code == 5


@EVERY_RUNTIME
async def test_removed_task_is_not_recovered(runtime: Runtime, runtime_name: str) -> None:
    kept = await runtime.start(workload(runtime_name, "kept", "forever"))
    gone = await runtime.start(workload(runtime_name, "gone", "exits", 0))
    await within(runtime.wait(gone))
    await runtime.remove(gone)
    assert [h.task_id for h in await runtime.recover()] == [kept.task_id]
    await runtime.stop(kept, "SIGKILL", 0.0)


@EVERY_RUNTIME
async def test_logs_follow_ends_when_the_task_exits(runtime: Runtime, runtime_name: str) -> None:
    handle = await runtime.start(workload(runtime_name, "t1", "exits", 0))

    async def follow() -> list[str]:
        return [line async for line in runtime.logs(handle, follow=True)]

    await within(follow())
    assert not (await runtime.inspect(handle)).running
    assert [line async for line in runtime.logs(handle, tail=0)] == []


# -- real programs: process, docker, podman ----------------------------------


# -- describe, start, inspect ----------------------------------------------


async def test_environment_is_template_env_plus_launch_env(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_ONLY_SECRET", "must-not-leak")
    launch = make_launch(
        "t1",
        ["env"],
        env={"FROM_TEMPLATE": "t", "BOTH": "template"},
        launch_env={"BOTH": "launch", "SHOAL_SERVICE": "svc"},
    )
    handle = await runtime.start(launch)
    await finished(runtime, handle)
    lines = await collect(runtime, handle)
    assert "FROM_TEMPLATE=t" in lines
    assert "BOTH=launch" in lines
    assert "SHOAL_TASK_ID=t1" in lines
    assert "SHOAL_SERVICE=svc" in lines
    assert not [line for line in lines if line.startswith("AGENT_ONLY_SECRET=")]


async def test_args_and_workdir_are_honoured(runtime: Runtime, tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    script = 'pwd; for a in "$@"; do echo "[$a]"; done'
    handle = await runtime.start(
        sh(script, args=["task0", "a b", "c"], workdir=workdir)  # task0 becomes $0
    )
    await finished(runtime, handle)
    assert await collect(runtime, handle) == [str(workdir), "[a b]", "[c]"]


async def test_stdout_and_stderr_both_reach_the_log(runtime: Runtime) -> None:
    handle = await runtime.start(sh("echo out; echo err >&2"))
    await finished(runtime, handle)
    lines = await collect(runtime, handle)
    if runtime.name == "process":
        assert lines == ["out", "err"]  # one file, in the order written
    else:  # engines copy the two streams separately: order across them is not kept
        assert sorted(lines) == ["err", "out"]


# -- exit status -------------------------------------------------------------


@PROCESS_ONLY  # in a container the shell is pid 1, which cannot SIGKILL itself
async def test_death_by_sigkill_is_137(runtime: Runtime) -> None:
    handle = await runtime.start(sh("kill -KILL $$"))
    status = await finished(runtime, handle)
    assert (status.exit_code, status.signal) == (137, 9)
    assert status.message == "killed by SIGKILL"


async def test_death_of_the_command_by_a_signal_is_128_plus_n(runtime: Runtime) -> None:
    handle = await runtime.start(sh('sh -c "kill -KILL \\$\\$"; exit $?'))
    status = await finished(runtime, handle)
    assert (status.exit_code, status.signal) == (137, 9)
    assert status.message == "killed by SIGKILL"


@PROCESS_ONLY  # container engines create a missing workdir inside the container
async def test_missing_workdir_is_rejected(runtime: Runtime, tmp_path: Path) -> None:
    with pytest.raises(TaskRejectedError, match="workdir"):
        await runtime.start(sh("true", workdir=tmp_path / "nowhere"))
    assert await runtime.recover() == []


# -- stop --------------------------------------------------------------------


async def test_stop_with_signal_the_task_handles(runtime: Runtime) -> None:
    script = 'trap "echo got TERM; exit 0" TERM; echo ready; while :; do sleep 0.05; done'
    handle = await runtime.start(sh(script))
    await wait_for_line(runtime, handle, "ready")

    # A grace beyond the test's limit: a stop that waited for it would run out of time.
    await within(runtime.stop(handle, "SIGTERM", 10 * LIMIT))
    observation = await runtime.inspect(handle)
    assert not observation.running
    assert observation.exit is not None and observation.exit.exit_code == 0
    assert "got TERM" in await collect(runtime, handle)


async def test_stop_kills_a_task_ignoring_the_signal_after_grace(runtime: Runtime) -> None:
    handle = await runtime.start(sh('trap "" TERM; echo ready; while :; do sleep 0.05; done'))
    await wait_for_line(runtime, handle, "ready")

    grace = 0.5
    began = time.monotonic()
    await within(runtime.stop(handle, "SIGTERM", grace))
    assert time.monotonic() - began >= grace  # it gave the task its grace first
    status = await finished(runtime, handle)
    assert (status.exit_code, status.signal) == (137, 9)


@PROCESS_ONLY  # host pids; a container's pid namespace dies with it
async def test_stop_kills_what_the_task_forked(runtime: Runtime) -> None:
    # The child ignores SIGTERM and outlives the task's main process.
    script = 'sh -c \'trap "" TERM; echo "child $$"; exec sleep 60\' & sleep 60'
    handle = await runtime.start(sh(script))
    child = int((await wait_for_line(runtime, handle, "child ")).split()[1])
    pid = (await runtime.inspect(handle)).pid
    assert pid is not None and alive(child)

    await runtime.stop(handle, "SIGTERM", 0.3)
    assert not alive(child)
    assert group_members(pid) == []
    assert not (await runtime.inspect(handle)).running


@PROCESS_ONLY  # host pids; a container's pid namespace dies with it
async def test_leftovers_of_a_finished_task_are_killed(runtime: Runtime) -> None:
    handle = await runtime.start(sh('sleep 60 & echo "child $!"; exit 3'))
    status = await finished(runtime, handle)
    assert status.exit_code == 3
    child = int((await wait_for_line(runtime, handle, "child ")).split()[1])
    assert await eventually_dead(child)


# -- logs --------------------------------------------------------------------


async def test_logs_tail(runtime: Runtime) -> None:
    handle = await runtime.start(sh("for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i; done"))
    await finished(runtime, handle)
    assert len(await collect(runtime, handle)) == 10
    assert await collect(runtime, handle, tail=3) == ["line8", "line9", "line10"]
    assert await collect(runtime, handle, tail=50) == [f"line{i}" for i in range(1, 11)]
    assert await collect(runtime, handle, tail=0) == []


async def test_logs_keep_a_final_line_without_newline(runtime: Runtime) -> None:
    handle = await runtime.start(sh("printf 'a\\nb'"))
    await finished(runtime, handle)
    assert await collect(runtime, handle) == ["a", "b"]
    assert await collect(runtime, handle, tail=1) == ["b"]


async def test_logs_follow_until_the_task_exits(runtime: Runtime) -> None:
    handle = await runtime.start(sh("for i in 1 2 3 4 5; do echo $i; sleep 0.1; done"))
    assert await collect(runtime, handle, follow=True) == ["1", "2", "3", "4", "5"]
    assert not (await runtime.inspect(handle)).running


async def test_logs_follow_with_tail_starts_near_the_end(runtime: Runtime, tmp_path: Path) -> None:
    script = "echo old1; echo old2; echo ready; while [ ! -e go ]; do sleep 0.05; done; echo new"
    handle = await runtime.start(sh(script, workdir=tmp_path))
    await wait_for_line(runtime, handle, "ready")
    lines = runtime.logs(handle, follow=True, tail=1)
    async with asyncio.timeout(LIMIT):
        assert await anext(lines) == "ready"  # the follower is reading: now the new line
        (tmp_path / "go").touch()
        assert [line async for line in lines] == ["new"]


async def test_timed_logs_carry_when_each_line_was_written(
    runtime: Runtime, runtime_name: str, tmp_path: Path
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)  # engines' clocks round
    script = "echo first; while [ ! -e go ]; do sleep 0.05; done; echo second"
    handle = await runtime.start(sh(script, workdir=tmp_path))
    await wait_for_line(runtime, handle, "first")
    # The next whole second (Podman 4.3 stamps lines to the second): "first" is before.
    now = datetime.now(UTC)
    between = now.replace(microsecond=0) + timedelta(seconds=1)
    await asyncio.sleep((between - now).total_seconds() + 0.1)
    (tmp_path / "go").touch()
    await finished(runtime, handle)
    after = datetime.now(UTC) + timedelta(seconds=1)

    async def timed(**kwargs: Any) -> list[LogLine]:
        async with asyncio.timeout(LIMIT):
            return [line async for line in runtime.timed_logs(handle, **kwargs)]

    lines = await timed()
    assert [line.text for line in lines] == ["first", "second"]
    times = [line.time for line in lines]
    assert all(t is not None and before <= t <= after for t in times)
    assert times == sorted(times, key=lambda t: t or before)
    assert await timed(since=after) == []
    # The engines stamp each line; the process runtime's follower indexed "first"
    # while the task waited.
    assert [line.text for line in await timed(since=between)] == ["second"]


async def test_followed_logs_mark_where_the_history_ends(
    runtime: Runtime, runtime_name: str, tmp_path: Path
) -> None:
    # The process runtime reads the file itself: it knows where the history ends.
    assert runtime.marks_history or runtime_name in ENGINES
    script = "echo old1; echo old2; while [ ! -e go ]; do sleep 0.05; done; echo new"
    handle = await runtime.start(sh(script, workdir=tmp_path))
    await wait_for_line(runtime, handle, "old2")
    lines = runtime.timed_logs(handle, follow=True)
    history: list[str] = []
    async with asyncio.timeout(LIMIT):
        if runtime.marks_history:
            while not (line := await anext(lines)).history_end:
                history.append(line.text)
            assert history == ["old1", "old2"]  # all of it, before a line was added
        (tmp_path / "go").touch()
        rest = [line async for line in lines]
    assert not any(line.history_end for line in rest)  # once only
    assert [*history, *(line.text for line in rest)] == ["old1", "old2", "new"]
    assert [line async for line in runtime.logs(handle, follow=True)] == ["old1", "old2", "new"]


@pytest.mark.parametrize("runtime_name", [pytest.param("sim", id="sim")])
async def test_sim_marks_where_a_followed_history_ends(runtime: Runtime) -> None:
    assert runtime.marks_history
    handle = await runtime.start(workload("sim", "t1", "forever"))
    lines = runtime.timed_logs(handle, follow=True)
    async with asyncio.timeout(LIMIT):
        assert (await anext(lines)).text.endswith("started")
        assert (await anext(lines)).history_end
        await runtime.stop(handle, "SIGTERM", 1.0)
        assert [line.history_end async for line in lines] == [False]


@pytest.mark.parametrize("runtime_name", [pytest.param("sim", id="sim")])
async def test_sim_logs_are_stamped_by_its_own_clock(runtime: Runtime) -> None:
    before = datetime.now(UTC)
    handle = await runtime.start(workload("sim", "t1", "exits"))
    await runtime.wait(handle)
    async with asyncio.timeout(LIMIT):
        lines = [line async for line in runtime.timed_logs(handle)]
        assert [line.text.split()[-1] for line in lines] == ["started", "0"]
        started, ended = (line.time for line in lines)
        assert started is not None and ended is not None
        assert before <= started
        assert abs(ended - started - timedelta(milliseconds=200)) < timedelta(milliseconds=1)
        later = [line.text async for line in runtime.timed_logs(handle, since=ended)]
    assert later == [lines[1].text]


@PROCESS_ONLY  # the log files' layout is the process runtime's
async def test_log_rotation_and_follow_across_it(new_runtime: Callable[..., Runtime]) -> None:
    runtime = new_runtime(log_max_bytes=2000, log_files=2)
    # Six bursts of 100 numbered lines (~3 KB each), each well over the limit.
    script = (
        "b=1; while [ $b -le 6 ]; do i=0; while [ $i -lt 100 ]; do "
        'echo "$b $i ........................"; i=$((i+1)); done; b=$((b+1)); sleep 0.3; done'
    )
    handle = await runtime.start(sh(script))
    lines = await collect(runtime, handle, follow=True)

    log = runtime.settings.state_dir / "tasks" / "t1" / "output.log"
    assert log.with_name("output.log.1").stat().st_size > 2000
    assert log.with_name("output.log.2").exists()
    assert not log.with_name("output.log.3").exists()
    assert log.stat().st_size <= 4000

    # Following across copytruncate never goes back or repeats a line.
    seen = [tuple(int(n) for n in line.split()[:2]) for line in lines]
    assert seen == sorted(set(seen))
    assert seen[0] == (1, 0)
    assert seen[-1] == (6, 99)


# -- restart, recover, remove -----------------------------------------------


async def test_recover_after_restart_adopts_the_running_task(
    new_runtime: Callable[..., Runtime], tmp_path: Path
) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    first = new_runtime()
    script = "echo ready; while [ ! -e go ]; do sleep 0.05; done; exit 7"
    started = await first.start(sh(script, workdir=workdir))
    await wait_for_line(first, started, "ready")
    pid = (await first.inspect(started)).pid

    second = new_runtime()  # the agent restarted
    handles = await second.recover()
    assert [h.task_id for h in handles] == ["t1"]
    (adopted,) = handles
    observation = await second.inspect(adopted)
    assert observation.running
    assert observation.pid == pid

    (workdir / "go").touch()
    status = await finished(second, adopted)
    assert status.exit_code == 7
    assert status.message == "exited with code 7"


async def test_remove_deletes_the_task(runtime: Runtime) -> None:
    handle = await runtime.start(sh("echo hello"))
    await finished(runtime, handle)
    await runtime.stop(handle, "SIGTERM", 1.0)
    await runtime.remove(handle)
    assert await runtime.recover() == []
    assert await collect(runtime, handle) == []


# -- process runtime only ----------------------------------------------------


@PROCESS_ONLY
async def test_default_workdir_is_private_to_the_task(runtime: Runtime) -> None:
    handle = await runtime.start(make_launch("t1", ["pwd"]))
    await finished(runtime, handle)
    (line,) = await collect(runtime, handle)
    assert Path(line).is_relative_to(runtime.settings.state_dir / "tasks" / "t1")


@PROCESS_ONLY
async def test_records_and_logs_live_in_the_task_dir(runtime: Runtime) -> None:
    handle = await runtime.start(sh("echo hi; exit 2"))
    await finished(runtime, handle)
    task_dir = runtime.settings.state_dir / "tasks" / "t1"
    record = json.loads((task_dir / "record.json").read_text())
    assert record["pid"] == handle.data["pid"]
    assert (task_dir / "output.log").read_text() == "hi\n"
    assert (task_dir / "exit").read_text().strip() == "2"

    await runtime.remove(handle)
    assert not task_dir.exists()


@PROCESS_ONLY
async def test_task_killed_with_its_wrapper_while_away_has_unknown_exit(
    new_runtime: Callable[..., Runtime],
) -> None:
    first = new_runtime()
    started = await first.start(make_launch("t1", ["sleep", "30"]))
    pid = started.data["pid"]
    os.killpg(pid, signal.SIGKILL)  # nothing can record this death
    assert await eventually_dead(pid)

    second = new_runtime()
    (adopted,) = await second.recover()
    observation = await second.inspect(adopted)
    assert not observation.running
    assert observation.exit is not None
    assert observation.exit.exit_code is None
    assert observation.exit.message == UNKNOWN_EXIT


@PROCESS_ONLY
async def test_stop_after_restart_records_the_kill(new_runtime: Callable[..., Runtime]) -> None:
    first = new_runtime()
    started = await first.start(sh('trap "" TERM; echo ready; while :; do sleep 0.05; done'))
    await wait_for_line(first, started, "ready")
    second = new_runtime()
    (adopted,) = await second.recover()
    await second.stop(adopted, "SIGTERM", 0.2)
    status = await finished(second, adopted)
    assert (status.exit_code, status.signal) == (137, 9)

    third = new_runtime()  # and the next restart still knows
    assert (await finished(third, adopted)).exit_code == 137


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not a task: what a reused pid points at."""
    process = subprocess.Popen(["sleep", "30"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def write_record(settings: RuntimeSettings, task_id: str, pid: int, ticks: int) -> None:
    task_dir = settings.state_dir / "tasks" / task_id
    task_dir.mkdir(parents=True)
    record = {
        "taskId": task_id,
        "pid": pid,
        "startTicks": ticks,
        "startedAt": "2024-01-01T00:00:00+00:00",
    }
    (task_dir / "record.json").write_text(json.dumps(record))


@PROCESS_ONLY
async def test_reused_pid_is_not_mistaken_for_the_task(
    runtime: Runtime, settings: RuntimeSettings, stranger: subprocess.Popen[bytes]
) -> None:
    write_record(settings, "ghost", stranger.pid, start_ticks(stranger.pid) - 1)
    (handle,) = await runtime.recover()
    observation = await runtime.inspect(handle)
    assert not observation.running
    assert observation.exit is not None and observation.exit.exit_code is None

    await runtime.stop(handle, "SIGKILL", 0.0)
    await runtime.remove(handle)
    assert stranger.poll() is None  # never signalled


@PROCESS_ONLY
async def test_unreadable_record_is_skipped(runtime: Runtime, settings: RuntimeSettings) -> None:
    broken = settings.state_dir / "tasks" / "broken"
    broken.mkdir(parents=True)
    (broken / "record.json").write_text("{not json")
    with structlog.testing.capture_logs() as logs:
        assert await runtime.recover() == []
    assert any(entry["event"].startswith("unreadable task record") for entry in logs)


# -- discovery ---------------------------------------------------------------


def test_process_runtime_is_discovered() -> None:
    assert available_runtime_classes()["process"] is ProcessRuntime
    assert runtime_catalogue()["process"] is False  # takes no container fields


def test_broken_plugin_is_logged_and_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "shoal_broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: shoal-broken-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[shoal.runtimes]\nbroken = shoal_broken_plugin_module:BrokenRuntime\n"
    )
    (tmp_path / "shoal_broken_plugin_module.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with structlog.testing.capture_logs() as logs:
        classes = available_runtime_classes()
    assert "process" in classes
    assert "broken" not in classes
    (entry,) = [e for e in logs if e.get("plugin") == "broken"]
    assert entry["log_level"] == "error"
    assert "boom" in entry["error"]
