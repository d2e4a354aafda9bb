"""A Sync applies a directory in dependsOn order and refuses a cycle with file and line.

The Sync controller goes through the same loader and apply plan as ``shoal
apply`` (``shoal.dependencies``), so its source is checked and ordered the
same way; the orchestrator then holds the dependent until its dependency runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.models import TaskState
from shoal.models.sync import Sync
from shoal.reconciler.orchestrator import Orchestrator
from shoal.reconciler.sources import SourceFetcher
from shoal.reconciler.sync import SyncController
from shoal.store.typed import Change
from tests.reconciler.world import World


def service_text(name: str, *needs: str) -> str:
    text = f"apiVersion: shoal/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n"
    if needs:
        text += "  dependsOn:\n" + "".join(f"    - service: {n}\n" for n in needs)
    return text + "  template:\n    runtime: sim\n    command: [work]\n"


@pytest.fixture
def controller(world: World, tmp_path: Path) -> SyncController:
    fetcher = SourceFetcher(tmp_path / "cache", git_timeout=20)
    return SyncController(world.informer, world.events, fetcher, clock=world.clock)


async def start(world: World, controller: SyncController, specs: Path) -> None:
    sync = Sync.model_validate(
        {"metadata": {"name": "prod", "generation": 1}, "spec": {"source": {"path": str(specs)}}}
    )
    await world.informer.commit([Change.put(sync, None)])
    await controller.reconcile("prod")


async def test_a_sync_applies_dependencies_first_and_the_dependent_waits(
    world: World, controller: SyncController, tmp_path: Path
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a-web.yaml").write_text(service_text("web", "api"))
    (specs / "b-api.yaml").write_text(service_text("api", "db"))
    (specs / "c-db.yaml").write_text(service_text("db"))
    await start(world, controller, specs)
    (applied,) = [e for e in world.events.for_object("sync/prod") if e.reason == "Applied"]
    assert applied.message.endswith("service/db created, service/api created, service/web created")
    orchestrator = Orchestrator(world.informer, world.events, clock=world.clock)
    for name in ("web", "api", "db"):  # the dependents first: they wait
        await orchestrator.reconcile(name)
    assert world.tasks("web") == world.tasks("api") == [] and len(world.tasks("db")) == 1
    await world.report(world.tasks("db")[0], TaskState.RUNNING)
    await orchestrator.reconcile("api")
    await orchestrator.reconcile("web")
    assert len(world.tasks("api")) == 1 and world.tasks("web") == []


async def test_a_cycle_in_the_source_applies_nothing(
    world: World, controller: SyncController, tmp_path: Path
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "web.yaml").write_text(service_text("web", "db"))
    (specs / "db.yaml").write_text(service_text("db", "web"))
    await start(world, controller, specs)
    assert world.informer.services == {}
    status = world.informer.syncs["prod"].obj.status
    assert status is not None
    ready = status.condition("Ready")
    assert ready is not None and ready.reason == "ValidationFailed"
    # db.yaml sorts first: its entry (line 7) closes the cycle db → web → db.
    assert f"{specs / 'db.yaml'}:7: spec.dependsOn[0].service: dependency cycle db → web → db" in (
        ready.message
    )
