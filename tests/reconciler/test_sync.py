"""The Sync controller on its own: memory store, a manual clock, real directories and git.

Each test writes a Sync into a memory store, lays out its source (a directory
in ``tmp_path``, or a real git repository fetched with the ``git`` program over
``file://``), calls ``reconcile`` and looks at what the store holds. The
orchestrator makes the tasks and the test plays the agent, so health moves
from Progressing to Healthy the way it does on a cluster. The clock is a
``ManualClock``: intervals and timeouts pass without waiting.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from shoal.models import Service, TaskState
from shoal.models.sync import Sync, SyncSource, SyncStatus
from shoal.reconciler.loop import Requeue
from shoal.reconciler.orchestrator import Orchestrator
from shoal.reconciler.sources import Fetched, SourceFetcher
from shoal.reconciler.sync import SyncController
from shoal.store.typed import Change
from tests.gitserver import git_http_server
from tests.reconciler.world import World

INTERVAL = 60.0


def service_text(name: str, replicas: int = 1, command: str = "work") -> str:
    return (
        "apiVersion: shoal/v1\n"
        "kind: Service\n"
        "metadata:\n"
        f"  name: {name}\n"
        "spec:\n"
        f"  replicas: {replicas}\n"
        "  template:\n"
        "    runtime: sim\n"
        f"    command: [{command}]\n"
    )


def sync(name: str = "prod", source: dict[str, Any] | None = None, **spec: Any) -> Sync:
    return Sync.model_validate(
        {
            "metadata": {"name": name, "generation": 1},
            "spec": {"source": source or {}, "interval": f"{INTERVAL:g}s", **spec},
        }
    )


@pytest.fixture
def controller(world: World, tmp_path: Path) -> SyncController:
    fetcher = SourceFetcher(tmp_path / "cache", git_timeout=20)
    return SyncController(world.informer, world.events, fetcher, clock=world.clock)


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    directory = tmp_path / "specs"
    directory.mkdir()
    (directory / "web.yaml").write_text(service_text("web"))
    (directory / "db.yaml").write_text(service_text("db"))
    return directory


def status(world: World, name: str = "prod") -> SyncStatus:
    found = world.informer.syncs[name].obj.status
    assert found is not None
    return found


def condition(world: World, kind: str, name: str = "prod") -> tuple[str, str, str]:
    found = status(world, name).condition(kind)
    assert found is not None
    return found.status, found.reason, found.message


def replicas(world: World, name: str) -> int | None:
    entry = world.informer.service(name)
    return entry.obj.spec.replicas if entry else None


async def run_everything(world: World) -> None:
    """The orchestrator makes the tasks and every task reports running."""
    orchestrator = Orchestrator(world.informer, world.events, clock=world.clock)
    for name in list(world.informer.services):
        await orchestrator.reconcile(name)
        for task in world.live(name):
            if task.status.state != TaskState.RUNNING:
                await world.report(task, TaskState.RUNNING)


async def put(world: World, obj: Sync | Service) -> None:
    await world.informer.commit([Change.put(obj, None)])


async def edit(world: World, name: str, **spec: Any) -> None:
    """Change a Sync's spec as an apply would (a new generation)."""
    entry = world.informer.syncs[name]
    current = entry.obj
    data = current.spec.model_dump(by_alias=True)
    data.update(spec)
    meta = current.metadata.model_copy(
        update={"generation": (current.metadata.generation or 0) + 1}
    )
    updated = current.model_copy(
        update={"spec": type(current.spec).model_validate(data), "metadata": meta}
    )
    await world.informer.commit([Change.put(updated, entry.revision)])


