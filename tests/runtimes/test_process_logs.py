"""When each line of a process task's log was written (``shoal.runtimes.processlogs``).

Real tasks (``sh`` scripts) print a line, wait until the test lets them go (a
file they poll), and print another. The test watches the log file itself from
outside, never through the runtime (a read would stamp what it finds), so what
the lines' times show is what the runtime's follower recorded. The gaps are
made by the test on purpose (a line, a pause, a line); nothing here measures
speed. The last tests are the index's own rules, on files alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shoal.models import TaskTemplate
from shoal.runtimes.base import LogLine, RuntimeSettings, TaskHandle, TaskLaunch
from shoal.runtimes.process import ProcessRuntime
from shoal.runtimes.processlogs import MAX_INDEX_BYTES, TimeIndex, TimeLookup

LIMIT = 10.0
GAP = timedelta(seconds=1)  # between two lines the test lets out one after the other
# A line is stamped at most this late by the follower (its interval, with room).
LATE = timedelta(seconds=0.6)
# Files' modification times come from the kernel's coarse clock, up to a tick
# (4 ms at HZ=250) behind the clock the test reads.
TICK = timedelta(milliseconds=10)


@pytest.fixture
async def new_runtime(tmp_path: Path) -> AsyncIterator[Callable[..., ProcessRuntime]]:
    """A process runtime on the test's state dir; a second one is an agent restart."""
    settings = RuntimeSettings(state_dir=tmp_path / "state", node_name="n1")
    made: list[ProcessRuntime] = []

    def make(**overrides: Any) -> ProcessRuntime:
        runtime = ProcessRuntime(dataclasses.replace(settings, **overrides))
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        for handle in await runtime.recover():
            with contextlib.suppress(Exception):
                await runtime.stop(handle, "SIGKILL", 0.0)
        await runtime.aclose()


def script_launch(script: str, workdir: Path) -> TaskLaunch:
    template = TaskTemplate(command=["sh", "-c", script], workdir=str(workdir))
    return TaskLaunch(task_id="t1", service="svc", slot=1, template=template, env={})


def gated(*lines: str) -> str:
    """A script that prints each line once the file ``go<N>`` exists (the first at once)."""
    steps = [f"echo {lines[0]}"]
    for number, line in enumerate(lines[1:], start=1):
        steps.append(f"while [ ! -e go{number} ]; do sleep 0.02; done; echo {line}")
    return "; ".join(steps)


async def printed(runtime: ProcessRuntime, text: str) -> datetime:
    """Until the log file holds ``text`` (read from outside); when that was seen."""
    log = runtime.settings.state_dir / "tasks" / "t1" / "output.log"
    async with asyncio.timeout(LIMIT):
        while True:
            if log.exists() and text in log.read_text().splitlines():
                break
            await asyncio.sleep(0.02)
    return datetime.now(UTC)


async def indexed(runtime: ProcessRuntime) -> None:
    """Until the task's time index covers all of its log (the follower has looked)."""
    task_dir = runtime.settings.state_dir / "tasks" / "t1"
    async with asyncio.timeout(LIMIT):
        while True:
            size = (task_dir / "output.log").stat().st_size
            index = task_dir / "output.times"
            if index.exists():
                entries = index.read_text().split()
                if entries and int(entries[-2]) >= size:
                    return
            await asyncio.sleep(0.02)


async def pause() -> None:
    """A gap the test makes between two lines: a little over ``GAP``."""
    await asyncio.sleep(GAP.total_seconds() + 0.1)


async def let_go(workdir: Path, number: int) -> datetime:
    """Release the task's next line; a time before it can have been written (by the
    file system's clock)."""
    before = datetime.now(UTC) - TICK
    (workdir / f"go{number}").touch()
    return before


async def exited(runtime: ProcessRuntime, handle: TaskHandle) -> None:
    async with asyncio.timeout(LIMIT):
        await runtime.wait(handle)


async def history(runtime: ProcessRuntime, handle: TaskHandle, **kwargs: Any) -> list[LogLine]:
    async with asyncio.timeout(LIMIT):
        return [line async for line in runtime.timed_logs(handle, **kwargs)]


