"""The slot updater with the real orchestrator, the memory store and a virtual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shoal.models.rollout import UpdateState
from shoal.models.task import TaskState
from tests.rollout.world import World, service_doc

OLD = ["serve", "v1"]
NEW = ["serve", "v2"]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    await w.start()
    yield w
    await w.aclose()


async def deployed(world: World, name: str, replicas: int = 5, **spec: object) -> None:
    await world.apply(service_doc(name, OLD, replicas, **spec))
    await world.advance(1)
    assert len(world.running(name, OLD)) == replicas
    world.samples.clear()


async def test_stop_first_replaces_two_slots_at_a_time_and_never_runs_fewer_than_three(
    world: World,
) -> None:
    update = {"parallelism": 2, "monitor": "5s"}
    await deployed(world, "web", update=update)

    await world.apply(service_doc("web", NEW, update=update))
    assert world.update("web").state == UpdateState.UPDATING
    assert world.update("web").revision == 2
    await world.advance(30)

    running = [s["web"]["slots_running"] for s in world.samples]
    new_counts = [s["web"]["running"][tuple(NEW)] for s in world.samples]
    assert min(running) >= 3
    assert sorted(set(new_counts)) == [0, 2, 4, 5] or sorted(set(new_counts)) == [2, 4, 5]
    assert world.update("web").state == UpdateState.COMPLETED
    assert world.update("web").updated == world.update("web").total == 5
    assert len(world.running("web", NEW)) == 5
    assert not [
        t for t in world.tasks("web") if t.template.command == OLD and not t.status.state.terminal
    ]
    # Three batches of one 5 s monitor window each: completed after 15 s, not before.
    done = next(i for i, s in enumerate(world.samples) if s["web"]["state"] == "completed")
    assert 15 <= (done + 1) * 0.25 <= 17


async def test_start_first_keeps_every_slot_running_until_the_new_task_runs(world: World) -> None:
    update = {"parallelism": 2, "monitor": "1s", "order": "start-first"}
    await deployed(world, "web", update=update)
    await world.apply(service_doc("web", NEW, update=update))
    await world.advance(10)
    assert min(s["web"]["slots_running"] for s in world.samples) == 5
    assert max(sum(s["web"]["running"].values()) for s in world.samples) <= 7
    assert world.update("web").state == UpdateState.COMPLETED
    assert len(world.running("web", NEW)) == 5


async def test_failing_revision_rolls_back_by_itself_to_the_previous_revision(world: World) -> None:
    update = {"parallelism": 2, "monitor": "3s", "failureAction": "rollback"}
    rollback = {"parallelism": 3, "monitor": "1s"}
    await deployed(world, "web", update=update, rollback=rollback)
    await world.apply(service_doc("web", ["exit-after", "1"], update=update, rollback=rollback))
    await world.advance(20)

    update_status = world.update("web")
    assert update_status.state == UpdateState.ROLLBACK_COMPLETED
    assert update_status.revision == 1
    assert world.service("web").spec.template.command == OLD
    assert len(world.running("web", OLD)) == 5
    states = [s["web"]["state"] for s in world.samples]
    assert "rollback_started" in states
    # Never more than parallelism (2) slots without a running task.
    assert min(s["web"]["slots_running"] for s in world.samples) >= 3


async def test_pause_on_the_failure_that_exceeds_the_ratio_and_resume(world: World) -> None:
    update = {"parallelism": 1, "monitor": "2s", "maxFailureRatio": 0.25}
    await deployed(world, "web", update=update)
    await world.apply(service_doc("web", ["exit-after", "1"], update=update))
    await world.advance(1.5)
    # The first failure (1/5 = 0.2) is tolerated.
    first = world.update("web")
    assert len(first.failed_tasks) >= 1
    assert first.state == UpdateState.UPDATING
    await world.advance(10)
    paused = world.update("web")
    assert paused.state == UpdateState.PAUSED
    assert len(paused.failed_tasks) == 2
    failed = {t.name for t in world.tasks("web") if t.id in paused.failed_tasks}
    assert any(name in paused.message for name in failed)
    assert "exit code 3" in paused.message
    before = {t.id for t in world.tasks("web")}
    await world.advance(5)
    # Paused: only the failed slots' own restarts, no new slot is picked.
    assert sum(1 for t in world.running("web", OLD)) >= 4

    # resume forgives the counted failures and goes on (and fails again here).
    control = world.rollouts()
    await control.rollout({"name": "web", "action": "resume"}, None)  # type: ignore[arg-type]
    await world.settle()
    assert world.update("web").state == UpdateState.UPDATING
    await world.advance(6)
    assert {t.id for t in world.tasks("web")} - before


async def test_one_replica_that_exits_after_one_second_is_paused_never_completed(
    world: World,
) -> None:
    await deployed(world, "one", replicas=1)
    await world.apply(service_doc("one", ["exit-after", "1"], replicas=1))
    await world.advance(12)
    states = {s["one"]["state"] for s in world.samples}
    assert "completed" not in states
    assert world.update("one").state == UpdateState.PAUSED


async def test_canaries_run_beside_the_old_tasks_until_promoted(world: World) -> None:
    update = {"parallelism": 3, "monitor": "1s", "canary": 2}
    await deployed(world, "web", replicas=10, update=update)
    await world.apply(service_doc("web", NEW, replicas=10, update=update))
    await world.advance(10)
    assert world.update("web").state == UpdateState.AWAITING_PROMOTION
    assert len(world.running("web", OLD)) == 10
    assert len(world.running("web", NEW)) == 2

    control = world.rollouts()
    await control.rollout({"name": "web", "action": "promote"}, None)  # type: ignore[arg-type]
    await world.advance(15)
    assert world.update("web").state == UpdateState.COMPLETED
    assert len(world.running("web", NEW)) == 10
    assert world.running("web", OLD) == []
    assert max(sum(s["web"]["running"].values()) for s in world.samples) <= 12


async def test_auto_promote_promotes_once_the_canaries_are_healthy(world: World) -> None:
    update = {"parallelism": 5, "monitor": "1s", "canary": 1, "autoPromote": True}
    await deployed(world, "web", replicas=4, update=update)
    await world.apply(service_doc("web", NEW, replicas=4, update=update))
    await world.advance(10)
    assert world.update("web").state == UpdateState.COMPLETED
    assert world.update("web").promoted
    assert len(world.running("web", NEW)) == 4


async def test_progress_deadline_fails_an_update_that_never_becomes_healthy(world: World) -> None:
    update = {"monitor": "1s", "progressDeadline": "3s", "failureAction": "rollback"}
    await deployed(world, "web", replicas=2, update=update)
    await world.apply(service_doc("web", ["never-healthy"], replicas=2, update=update))
    await world.advance(3.5)
    status = world.update("web")
    assert status.state in (UpdateState.ROLLBACK_STARTED, UpdateState.ROLLBACK_COMPLETED)
    assert "progressDeadline 3s" in status.message
    assert "starting" in status.message
    await world.advance(15)
    assert world.update("web").state == UpdateState.ROLLBACK_COMPLETED


async def test_rollback_of_a_failing_previous_revision_pauses(world: World) -> None:
    update = {"monitor": "2s", "failureAction": "rollback", "progressDeadline": "30s"}
    rollback = {"monitor": "2s"}
    bad = ["exit-after", "1"]
    await world.apply(service_doc("web", bad, replicas=1, update=update, rollback=rollback))
    await world.advance(1)
    await world.apply(
        service_doc(
            "web",
            ["never-healthy"],
            replicas=1,
            update={**update, "progressDeadline": "2s"},
            rollback=rollback,
        )
    )
    await world.advance(30)
    status = world.update("web")
    assert status.state == UpdateState.ROLLBACK_PAUSED
    assert "rollback paused" in status.message
    assert world.service("web").spec.template.command == bad


async def test_a_new_apply_supersedes_the_update_under_way(world: World) -> None:
    update = {"parallelism": 1, "monitor": "5s"}
    await deployed(world, "web", update=update)
    await world.apply(service_doc("web", NEW, update=update))
    await world.advance(6)
    third = ["serve", "v3"]
    await world.apply(service_doc("web", third, update=update))
    status = world.update("web")
    assert status.revision == 3 and status.previous_revision == 2
    await world.advance(40)
    assert world.update("web").state == UpdateState.COMPLETED
    assert len(world.running("web", third)) == 5


async def test_a_new_leader_resumes_from_the_store_and_paused_stays_paused(world: World) -> None:
    update = {"parallelism": 1, "monitor": "2s"}
    await deployed(world, "web", update=update)
    await world.apply(service_doc("web", NEW, update=update))
    await world.advance(3)
    await world.new_leader()
    await world.advance(15)
    assert world.update("web").state == UpdateState.COMPLETED
    for sample in world.samples:
        assert max(sample["web"]["live_per_slot"].values()) <= 1

    await world.apply(service_doc("web", ["exit-after", "1"], update=update))
    await world.advance(5)
    assert world.update("web").state == UpdateState.PAUSED
    count = len(world.tasks("web"))
    await world.new_leader()
    await world.advance(5)
    assert world.update("web").state == UpdateState.PAUSED
    assert len(world.running("web", NEW)) >= 4
    assert len(world.tasks("web")) <= count + 2  # only the failed slot's restarts


async def test_stop_first_starts_the_new_task_only_after_the_old_one_stopped(world: World) -> None:
    update = {"monitor": "1s"}
    await world.apply(service_doc("web", ["ignore-term"], replicas=1, update=update))
    await world.advance(1)
    await world.apply(service_doc("web", NEW, replicas=1, update=update))
    await world.advance(1)
    # The old task ignores SIGTERM for its 2 s grace: no new task runs meanwhile.
    assert world.running("web", NEW) == []
    await world.advance(1.5)
    assert len(world.running("web", NEW)) == 1
    await world.advance(2)
    assert world.update("web").state == UpdateState.COMPLETED


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"replicas": 6}, id="replicas"),
        pytest.param({"placement": {"constraints": ["node.role != manager"]}}, id="placement"),
        pytest.param({"restartPolicy": {"delay": "3s"}}, id="restart-policy"),
    ],
)
async def test_changes_outside_the_template_restart_nothing(
    world: World, change: dict[str, object]
) -> None:
    await deployed(world, "web")
    before = {t.id for t in world.running("web")}
    spec = {"replicas": 5, **change}
    replicas = int(spec.pop("replicas"))  # type: ignore[call-overload]
    await world.apply(service_doc("web", OLD, replicas, **spec))
    await world.advance(2)
    assert before <= {t.id for t in world.running("web")}
    status = world.service("web").status
    assert status is not None and status.revision == 1 and status.update is None


async def test_label_only_change_restarts_nothing(world: World) -> None:
    await deployed(world, "web")
    before = {t.id for t in world.running("web")}
    doc = service_doc("web", OLD)
    labeled = doc.model_copy(
        update={"metadata": doc.metadata.model_copy(update={"labels": {"team": "a"}})}
    )
    await world.apply(labeled)
    await world.advance(2)
    assert {t.id for t in world.running("web")} == before


async def test_revisions_are_numbered_with_their_cause_and_trimmed_to_the_limit(
    world: World,
) -> None:
    for version in range(1, 6):
        await world.apply(
            service_doc(
                "web", ["serve", f"v{version}"], 1, revisionHistoryLimit=3, update={"monitor": "0s"}
            ),
            cause=f"apply -f v{version}.yaml",
        )
        await world.advance(1)
    status = world.service("web").status
    assert status is not None
    assert [r.number for r in status.revisions] == [3, 4, 5]
    assert status.revisions[-1].cause == "apply -f v5.yaml"
    assert status.revision == 5


async def test_undo_goes_back_to_a_kept_revision_in_batches(world: World) -> None:
    update = {"parallelism": 2, "monitor": "1s"}
    rollback = {"parallelism": 2, "monitor": "1s"}
    await deployed(world, "web", update=update, rollback=rollback)
    await world.apply(service_doc("web", NEW, update=update, rollback=rollback))
    await world.advance(10)
    world.samples.clear()
    control = world.rollouts()
    answer = await control.rollout({"name": "web", "action": "undo", "toRevision": 1}, None)  # type: ignore[arg-type]
    assert answer["state"] == "rollback_started"
    await world.advance(10)
    assert world.update("web").state == UpdateState.ROLLBACK_COMPLETED
    assert len(world.running("web", OLD)) == 5
    assert min(s["web"]["slots_running"] for s in world.samples) >= 3


async def test_restart_replaces_every_task_at_the_update_pace(world: World) -> None:
    update = {"parallelism": 2, "monitor": "1s"}
    await deployed(world, "web", update=update)
    before = {t.id for t in world.running("web")}
    control = world.rollouts()
    await control.rollout({"name": "web", "action": "restart"}, None)  # type: ignore[arg-type]
    await world.advance(10)
    assert world.update("web").state == UpdateState.COMPLETED
    after = {t.id for t in world.running("web")}
    assert len(after) == 5 and not (after & before)
    assert min(s["web"]["slots_running"] for s in world.samples) >= 3


async def test_pause_by_a_user_holds_the_update(world: World) -> None:
    update = {"parallelism": 1, "monitor": "2s"}
    await deployed(world, "web", update=update)
    await world.apply(service_doc("web", NEW, update=update))
    await world.advance(1)
    control = world.rollouts()
    await control.rollout({"name": "web", "action": "pause"}, None)  # type: ignore[arg-type]
    await world.advance(10)
    assert world.update("web").state == UpdateState.PAUSED
    assert len(world.running("web", NEW)) == 1
    await control.rollout({"name": "web", "action": "resume"}, None)  # type: ignore[arg-type]
    await world.advance(12)
    assert world.update("web").state == UpdateState.COMPLETED
    _ = TaskState