async def test_directory_source_is_applied_then_healthy(
    world: World, controller: SyncController, specs: Path
) -> None:
    await put(world, sync(source={"path": str(specs)}))
    outcome = await controller.reconcile("prod")
    assert sorted(world.informer.services) == ["db", "web"]
    first = status(world)
    assert first.last_applied_revision == first.last_attempted_revision
    assert first.last_applied_revision is not None and first.last_applied_revision.startswith(
        "sha256:"
    )
    assert first.inventory == ["service/db", "service/web"]
    assert first.health == "Progressing"
    assert condition(world, "Ready")[:2] == ("Unknown", "Progressing")
    assert condition(world, "Reconciling")[0] == "True"
    assert isinstance(outcome, Requeue) and outcome.after <= INTERVAL

    await run_everything(world)
    await controller.reconcile("prod")  # not due: only health is looked at again
    assert status(world).health == "Healthy"
    assert condition(world, "Ready")[:2] == ("True", "ReconciliationSucceeded")
    assert condition(world, "Stalled")[0] == "False"
    assert condition(world, "Reconciling")[0] == "False"
    assert status(world).last_attempted_at == first.last_attempted_at  # nothing fetched again


async def test_a_new_file_waits_for_the_interval(
    world: World, controller: SyncController, specs: Path
) -> None:
    await put(world, sync(source={"path": str(specs)}))
    await controller.reconcile("prod")
    (specs / "cache.yaml").write_text(service_text("cache"))
    world.clock.advance(INTERVAL - 1)
    await controller.reconcile("prod")
    assert "cache" not in world.informer.services
    world.clock.advance(1)
    await controller.reconcile("prod")
    assert "cache" in world.informer.services
    assert any(
        e.reason == "Applied" and "service/cache created" in e.message
        for e in world.events.for_object("sync/prod")
    )


async def test_broken_revision_applies_nothing_and_the_next_good_one_recovers(
    world: World, controller: SyncController, specs: Path
) -> None:
    await put(world, sync(source={"path": str(specs)}))
    await controller.reconcile("prod")
    await run_everything(world)
    good = status(world).last_applied_revision

    (specs / "web.yaml").write_text(service_text("web", replicas=3))
    (specs / "queue.yaml").write_text(service_text("queue").replace("replicas: 1", "replicas: -2"))
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    stalled = status(world)
    assert stalled.last_applied_revision == good
    assert stalled.last_attempted_revision != good
    assert condition(world, "Stalled")[:2] == ("True", "ValidationFailed")
    ready = condition(world, "Ready")
    assert ready[:2] == ("False", "ValidationFailed")
    assert (
        f"{specs / 'queue.yaml'}:6: spec.replicas: input should be greater than or equal to 0"
        in ready[2]
    )
    assert replicas(world, "web") == 1  # the good part of a broken revision is not applied either
    assert "queue" not in world.informer.services
    assert stalled.health == "Healthy"  # the previous revision keeps running

    (specs / "queue.yaml").write_text(service_text("queue"))
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    assert condition(world, "Stalled")[0] == "False"
    assert replicas(world, "web") == 3 and "queue" in world.informer.services
    await run_everything(world)
    await controller.reconcile("prod")
    assert condition(world, "Ready")[0] == "True"


async def test_drift_is_put_back_at_the_next_interval_with_an_event(
    world: World, controller: SyncController, specs: Path
) -> None:
    await put(world, sync(source={"path": str(specs)}))
    await controller.reconcile("prod")
    revision = status(world).last_applied_revision
    web = world.informer.services["web"].obj
    scaled = web.model_copy(update={"spec": web.spec.model_copy(update={"replicas": 5})})
    await put(world, scaled)
    await world.informer.commit(
        [Change.delete("/services/db", world.informer.services["db"].revision)]
    )

    await controller.reconcile("prod")  # before the interval: left alone
    assert replicas(world, "web") == 5
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    assert replicas(world, "web") == 1 and "db" in world.informer.services
    assert status(world).last_applied_revision == revision
    messages = [
        e.message for e in world.events.for_object("sync/prod") if e.reason == "DriftCorrected"
    ]
    assert "service/web: spec.replicas: 5 → 1" in messages
    assert "service/db: was deleted by hand; created again" in messages
    assert any(e.reason == "DriftCorrected" for e in world.events.for_object("service/web"))


