"""The job reconciler with the real orchestrator, the memory store and a virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.models import Service, TaskState
from shoal.models.job import JobRun, JobStatus
from tests.rollout.world import START, World


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    await w.start()
    yield w
    await w.aclose()


def job_doc(name: str, command: list[str], mode: str = "replicated-job", **job: Any) -> Service:
    return Service.model_validate(
        {
            "metadata": {"name": name, "createdAt": START.isoformat()},
            "spec": {
                "mode": mode,
                "template": {"command": command},
                "restartPolicy": {"delay": "1s"},
                "job": job,
            },
        }
    )


def job_status(world: World, name: str) -> JobStatus:
    status = world.service(name).status
    assert status is not None and status.job is not None
    return status.job


def live(world: World, name: str) -> int:
    return sum(1 for t in world.tasks(name) if not t.status.state.terminal)


def run(world: World, name: str, number: int) -> JobRun:
    return next(r for r in job_status(world, name).runs if r.number == number)


async def test_completions_five_at_most_two_at_once_ends_succeeded(world: World) -> None:
    await world.apply(job_doc("batch", ["succeed-after", "2"], completions=5, maxConcurrent=2))
    await world.advance(12)
    assert max(s["batch"]["running"][("succeed-after", "2")] for s in world.samples) == 2
    first = run(world, "batch", 1)
    assert first.state == "succeeded"
    assert first.succeeded == 5 and first.failed == 0
    complete = [t for t in world.tasks("batch") if t.status.state == TaskState.COMPLETE]
    assert sorted(t.slot for t in complete) == [1, 2, 3, 4, 5]
    assert {t.job_run for t in complete} == {1}


async def test_a_job_that_always_fails_stops_after_backoff_limit(world: World) -> None:
    await world.apply(job_doc("bad", ["exit-after", "0.5"], backoffLimit=2))
    await world.advance(30)
    first = run(world, "bad", 1)
    assert first.state == "failed"
    assert "backoffLimit 2 exceeded" in first.reason
    failed = [t for t in world.tasks("bad") if t.status.state == TaskState.FAILED]
    assert len(failed) == 3
    assert live(world, "bad") == 0


async def test_active_deadline_fails_the_run_and_stops_its_tasks(world: World) -> None:
    await world.apply(job_doc("slow", ["serve"], activeDeadline="3s"))
    await world.advance(4)
    first = run(world, "slow", 1)
    assert first.state == "failed" and "activeDeadline 3s" in first.reason
    assert live(world, "slow") == 0


async def test_every_five_seconds_with_a_twelve_second_task_and_forbid(world: World) -> None:
    await world.apply(
        job_doc("tick", ["succeed-after", "12"], schedule="@every 5s", concurrencyPolicy="Forbid")
    )
    await world.advance(40)
    status = job_status(world, "tick")
    assert max(s["tick"]["running"][("succeed-after", "12")] for s in world.samples) == 1
    assert status.skipped >= 4
    succeeded = [r for r in status.runs if r.state == "succeeded"]
    assert len(succeeded) >= 2
    for a, b in zip(status.runs, status.runs[1:], strict=False):
        assert a.finished_at is not None and a.finished_at <= b.started_at  # never overlap


async def test_suspend_stops_new_runs(world: World) -> None:
    await world.apply(job_doc("tick", ["succeed-after", "1"], schedule="@every 5s"))
    await world.advance(11)
    before = len(job_status(world, "tick").runs)
    assert before >= 2
    await world.apply(job_doc("tick", ["succeed-after", "1"], schedule="@every 5s", suspend=True))
    await world.advance(20)
    assert len(job_status(world, "tick").runs) == before
    assert job_status(world, "tick").next_run_at is None


async def test_after_an_outage_at_most_one_missed_run_within_starting_deadline(
    world: World,
) -> None:
    doc = job_doc("nightly", ["succeed-after", "1"], schedule="@every 60s", startingDeadline="30s")
    await world.apply(doc)
    await world.advance(61)
    assert len(job_status(world, "nightly").runs) == 1
    # The managers are down for ten minutes; the new leader comes back 20 s after a run time.
    world.clock.advance(600 - 1 + 20)
    await world.new_leader()
    await world.settle()
    status = job_status(world, "nightly")
    assert len(status.runs) == 2  # one catch-up run, not ten
    # Down again, back 45 s after a run time: past startingDeadline, skipped.
    await world.advance(5)
    world.clock.advance(300 - 5 + 20)
    await world.new_leader()
    await world.settle()
    status = job_status(world, "nightly")
    assert len(status.runs) == 2
    assert status.skipped == 1


async def test_global_job_runs_once_on_each_eligible_node(world: World) -> None:
    from shoal.store.typed import Change
    from tests.reconciler.world import node

    for name in ("a", "b"):  # and the world's own n1
        await world.informer.commit([Change.put(node(name), 0)])
    await world.apply(job_doc("everywhere", ["succeed-after", "1"], mode="global-job"))
    await world.advance(5)
    first = run(world, "everywhere", 1)
    assert first.state == "succeeded" and first.succeeded == 3
    done = [t for t in world.tasks("everywhere") if t.status.state == TaskState.COMPLETE]
    assert sorted(t.node_id or "" for t in done) == ["a", "b", "n1"]


async def test_job_run_starts_one_now_and_history_is_bounded(world: World) -> None:
    from shoal.manager.jobs import JobControl

    await world.apply(job_doc("once", ["succeed-after", "1"], successfulRunsHistoryLimit=2))
    await world.advance(3)
    control = JobControl(world.informer, world.orchestrator.events, clock=world.clock)
    for _ in range(3):
        await control.run_job({"name": "once"}, None)  # type: ignore[arg-type]
        await world.advance(3)
    status = job_status(world, "once")
    assert [r.number for r in status.runs] == [3, 4]
    assert all(r.state == "succeeded" for r in status.runs)
    assert {t.job_run for t in world.tasks("once")} == {3, 4}


async def test_a_template_change_starts_the_next_run(world: World) -> None:
    await world.apply(job_doc("mig", ["succeed-after", "1"]))
    await world.advance(3)
    await world.apply(job_doc("mig", ["succeed-after", "2"]))
    await world.advance(4)
    assert [r.state for r in job_status(world, "mig").runs] == ["succeeded", "succeeded"]


async def test_replace_ends_the_active_run_when_the_next_one_is_due(world: World) -> None:
    await world.apply(
        job_doc(
            "tock",
            ["succeed-after", "12"],
            schedule="@every 5s",
            concurrencyPolicy="Replace",
            failedRunsHistoryLimit=10,
        )
    )
    await world.advance(17)
    status = job_status(world, "tock")
    assert max(s["tock"]["running"][("succeed-after", "12")] for s in world.samples) == 1
    replaced = [(r.number, r.reason) for r in status.runs if r.state == "failed"]
    assert replaced == [(1, "replaced by run 2"), (2, "replaced by run 3")]
    assert status.skipped == 0
    assert all(r.state != "succeeded" for r in status.runs)  # none lived its 12 s
    assert live(world, "tock") == 1


async def test_ttl_after_finished_deletes_a_finished_runs_tasks_and_keeps_its_record(
    world: World,
) -> None:
    await world.apply(job_doc("once", ["succeed-after", "1"], ttlAfterFinished="10s"))
    await world.advance(5)
    assert run(world, "once", 1).state == "succeeded"
    assert len(world.tasks("once")) == 1
    await world.advance(10)
    assert world.tasks("once") == []
    first = run(world, "once", 1)
    assert first.state == "succeeded" and first.cleaned
