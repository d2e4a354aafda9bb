"""Plain processes isolated like containers: their user, and cgroup limits (real kernel).

Everything is read from the outside: the uid of the task's process in
``/proc/<pid>/status``, the processes in its cgroup, the cgroup's own files,
and the exit status the runtime reports. Needs root (to switch users and write
cgroups), as the agent does to use these features.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shoal.errors import TaskRejectedError
from shoal.models import TaskTemplate
from shoal.runtimes.base import RuntimeSettings, TaskHandle, TaskLaunch
from shoal.runtimes.isolation import Cgroups
from shoal.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users and cgroups need root")
LIMIT = 30.0
T = TypeVar("T")


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    node = f"iso-{os.getpid()}-{tmp_path.name[-12:]}"
    made = ProcessRuntime(RuntimeSettings(state_dir=tmp_path / "state", node_name=node))
    yield made
    for handle in await made.recover():
        await made.stop(handle, "SIGKILL", 0)
        await made.remove(handle)
    await made.aclose()


def launch(task_id: str, script: str, **template: Any) -> TaskLaunch:
    spec = TaskTemplate.model_validate({"command": ["sh", "-c", script], **template})
    return TaskLaunch(task_id=task_id, service="iso", slot=1, template=spec, env={})


def python(task_id: str, code: str, **template: Any) -> TaskLaunch:
    spec = TaskTemplate.model_validate({"command": [sys.executable, "-c", code], **template})
    return TaskLaunch(task_id=task_id, service="iso", slot=1, template=spec, env={})


def children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (the wrapper's child is the task's command)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.append(int(name))
    return found


def ids_of(pid: int) -> tuple[int, int, list[int]]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (
        int(status["Uid"].split()[0]),
        int(status["Gid"].split()[0]),
        [int(g) for g in status["Groups"].split()],
    )


async def until(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll ``check`` until it returns something; fail after ``LIMIT`` seconds."""
    for _ in range(int(LIMIT / 0.05)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def command_pid(runtime: ProcessRuntime, handle: TaskHandle) -> int:
    """The pid of the task's command (the wrapper's only child), once it runs the command:
    the child is first the wrapper's fork, then ``setpriv``, and only then the command,
    with the task's ids."""
    wrapper = (await runtime.inspect(handle)).pid
    assert wrapper is not None

    def runs_the_command(pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"shoal-task" not in argv and os.path.basename(argv[0]) != b"setpriv"

    async def child() -> list[int]:
        found = children(wrapper)
        return found if len(found) == 1 and runs_the_command(found[0]) else []

    (pid,) = await until(child, "the task's command")
    return pid


async def output(runtime: ProcessRuntime, handle: TaskHandle) -> str:
    async with asyncio.timeout(LIMIT):
        return "\n".join([line async for line in runtime.logs(handle)])


async def output_with(runtime: ProcessRuntime, handle: TaskHandle, word: str) -> str:
    async def check() -> str | None:
        text = await output(runtime, handle)
        return text if word in text else None

    return await until(check, f"{word!r} in the output")


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def test_process_task_runs_as_the_user_it_names(runtime: ProcessRuntime) -> None:
    nobody = pwd.getpwnam("nobody")
    handle = await runtime.start(launch("u1", "sleep 60", user="nobody"))
    uid, gid, groups = ids_of(await command_pid(runtime, handle))
    assert (uid, gid) == (nobody.pw_uid, nobody.pw_gid)
    assert groups == os.getgrouplist("nobody", nobody.pw_gid)
    # The exit-status wrapper stays root, so it can record the status in the state dir.
    wrapper = (await runtime.inspect(handle)).pid
    assert wrapper is not None and ids_of(wrapper)[0] == 0


async def test_numeric_user_and_group_and_its_environment(runtime: ProcessRuntime) -> None:
    handle = await runtime.start(
        launch("u2", 'echo "ids $(id -u):$(id -g) home=$HOME"; touch ./made-here', user="4242:4343")
    )
    status = await asyncio.wait_for(runtime.wait(handle), LIMIT)
    assert status.exit_code == 0, await output(runtime, handle)
    assert "ids 4242:4343" in await output(runtime, handle)
    # The default workdir belongs to the task's user: it could create a file there.
    made = runtime.settings.state_dir / "tasks" / "u2" / "work" / "made-here"
    assert made.stat().st_uid == 4242


async def test_agent_default_user_applies_when_the_spec_names_none(tmp_path: Path) -> None:
    settings = RuntimeSettings(
        state_dir=tmp_path / "state", node_name="iso-default", options={"user": "nobody"}
    )
    runtime = ProcessRuntime(settings)
    handle = await runtime.start(launch("u3", "sleep 60"))
    try:
        assert ids_of(await command_pid(runtime, handle))[0] == pwd.getpwnam("nobody").pw_uid
    finally:
        await runtime.stop(handle, "SIGKILL", 0)
        await runtime.remove(handle)


async def test_unknown_user_is_rejected_naming_it(runtime: ProcessRuntime) -> None:
    with pytest.raises(TaskRejectedError, match="user 'no-such-user' does not exist"):
        await runtime.start(launch("u4", "true", user="no-such-user"))
    with pytest.raises(TaskRejectedError, match="group 'no-such-group' does not exist"):
        await runtime.start(launch("u5", "true", user="nobody:no-such-group"))


async def test_memory_limit_ooms_the_task_and_says_so(runtime: ProcessRuntime) -> None:
    handle = await runtime.start(
        python(
            "m1",
            "import time\nchunks = []\nwhile True:\n    chunks.append(bytearray(b'x') * 2**20)",
            resources={"limits": {"memory": "64Mi"}},
        )
    )
    status = await asyncio.wait_for(runtime.wait(handle), LIMIT)
    assert status.oom_killed
    assert status.exit_code == 137 and status.signal == 9
    assert status.message == "killed by the OOM killer: out of memory (limit 64Mi)"
    # The record survives the agent: a restarted runtime says the same.
    again = ProcessRuntime(runtime.settings)
    (recovered,) = await again.recover()
    assert (await again.inspect(recovered)).exit == status


async def test_task_that_is_killed_without_oom_is_not_called_oom(
    runtime: ProcessRuntime,
) -> None:
    handle = await runtime.start(launch("m2", "sleep 60", resources={"limits": {"memory": "64Mi"}}))
    await runtime.stop(handle, "SIGKILL", 0)
    status = await runtime.wait(handle)
    assert status.signal == 9 and not status.oom_killed
    assert "OOM" not in status.message


async def test_pids_limit_stops_the_21st_process(runtime: ProcessRuntime) -> None:
    code = (
        "import os, time\n"
        "forked = 0\n"
        "for _ in range(40):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        forked += 1\n"
        "    except OSError as exc:\n"
        "        print('fork refused:', exc.strerror, flush=True)\n"
        "        break\n"
        "print('forked', forked, flush=True)\n"
        "time.sleep(60)\n"
    )
    handle = await runtime.start(
        python("p1", code, resources={"limits": {"pids": 20, "cpus": 0.5}})
    )
    text = await output_with(runtime, handle, "forked")
    assert "forked 19" in text and "fork refused" in text
    cgroups = runtime.cgroups()
    assert isinstance(cgroups, Cgroups)
    # Counted from the kernel: the task and its 19 children, nothing more.
    assert len(cgroups.members("p1")) == 20
    cpu_dir = cgroups._dirs("p1")["cpu"]
    if cgroups.version == 1:
        assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "50000"
    else:
        assert (cpu_dir / "cpu.max").read_text().split() == ["50000", "100000"]
    await runtime.stop(handle, "SIGTERM", 1.0)
    await runtime.remove(handle)
    assert not cpu_dir.exists()  # the task's cgroup goes with it


async def test_process_that_leaves_its_group_still_dies_with_a_limited_task(
    runtime: ProcessRuntime,
) -> None:
    handle = await runtime.start(
        launch(
            "s1",
            "setsid sh -c 'echo escaped $$; sleep 300' & sleep 300",
            resources={"limits": {"pids": 50}},
        )
    )
    text = await output_with(runtime, handle, "escaped")
    escaped = int(text.split("escaped")[1].split()[0])
    await runtime.stop(handle, "SIGTERM", 1.0)

    async def gone() -> bool:
        return not running(escaped)

    await until(gone, "the process that left its group to be killed")


def test_cgroup_detection_reads_this_machine() -> None:
    found = Cgroups.detect("shoal-test")
    assert isinstance(found, Cgroups), found
    unified = any(
        line.split(" - ")[1].split()[0] == "cgroup2" and line.split()[4] == "/sys/fs/cgroup"
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    # A pure v2 machine mounts cgroup2 at /sys/fs/cgroup; this one may be v1 or hybrid.
    assert found.version == (2 if unified else found.version)
    assert set(found.mounts) == {"memory", "pids", "cpu"}