async def test_suspend_stops_applying_and_drift_correction_until_resumed(
    world: World, controller: SyncController, specs: Path
) -> None:
    await put(world, sync(source={"path": str(specs)}))
    await controller.reconcile("prod")
    await edit(world, "prod", suspend=True)
    await controller.reconcile("prod")
    assert condition(world, "Reconciling")[1] == "Suspended"
    web = world.informer.services["web"].obj
    await put(world, web.model_copy(update={"spec": web.spec.model_copy(update={"replicas": 4})}))
    (specs / "cache.yaml").write_text(service_text("cache"))
    world.clock.advance(10 * INTERVAL)
    await controller.reconcile("prod")
    assert replicas(world, "web") == 4 and "cache" not in world.informer.services

    await edit(world, "prod", suspend=False)
    await controller.reconcile("prod")  # resumed: at once, not at the next interval
    assert replicas(world, "web") == 1 and "cache" in world.informer.services


async def test_a_sync_suspended_during_its_fetch_applies_nothing(
    world: World, specs: Path, tmp_path: Path
) -> None:
    class EditedWhileFetching(SourceFetcher):
        async def fetch(self, name: str, source: SyncSource) -> Fetched:
            fetched = await super().fetch(name, source)
            await edit(world, name, suspend=True)  # a user's apply lands meanwhile
            return fetched

    fetcher = EditedWhileFetching(tmp_path / "cache")
    controller = SyncController(world.informer, world.events, fetcher, clock=world.clock)
    await put(world, sync(source={"path": str(specs)}))
    outcome = await controller.reconcile("prod")
    assert world.informer.services == {}
    assert isinstance(outcome, Requeue) and outcome.after == 0
    await controller.reconcile("prod")  # runs on the stored spec: suspended
    assert world.informer.services == {}
    assert condition(world, "Reconciling")[1] == "Suspended"
    assert status(world).last_applied_revision is None


@pytest.mark.parametrize("prune", [pytest.param(True, id="prune"), pytest.param(False, id="keep")])
async def test_prune_removes_a_deleted_files_service_only_when_asked(
    world: World, controller: SyncController, specs: Path, prune: bool
) -> None:
    await put(
        world,
        Service.model_validate(
            {
                "metadata": {"name": "manual"},
                "spec": {"template": {"runtime": "sim", "command": ["x"]}},
            }
        ),
    )
    await put(world, sync(source={"path": str(specs)}, prune=prune))
    await controller.reconcile("prod")
    (specs / "db.yaml").unlink()
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    assert ("db" in world.informer.services) is not prune
    assert "manual" in world.informer.services and "web" in world.informer.services
    assert ("service/db" in status(world).inventory) is not prune


async def test_emptying_a_pruning_sync_needs_allow_empty(
    world: World, controller: SyncController, specs: Path
) -> None:
    await put(world, sync(source={"path": str(specs)}, prune=True))
    await controller.reconcile("prod")
    for name in ("web.yaml", "db.yaml"):
        (specs / name).unlink()
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    assert sorted(world.informer.services) == ["db", "web"]
    assert condition(world, "Stalled")[:2] == ("True", "ApplyFailed")
    assert "allowEmpty" in condition(world, "Ready")[2]
    await edit(world, "prod", allowEmpty=True)
    await controller.reconcile("prod")
    assert world.informer.services == {}


