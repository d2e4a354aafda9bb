"""The apply planner and apply sets on the memory store: what is created, kept, pruned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from shoal.errors import ApplySetError, SpecError
from shoal.manifest import load_text
from shoal.models import Service
from shoal.models.sync import Sync
from shoal.reconciler.applyset import ApplyOptions, plan_apply
from shoal.reconciler.informer import Informer
from shoal.specdiff import changed_fields, unified
from shoal.store import open_store
from shoal.store.typed import TypedStore

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def service(name: str, **spec: object) -> Service:
    return Service.model_validate(
        {"metadata": {"name": name}, "spec": {"template": {"command": ["sleep", "9"]}, **spec}}
    )


@pytest.fixture
async def informer() -> AsyncIterator[Informer]:
    store = await open_store("memory://")
    informer = Informer(store, TypedStore(store))
    await informer.start()
    yield informer
    await informer.aclose()
    await store.aclose()


async def apply(
    informer: Informer, docs: list[Service | Sync], **options: object
) -> dict[str, str]:
    plan = plan_apply(informer, docs, ApplyOptions(**options), NOW)  # type: ignore[arg-type]
    await informer.commit(plan.changes)
    return {r.name: r.action for r in plan.results}


async def test_prune_deletes_only_members_the_files_dropped(informer: Informer) -> None:
    await apply(informer, [service("loose")])
    first = await apply(informer, [service("a"), service("b")], set_name="s", prune=True)
    assert first == {"a": "created", "b": "created"}
    second = await apply(informer, [service("b")], set_name="s", prune=True)
    assert second == {"b": "unchanged", "a": "pruned"}
    assert sorted(informer.services) == ["b", "loose"]
    assert [m.name for m in informer.applysets["s"].obj.members] == ["b"]


async def test_without_prune_the_set_keeps_owning_what_it_had(informer: Informer) -> None:
    await apply(informer, [service("a"), service("b")], set_name="s")
    await apply(informer, [service("b")], set_name="s")
    assert sorted(informer.services) == ["a", "b"]
    assert await apply(informer, [service("b")], set_name="s", prune=True) == {
        "b": "unchanged",
        "a": "pruned",
    }


async def test_emptying_a_set_needs_allow_empty(informer: Informer) -> None:
    await apply(informer, [service("a")], set_name="s", prune=True)
    with pytest.raises(ApplySetError, match="allow an empty set"):
        plan_apply(informer, [], ApplyOptions(set_name="s", prune=True), NOW)
    assert await apply(informer, [], set_name="s", prune=True, allow_empty=True) == {"a": "pruned"}


async def test_a_service_of_another_set_is_refused(informer: Informer) -> None:
    await apply(informer, [service("a")], set_name="one")
    with pytest.raises(ApplySetError, match="service/a belongs to apply set 'one'"):
        plan_apply(informer, [service("a")], ApplyOptions(set_name="two"), NOW)
    # A plain apply (no set) may still update it; it stays in its set.
    assert await apply(informer, [service("a", replicas=3)]) == {"a": "configured"}
    assert informer.applysets["one"].obj.owns("Service", "a")


def sync_doc(name: str) -> Sync:
    return Sync.model_validate({"metadata": {"name": name}, "spec": {"source": {"path": "/srv"}}})


async def test_syncs_are_members_too_and_pruned_like_services(informer: Informer) -> None:
    """A directory of Syncs (one Sync per team, say) applied as a set: a removed file's
    Sync is pruned; its services stay; another set cannot take a member Sync."""
    both = [service("web"), sync_doc("team-a"), sync_doc("team-b")]
    assert await apply(informer, both, set_name="root", prune=True) == {
        "web": "created",
        "team-a": "created",
        "team-b": "created",
    }
    record = informer.applysets["root"].obj
    assert record.owns("Sync", "team-a") and record.owns("Service", "web")
    with pytest.raises(ApplySetError, match="sync/team-a belongs to apply set 'root'"):
        plan_apply(informer, [sync_doc("team-a")], ApplyOptions(set_name="other"), NOW)
    kept = [service("web"), sync_doc("team-a")]
    assert await apply(informer, kept, set_name="root", prune=True) == {
        "web": "unchanged",
        "team-a": "unchanged",
        "team-b": "pruned",
    }
    assert sorted(informer.syncs) == ["team-a"]
    with pytest.raises(ApplySetError, match=r"owns \(service/web, sync/team-a\)"):
        plan_apply(informer, [], ApplyOptions(set_name="root", prune=True), NOW)


async def test_unchanged_apply_writes_nothing(informer: Informer) -> None:
    await apply(informer, [service("a")], set_name="s", prune=True)
    plan = plan_apply(informer, [service("a")], ApplyOptions(set_name="s", prune=True), NOW)
    assert plan.changes == []


async def test_defaults_written_out_are_no_difference(informer: Informer) -> None:
    await apply(informer, [service("a")])
    explicit = service(
        "a",
        replicas=1,
        mode="replicated",
        restartPolicy={"condition": "any", "delay": "1s"},
        template={"command": "sleep 9", "stopGracePeriod": "10s", "runtime": "process"},
    )
    assert await apply(informer, [explicit]) == {"a": "unchanged"}
    stored = informer.services["a"].obj
    assert unified(stored, explicit) == ""
    changed = service("a", replicas=4)
    assert changed_fields(stored, changed) == ["spec.replicas: 1 → 4"]


async def test_sync_dependency_cycles_are_refused(informer: Informer) -> None:
    def sync(name: str, *deps: str) -> Sync:
        return Sync.model_validate(
            {
                "metadata": {"name": name},
                "spec": {"source": {"path": "/srv"}, "dependsOn": [{"name": d} for d in deps]},
            }
        )

    await apply(informer, [sync("a", "b")])
    with pytest.raises(SpecError, match="dependency cycle b → a → b"):
        plan_apply(informer, [sync("b", "a")], ApplyOptions(), NOW)
    with pytest.raises(SpecError, match="cycle c → c"):
        plan_apply(informer, [sync("c", "c")], ApplyOptions(), NOW)
    assert await apply(informer, [sync("b")]) == {"b": "created"}


async def test_services_apply_in_dependency_order_and_cycles_are_refused(
    informer: Informer,
) -> None:
    def needs(*deps: str) -> dict[str, object]:
        return {"dependsOn": [{"service": d} for d in deps]}

    plan = plan_apply(
        informer,
        [service("web", **needs("api")), service("api", **needs("db")), service("db")],
        ApplyOptions(),
        NOW,
    )
    assert [r.name for r in plan.results] == ["db", "api", "web"]
    assert [c.obj.name for c in plan.changes if isinstance(c.obj, Service)] == ["db", "api", "web"]
    await informer.commit(plan.changes)
    # A cycle through a stored service is refused, whichever side is applied last.
    with pytest.raises(SpecError, match=r"spec.dependsOn\[0\].service: dependency cycle db"):
        plan_apply(informer, [service("db", **needs("web"))], ApplyOptions(), NOW)
    assert informer.services["db"].obj.spec.depends_on == []
    # A dependency nobody applied yet is no problem: the dependent waits for it.
    assert await apply(informer, [service("db", **needs("later"))]) == {"db": "configured"}


async def test_services_restarting_on_each_others_endpoints_are_refused(
    informer: Informer,
) -> None:
    def discovering(name: str, other: str, change: str) -> Service:
        template = {"command": ["sleep", "9"], "discover": [other], "onEndpointsChange": change}
        return service(name, template=template)

    # A restarting on B's changes and B on A's would restart each other for ever.
    await apply(informer, [discovering("a", "b", "restart")])
    with pytest.raises(SpecError, match=r"service/b: .*restart loop b → a → b"):
        plan_apply(informer, [discovering("b", "a", "restart")], ApplyOptions(), NOW)
    assert "b" not in informer.services
    # One side that only signals breaks the loop.
    assert await apply(informer, [discovering("b", "a", "signal:SIGHUP")]) == {"b": "created"}


def test_get_yaml_lists_load_as_documents() -> None:
    text = (
        "items:\n"
        "- apiVersion: shoal/v1\n  kind: Service\n  metadata: {name: a, generation: 3}\n"
        "  spec: {template: {command: [sleep, '1']}}\n  status: {desiredTasks: 1}\n"
        "- apiVersion: shoal/v1\n  kind: Service\n  metadata: {name: b}\n"
        "  spec: {replicas: -1, template: {command: [sleep, '1']}}\n"
    )
    with pytest.raises(SpecError) as caught:
        load_text(text, "list.yaml")
    assert caught.value.problems == [
        "list.yaml:10: items[1].spec.replicas: input should be greater than or equal to 0 (got -1)"
    ]
    docs = load_text(text.replace("replicas: -1, ", ""), "list.yaml")
    assert [d.name for d in docs] == ["a", "b"]