def times(lines: list[LogLine]) -> dict[str, datetime]:
    stamped = {line.text: line.time for line in lines}
    assert all(at is not None for at in stamped.values())
    return {text: at for text, at in stamped.items() if at is not None}


async def test_each_line_carries_the_time_it_was_written(
    new_runtime: Callable[..., ProcessRuntime], tmp_path: Path
) -> None:
    runtime = new_runtime()
    handle = await runtime.start(script_launch(gated("first", "second"), tmp_path))
    seen = await printed(runtime, "first")
    await pause()  # the gap between the two lines
    between = await let_go(tmp_path, 1)
    await exited(runtime, handle)

    lines = await history(runtime, handle)
    assert [line.text for line in lines] == ["first", "second"]
    at = times(lines)
    assert at["first"] <= seen + LATE < between <= at["second"]
    assert at["second"] - at["first"] >= GAP
    # --since cuts between them; the history merge sorts on these times.
    assert [line.text for line in await history(runtime, handle, since=between)] == ["second"]
    assert [line.text for line in await history(runtime, handle, tail=1)] == ["second"]


async def test_an_adopted_task_keeps_its_times_and_is_followed_again(
    new_runtime: Callable[..., ProcessRuntime], tmp_path: Path
) -> None:
    first = new_runtime()
    handle = await first.start(script_launch(gated("before", "away1", "away2", "after"), tmp_path))
    seen = await printed(first, "before")
    await indexed(first)
    await first.aclose()  # the agent goes down; the task runs on
    await pause()

    away = await let_go(tmp_path, 1)  # two lines nobody follows, a gap between them
    await printed(first, "away1")
    await pause()
    await let_go(tmp_path, 2)
    await printed(first, "away2")

    second = new_runtime()  # the agent is back and adopts the task
    (adopted,) = await second.recover()
    await indexed(second)
    await pause()
    after = await let_go(tmp_path, 3)
    await exited(second, adopted)

    at = times(await history(second, adopted))
    assert list(at) == ["before", "away1", "away2", "after"]
    # Recorded while the first runtime followed, kept across the restart.
    assert at["before"] <= seen + LATE < away
    # Nobody followed these: both get the log's time when they were first seen, an
    # upper bound no earlier than what was recorded before.
    assert at["away1"] == at["away2"] >= at["before"]
    # Followed again after the adoption.
    assert at["away2"] + GAP <= after <= at["after"]
    assert [line.text for line in await history(second, handle, since=after)] == ["after"]


async def test_times_survive_copytruncate_and_the_index_goes_with_the_copy(
    new_runtime: Callable[..., ProcessRuntime], tmp_path: Path
) -> None:
    runtime = new_runtime(log_max_bytes=2000, log_files=2)
    burst = 'i=0; while [ $i -lt 100 ]; do echo "old $i ........................"; i=$((i+1)); done'
    script = (
        f"{burst}; while [ ! -e go1 ]; do sleep 0.02; done; echo new1; "
        "while [ ! -e go2 ]; do sleep 0.02; done; echo new2"
    )
    handle = await runtime.start(script_launch(script, tmp_path))
    task_dir = runtime.settings.state_dir / "tasks" / "t1"
    followed = runtime.timed_logs(handle, follow=True)
    async with asyncio.timeout(LIMIT):
        old = [await anext(followed) for _ in range(101)]  # the burst and the history mark
        while True:  # until rotated, by the follower or the reader's look
            if (task_dir / "output.log.1").exists():
                break
            await asyncio.sleep(0.02)
        await pause()
        new1 = await let_go(tmp_path, 1)
        await printed(runtime, "new1")
        await pause()
        new2 = await let_go(tmp_path, 2)
        rest = [line async for line in followed]
    await exited(runtime, handle)

    burst_times = [line.time for line in old if not line.history_end]
    assert len(burst_times) == 100
    at = times(rest)
    assert list(at) == ["new1", "new2"]
    assert all(t is not None and t + GAP <= new1 for t in burst_times)
    assert new1 <= at["new1"] and at["new1"] + GAP <= new2 <= at["new2"]

    # The copy's index went with it: it covers the copy, and the new log's index
    # starts again from offset 0, floored at the copy's last time.
    copied = (task_dir / "output.log.1").stat().st_size
    copy_entries = (task_dir / "output.times.1").read_text().split()
    assert int(copy_entries[-2]) == copied
    floor, first_new = (task_dir / "output.times").read_text().splitlines()[:2]
    assert floor == f"0 {copy_entries[-1]}"
    assert int(first_new.split()[1]) >= int(copy_entries[-1])
    # The history after the rotation: the new log only, each line its own time.
    again = await history(runtime, handle, since=new2)
    assert [line.text for line in again] == ["new2"]