async def test_degraded_after_timeout_and_a_newer_revision_is_not_held_up(
    world: World, controller: SyncController, specs: Path
) -> None:
    await put(world, sync(source={"path": str(specs)}, timeout="90s"))
    await controller.reconcile("prod")  # nothing ever runs: no agent in this test
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    assert status(world).health == "Progressing"
    world.clock.advance(31)
    outcome = await controller.reconcile("prod")
    assert status(world).health == "Degraded"
    ready = condition(world, "Ready")
    assert ready[:2] == ("False", "HealthCheckFailed")
    assert "service/db: 0/1 running" in ready[2]
    assert isinstance(outcome, Requeue)

    # A newer revision is applied at its interval although the older one never
    # became healthy, and its own timeout starts from its apply.
    (specs / "web.yaml").write_text(service_text("web", command="fixed"))
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    assert world.informer.services["web"].obj.spec.template.command == ["fixed"]
    assert status(world).health == "Progressing"
    await run_everything(world)
    world.clock.advance(10)  # past the rollout's monitor window: the update completes
    await run_everything(world)
    await controller.reconcile("prod")
    assert world.informer.services["web"].obj.status.update.state == "completed"  # type: ignore[union-attr]
    assert status(world).health == "Healthy"


async def test_depends_on_applies_after_the_dependency_is_ready(
    world: World, controller: SyncController, specs: Path, tmp_path: Path
) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "api.yaml").write_text(service_text("api"))
    await put(world, sync("apps", source={"path": str(apps)}, dependsOn=[{"name": "base"}]))
    await controller.reconcile("apps")
    assert "api" not in world.informer.services
    assert condition(world, "Ready", "apps") == (
        "False",
        "DependencyNotReady",
        "waiting for sync/base does not exist",
    )
    await put(world, sync("base", source={"path": str(specs)}))
    assert "apps" in set(controller.keys_for(None, world.informer.syncs["base"].obj))
    await controller.reconcile("base")
    await controller.reconcile("apps")
    assert "api" not in world.informer.services  # base is not Ready yet
    await run_everything(world)
    await controller.reconcile("base")
    assert condition(world, "Ready", "base")[0] == "True"
    await controller.reconcile("apps")
    assert "api" in world.informer.services


async def test_sync_now_runs_before_the_interval(
    world: World, controller: SyncController, specs: Path
) -> None:
    await put(world, sync(source={"path": str(specs)}))
    await controller.reconcile("prod")
    (specs / "cache.yaml").write_text(service_text("cache"))
    entry = world.informer.syncs["prod"]
    when = world.clock.advance(5)
    requested = entry.obj.model_copy(
        update={"metadata": entry.obj.metadata.model_copy(update={"requested_at": when})}
    )
    await world.informer.commit([Change.put(requested, entry.revision)])
    await controller.reconcile("prod")
    assert "cache" in world.informer.services
    assert status(world).last_handled_request == when


async def test_missing_directory_is_a_clear_failure_that_applies_nothing(
    world: World, controller: SyncController, tmp_path: Path
) -> None:
    await put(world, sync(source={"path": str(tmp_path / "nowhere")}))
    await controller.reconcile("prod")
    assert world.informer.services == {}
    ready = condition(world, "Ready")
    assert ready[:2] == ("False", "FetchFailed")
    assert f"{tmp_path / 'nowhere'}: no such directory on this manager" in ready[2]
    assert status(world).last_applied_revision is None


async def test_deleting_a_sync_keeps_its_services_and_frees_them(
    world: World, controller: SyncController, specs: Path
) -> None:
    await put(world, sync(source={"path": str(specs)}))
    await controller.reconcile("prod")
    assert "sync.prod" in world.informer.applysets
    entry = world.informer.syncs["prod"]
    await world.informer.commit([Change.delete("/syncs/prod", entry.revision)])
    await controller.reconcile("prod")
    assert sorted(world.informer.services) == ["db", "web"]
    assert "sync.prod" not in world.informer.applysets


# ------------------------------------------------------------------- git


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "ops"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "ops@example.com")
    git(path, "config", "user.name", "ops")
    (path / "services").mkdir()
    (path / "services" / "web.yaml").write_text(service_text("web"))
    (path / "README").write_text("not a spec\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "web")
    return path


async def test_git_source_applies_commits_and_stalls_on_a_broken_one(
    world: World, controller: SyncController, repo: Path
) -> None:
    source = {"git": {"url": f"file://{repo}", "ref": "main", "path": "services"}}
    await put(world, sync(source=source))
    await controller.reconcile("prod")
    first = git(repo, "rev-parse", "HEAD")
    assert status(world).last_applied_revision == f"main@sha1:{first}"
    assert list(world.informer.services) == ["web"]

    (repo / "services" / "web.yaml").write_text(
        service_text("web", replicas=2).replace(
            "    runtime: sim\n", "    runtime: sim\n    stopGracePeriod: 5x\n"
        )
    )
    git(repo, "commit", "-qam", "broken")
    broken = git(repo, "rev-parse", "HEAD")
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    assert status(world).last_attempted_revision == f"main@sha1:{broken}"
    assert status(world).last_applied_revision == f"main@sha1:{first}"
    stalled = condition(world, "Stalled")
    assert stalled[0] == "True"
    assert "services/web.yaml:9: spec.template.stopGracePeriod: invalid duration '5x'" in stalled[2]
    assert replicas(world, "web") == 1

    (repo / "services" / "web.yaml").write_text(service_text("web", replicas=2))
    git(repo, "commit", "-qam", "fixed")
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    assert status(world).last_applied_revision == f"main@sha1:{git(repo, 'rev-parse', 'HEAD')}"
    assert replicas(world, "web") == 2
    assert condition(world, "Stalled")[0] == "False"


async def test_unreachable_git_and_missing_path_apply_nothing(
    world: World, controller: SyncController, repo: Path, tmp_path: Path
) -> None:
    await put(world, sync("gone", source={"git": {"url": f"file://{tmp_path / 'nope'}"}}))
    await controller.reconcile("gone")
    ready = condition(world, "Ready", "gone")
    assert ready[:2] == ("False", "FetchFailed")
    assert "git fetch file://" in ready[2] and "nope" in ready[2]
    await put(world, sync("nopath", source={"git": {"url": f"file://{repo}", "path": "deploy"}}))
    await controller.reconcile("nopath")
    ready = condition(world, "Ready", "nopath")
    assert "path 'deploy' is not a directory in" in ready[2]
    assert condition(world, "Stalled", "nopath")[0] == "True"
    assert world.informer.services == {}


@pytest.fixture
def served(repo: Path, tmp_path: Path) -> Path:
    """A bare clone of ``repo`` under a directory the HTTP git server serves."""
    bare = tmp_path / "served" / "ops.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True, capture_output=True
    )
    return bare.parent


async def test_private_git_over_http_uses_the_login_from_a_secret(
    world: World, repo: Path, served: Path, tmp_path: Path
) -> None:
    secrets = {"git-login": b"ops:s3cret-pw\n", "wrong": b"ops:nope", "garbled": b"no colon here"}
    fetcher = SourceFetcher(tmp_path / "cache", git_timeout=20, secrets=secrets.get)
    controller = SyncController(world.informer, world.events, fetcher, clock=world.clock)
    with git_http_server(served, "ops", "s3cret-pw") as (url, server):
        git_source = {"url": f"{url}/ops.git", "path": "services"}
        attempts = [
            ("anon", None),
            ("wrong", "wrong"),
            ("garbled", "garbled"),
            ("nosuch", "nosuch"),
        ]
        for name, secret in attempts:
            await put(world, sync(name, source={"git": {**git_source, "secretRef": secret}}))
            await controller.reconcile(name)
            ready = condition(world, "Ready", name)
            assert ready[:2] == ("False", "FetchFailed"), (name, ready)
        assert "could not read Username" in condition(world, "Ready", "anon")[2]
        assert "Authentication failed" in condition(world, "Ready", "wrong")[2]
        assert "not one line USERNAME:PASSWORD (13 bytes" in condition(world, "Ready", "garbled")[2]
        assert "no secret named 'nosuch'" in condition(world, "Ready", "nosuch")[2]
        assert world.informer.services == {}
        assert server.authenticated == 0

        await put(world, sync(source={"git": {**git_source, "secretRef": "git-login"}}))
        await controller.reconcile("prod")
        assert status(world).last_applied_revision == f"main@sha1:{git(repo, 'rev-parse', 'HEAD')}"
        assert list(world.informer.services) == ["web"]
        assert server.authenticated > 0
    # The password is in no status, event or file of the checkout.
    assert "s3cret" not in repr([e.obj for e in world.informer.syncs.values()])
    for name in ("anon", "wrong", "garbled", "nosuch", "prod"):
        assert "s3cret" not in repr(world.events.for_object(f"sync/{name}"))
    for path in (tmp_path / "cache").rglob("*"):
        assert not path.is_file() or b"s3cret" not in path.read_bytes(), path