# -- the index's own rules, on files ---------------------------------------------


def test_index_stays_bounded_and_its_times_stay_upper_bounds(tmp_path: Path) -> None:
    index = TimeIndex(tmp_path / "output.times")
    start = 1_700_000_000 * 10**9
    growths = [(10 * n, start + n * 250_000_000) for n in range(1, 40_001)]
    for size, ns in growths:
        index.observe(size, ns)
    assert index.path.stat().st_size <= MAX_INDEX_BYTES
    lookup = TimeLookup(index.path)
    previous = None
    for size, ns in growths[::97]:
        at = lookup.time_of(size - 1)  # the last byte of that growth
        assert at is not None
        assert at >= datetime.fromtimestamp(ns / 1e9, UTC) - timedelta(microseconds=1)
        assert previous is None or at >= previous
        previous = at
    # The newest growths are still timed exactly.
    assert lookup.time_of(growths[-1][0] - 1) == datetime.fromtimestamp(growths[-1][1] / 1e9, UTC)


def test_a_long_log_keeps_its_old_lines_times_close_however_often_it_is_compacted(
    tmp_path: Path,
) -> None:
    # A line a second for eleven hours: the index is compacted again and again.
    index = TimeIndex(tmp_path / "output.times")
    start = 1_700_000_000 * 10**9
    growths = [(100 * n, start + n * 10**9) for n in range(1, 40_001)]
    for size, ns in growths:
        index.observe(size, ns)
    lookup = TimeLookup(index.path)
    late = max(
        lookup.time_of(size - 1) - datetime.fromtimestamp(ns / 1e9, UTC)  # type: ignore[operator]
        for size, ns in growths
    )
    # The documented bound: about two spacings of (the older half's span) / 2,000.
    assert timedelta(0) <= late <= timedelta(seconds=2 * 40_000 / 2_000)


def test_zeros_a_crash_left_at_the_index_end_are_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "output.times"
    path.write_bytes(b"0 100\n10 2000000000\n25 3000000000\n" + b"\0" * 4096)
    index = TimeIndex(path)  # a restarted agent
    assert (index.size, index.last_ns) == (25, 3_000_000_000)
    index.observe(40, 4_000_000_000)
    lookup = TimeLookup(path)
    assert [lookup.time_of(offset) for offset in (5, 24, 39)] == [
        datetime.fromtimestamp(seconds, UTC) for seconds in (2, 3, 4)
    ]


def test_index_goes_on_after_a_torn_entry_and_never_goes_back(tmp_path: Path) -> None:
    path = tmp_path / "output.times"
    path.write_bytes(b"0 100\n10 2000000000\n25 3000000000\n40 30")  # killed mid-append
    index = TimeIndex(path)  # a restarted agent
    assert (index.size, index.last_ns) == (25, 3_000_000_000)
    index.observe(50, 2_500_000_000)  # a clock that went back is not believed
    index.observe(50, 9_000_000_000)  # no growth, no entry
    lookup = TimeLookup(path)
    assert [lookup.time_of(offset) for offset in (5, 24, 49)] == [
        datetime.fromtimestamp(seconds, UTC) for seconds in (2, 3, 3)
    ]
    assert lookup.time_of(50) is None  # nothing past the log's end


def test_a_log_truncated_behind_the_runtime_starts_a_new_index(tmp_path: Path) -> None:
    index = TimeIndex(tmp_path / "output.times")
    index.observe(100, 5_000_000_000)
    index.observe(20, 4_000_000_000)  # somebody truncated the log and it grew again
    assert index.path.read_text().splitlines() == ["0 5000000000", "20 5000000000"]
    assert TimeLookup(index.path).time_of(10) == datetime.fromtimestamp(5, UTC)