def test_a_secret_ref_is_for_https_urls_only() -> None:
    with pytest.raises(ValueError, match="given to https:// repositories only"):
        sync(source={"git": {"url": "git://example.com/ops.git", "secretRef": "git-login"}})
    with pytest.raises(ValueError, match="would send the login in clear text"):
        sync(source={"git": {"url": "http://git.example.com/ops.git", "secretRef": "git-login"}})
    sync(source={"git": {"url": "https://git.example.com/ops.git", "secretRef": "git-login"}})


async def test_the_login_is_never_offered_to_a_host_a_redirect_names(
    world: World, served: Path, tmp_path: Path
) -> None:
    fetcher = SourceFetcher(tmp_path / "cache", git_timeout=20, secrets={"l": b"ops:pw"}.get)
    controller = SyncController(world.informer, world.events, fetcher, clock=world.clock)
    with (
        git_http_server(served, "ops", "pw") as (elsewhere, other),
        git_http_server(served, "ops", "pw") as (url, first),
    ):
        first.redirect_to = elsewhere.replace("127.0.0.1", "localhost")
        source = {"git": {"url": f"{url}/ops.git", "path": "services", "secretRef": "l"}}
        await put(world, sync(source=source))
        await controller.reconcile("prod")
        assert condition(world, "Ready")[:2] == ("False", "FetchFailed")
        assert other.authenticated == 0 and other.refused == 0
        assert world.informer.services == {}


def test_the_example_sync_loads() -> None:
    from shoal.manifest import load_paths

    (example,) = load_paths([Path(__file__).resolve().parents[2] / "examples" / "sync.yaml"])
    assert isinstance(example, Sync)
    assert example.spec.source.path == "/srv/shoal/specs" and example.spec.prune


async def test_task_changes_of_synced_services_wake_their_sync(
    world: World, controller: SyncController, specs: Path
) -> None:
    await put(world, sync(source={"path": str(specs)}))
    await controller.reconcile("prod")
    stored = world.informer.syncs["prod"].obj
    controller.keys_for(None, stored)  # as the informer's listener would see the write
    orchestrator = Orchestrator(world.informer, world.events, clock=world.clock)
    await orchestrator.reconcile("web")
    (task,) = world.live("web")
    running = task.model_copy(
        update={"status": task.status.model_copy(update={"state": TaskState.RUNNING})}
    )
    assert set(controller.keys_for(task, running)) == {"prod"}
    assert set(controller.keys_for(task, task)) == set()  # nothing that matters moved
    other = running.model_copy(update={"service": "elsewhere"})
    assert (
        set(controller.keys_for(other, other.model_copy(update={"desired_state": "shutdown"})))
        == set()
    )


async def test_a_service_naming_a_missing_secret_applies_nothing(
    world: World, tmp_path: Path, specs: Path
) -> None:
    from shoal.manager.secretstore import SecretStore
    from shoal.security.datakey import DataKey

    secrets = SecretStore(world.informer, DataKey.generate(), world.events)
    controller = SyncController(
        world.informer,
        world.events,
        SourceFetcher(tmp_path / "cache"),
        clock=world.clock,
        configs=secrets,
    )
    (specs / "web.yaml").write_text(
        service_text("web").replace(
            "    runtime: sim\n", "    runtime: sim\n    secrets: [{source: db-password}]\n"
        )
    )
    await put(world, sync(source={"path": str(specs)}))
    await controller.reconcile("prod")
    assert world.informer.services == {}
    stalled = condition(world, "Stalled")
    assert stalled[:2] == ("True", "ValidationFailed")
    assert "no secret named 'db-password'" in stalled[2]


async def test_configs_in_the_source_are_applied_with_the_services_that_use_them(
    world: World, tmp_path: Path, specs: Path
) -> None:
    from shoal.manager.secretstore import SecretStore
    from shoal.security.datakey import DataKey

    store = SecretStore(world.informer, DataKey.generate(), world.events)
    fetcher = SourceFetcher(tmp_path / "cache")
    controller = SyncController(
        world.informer, world.events, fetcher, clock=world.clock, configs=store
    )
    (specs / "web.yaml").write_text(
        service_text("web").replace(
            "    runtime: sim\n", "    runtime: sim\n    configs: [{source: web-conf}]\n"
        )
    )
    (specs / "web-conf.yaml").write_text(
        "apiVersion: shoal/v1\nkind: Config\nmetadata: {name: web-conf}\ndata: |\n  port 8080\n"
    )
    await put(world, sync(source={"path": str(specs)}))
    await controller.reconcile("prod")
    assert sorted(world.informer.services) == ["db", "web"]
    assert store.open(world.informer.configs["web-conf"].obj) == b"port 8080\n"
    assert condition(world, "Stalled")[0] == "False"

    # Configs never change: an edited one stalls the Sync and applies nothing.
    (specs / "web-conf.yaml").write_text(
        "apiVersion: shoal/v1\nkind: Config\nmetadata: {name: web-conf}\ndata: port 9090\n"
    )
    (specs / "db.yaml").write_text(service_text("db", replicas=3))
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    stalled = condition(world, "Stalled")
    assert stalled[:2] == ("True", "ValidationFailed") and "configs never change" in stalled[2]
    assert replicas(world, "db") == 1

    # A Sync inside a Sync's source is refused.
    (specs / "web-conf.yaml").unlink()
    (specs / "inner.yaml").write_text(
        "apiVersion: shoal/v1\nkind: Sync\nmetadata: {name: inner}\nspec: {source: {path: /srv}}\n"
    )
    world.clock.advance(INTERVAL)
    await controller.reconcile("prod")
    assert (
        "sync/inner: a Sync's source holds services and configs" in condition(world, "Stalled")[2]
    )
    assert "inner" not in world.informer.syncs


@pytest.mark.parametrize(
    ("state", "health"),
    [
        pytest.param("paused", "Degraded", id="paused"),
        pytest.param("rollback_completed", "Degraded", id="rolled-back"),
        pytest.param("updating", "Progressing", id="updating"),
        pytest.param("completed", "Healthy", id="completed"),
    ],
)
async def test_rollout_states_map_to_health(
    world: World, controller: SyncController, specs: Path, state: str, health: str
) -> None:
    from shoal.models.rollout import UpdateStatus

    await put(world, sync(source={"path": str(specs)}))
    await controller.reconcile("prod")
    await run_everything(world)
    entry = world.informer.services["web"]
    service = entry.obj
    update = UpdateStatus.model_validate(
        {"state": state, "revision": 1, "startedAt": world.clock.now(), "message": "why"}
    )
    current_status = service.status
    assert current_status is not None
    moved = service.model_copy(
        update={"status": current_status.model_copy(update={"update": update})}
    )
    await world.informer.commit([Change.put(moved, entry.revision)])
    await controller.reconcile("prod")
    assert status(world).health == health
    if health == "Degraded":
        assert condition(world, "Ready")[:2] == ("False", "HealthCheckFailed")
        assert f"service/web: rollout {state}: why" in status(world).health_message
