"""The manager's secrets and configs on the memory store: sealed at rest, rules, delivery."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.errors import ConflictError, NotFoundError, SpecError
from shoal.manager.control import Control
from shoal.manager.secretstore import SecretStore
from shoal.models import Service, Task, TaskState, TaskStatus
from shoal.models.secret import ConfigDocument
from shoal.models.sync import Sync
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.reports import Reports
from shoal.runtimes.registry import runtime_catalogue
from shoal.security.datakey import DataKey
from shoal.store import MemoryStore
from shoal.store.typed import Change, TypedStore

SECRET = b"correct horse battery staple"


class Harness:
    def __init__(self, store: MemoryStore, informer: Informer) -> None:
        self.store = store
        self.informer = informer
        self.events = EventRecorder()
        self.secrets = SecretStore(informer, DataKey.generate(), self.events)
        self.methods = self.secrets.methods()

    async def call(self, method: str, **request: Any) -> dict[str, Any]:
        handler = self.methods[method]
        reply: dict[str, Any] = await handler.handler(request, None)  # type: ignore[attr-defined]
        return reply

    async def create(self, kind: str, name: str, data: bytes) -> dict[str, Any]:
        encoded = base64.b64encode(data).decode()
        return await self.call(f"Create{kind}", name=name, data=encoded, labels={"a": "b"})

    async def raw_store(self) -> bytes:
        kvs, _ = await self.store.range("/")
        return b"".join(kv.key.encode() + kv.value for kv in kvs)

    def control(self) -> Control:
        return Control(
            self.informer,
            None,  # type: ignore[arg-type]
            self.events,
            Reports(),
            runtime_catalogue(),
            secret_store=self.secrets,
        )


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    store = MemoryStore()
    informer = Informer(store, TypedStore(store))
    await informer.start()
    try:
        yield Harness(store, informer)
    finally:
        await informer.aclose()
        await store.aclose()


def web(**template: Any) -> Service:
    return Service.model_validate(
        {
            "metadata": {"name": "web"},
            "spec": {"template": {"command": ["sleep", "60"], **template}},
        }
    )


def task(state: TaskState, **template: Any) -> Task:
    return Task(
        id=f"t-{state.value}",
        service="web",
        slot=1,
        node_id="n1",
        status=TaskStatus(state=state),
        template=web(**template).spec.template,
        created_at=datetime.now(UTC),
    )


async def test_secret_is_sealed_in_the_store_and_never_in_answers(harness: Harness) -> None:
    reply = await harness.create("Secret", "db-pass", SECRET)
    assert reply["secret"]["size"] == len(SECRET)
    assert "sealed" not in reply["secret"]
    raw = await harness.raw_store()
    assert b"/secrets/db-pass" in raw
    assert SECRET not in raw and base64.b64encode(SECRET) not in raw
    listed = await harness.call("GetSecrets")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["db-pass"]
    assert all("sealed" not in item for item in listed["items"])
    assert SECRET.decode() not in str(listed)
    assert all(
        SECRET.decode() not in e.message for e in harness.events.for_object("secret/db-pass")
    )


async def test_names_are_immutable_and_sizes_bounded(harness: Harness) -> None:
    await harness.create("Secret", "db-pass", SECRET)
    with pytest.raises(ConflictError, match="never change"):
        await harness.create("Secret", "db-pass", b"other")
    with pytest.raises(ValueError, match="at most 500 KiB"):
        await harness.create("Secret", "big", b"x" * (500 * 1024 + 1))
    await harness.create("Config", "big", b"x" * (500 * 1024 + 1))  # configs may be larger
    with pytest.raises(ValueError, match="at most 1000 KiB"):
        await harness.create("Config", "huge", b"x" * (1000 * 1024 + 1))
    with pytest.raises(ValueError, match="cannot be empty"):
        await harness.create("Secret", "empty", b"")
    with pytest.raises(SpecError, match="invalid name"):
        await harness.create("Secret", "bad name", b"x")
    with pytest.raises(ValueError, match="base64"):
        await harness.call("CreateSecret", name="x", data="%%%")
    assert sorted(harness.informer.secrets) == ["db-pass"]


async def test_if_same_accepts_the_same_bytes_again_and_only_those(harness: Harness) -> None:
    # What a stack redeploy does with the secrets of its files.
    await harness.create("Secret", "app_pw", SECRET)
    created = harness.informer.secrets["app_pw"].revision
    encoded = base64.b64encode(SECRET).decode()
    again = await harness.call(
        "CreateSecret", name="app_pw", data=encoded, ifSame=True, labels={"a": "b"}
    )
    assert again["unchanged"] is True
    assert harness.informer.secrets["app_pw"].revision == created
    other = base64.b64encode(b"another password").decode()
    with pytest.raises(ConflictError, match="never change"):
        await harness.call(
            "CreateSecret", name="app_pw", data=other, ifSame=True, labels={"a": "b"}
        )
    assert harness.secrets.open(harness.informer.secrets["app_pw"].obj) == SECRET
    # Another stack's request (other labels) learns nothing, even with the right bytes.
    with pytest.raises(ConflictError, match="never change"):
        await harness.call(
            "CreateSecret", name="app_pw", data=encoded, ifSame=True, labels={"shoal.stack": "x"}
        )


async def test_remove_is_refused_while_a_service_uses_it(harness: Harness) -> None:
    await harness.create("Secret", "db-pass", SECRET)
    await harness.informer.commit([Change.put(web(secrets=[{"source": "db-pass"}]), 0)])
    with pytest.raises(ConflictError, match=r"db-pass \(used by service/web\)"):
        await harness.call("RemoveSecret", names=["db-pass"])
    with pytest.raises(NotFoundError, match="nope"):
        await harness.call("RemoveSecret", names=["nope"])
    entry = harness.informer.services["web"]
    await harness.informer.commit([Change.delete("/services/web", entry.revision)])
    # A Sync's git login counts as a use too.
    login = Sync.model_validate(
        {
            "metadata": {"name": "prod"},
            "spec": {
                "source": {"git": {"url": "https://git.example/ops.git", "secretRef": "db-pass"}}
            },
        }
    )
    await harness.informer.commit([Change.put(login, 0)])
    with pytest.raises(ConflictError, match=r"db-pass \(used by sync/prod\)"):
        await harness.call("RemoveSecret", names=["db-pass"])
    entry = harness.informer.syncs["prod"]
    await harness.informer.commit([Change.delete("/syncs/prod", entry.revision)])
    assert (await harness.call("RemoveSecret", names=["db-pass"]))["removed"] == ["db-pass"]
    assert await harness.store.get("/secrets/db-pass") is None


async def test_apply_refuses_unknown_references_and_changed_configs(harness: Harness) -> None:
    control = harness.control()
    service = web(secrets=[{"source": "db-pass"}], configs=[{"source": "app"}])
    request = {"services": [service.to_wire()]}
    with pytest.raises(SpecError) as refused:
        await control.apply(request, None)  # type: ignore[arg-type]
    assert refused.value.problems == [
        "service web: spec.template.secrets[0].source: no secret named 'db-pass' "
        "(create it first: shoal secret create db-pass -f FILE)",
        "service web: spec.template.configs[0].source: no config named 'app' "
        "(create it with shoal config create, or apply a kind: Config document)",
    ]
    assert harness.informer.services == {}
    await harness.create("Secret", "db-pass", SECRET)
    config = ConfigDocument.model_validate({"metadata": {"name": "app"}, "data": "listen 80\n"})
    request["configs"] = [config.to_wire()]
    reply = await control.apply(request, None)  # type: ignore[arg-type]
    assert {(r.get("kind", "Service"), r["action"]) for r in reply["results"]} == {
        ("Config", "created"),
        ("Service", "created"),
    }
    again = await control.apply(request, None)  # type: ignore[arg-type]
    assert {r["action"] for r in again["results"]} == {"unchanged"}
    changed = ConfigDocument.model_validate({"metadata": {"name": "app"}, "data": "listen 81\n"})
    with pytest.raises(SpecError, match="configs never change"):
        await control.apply(
            {"services": [], "configs": [changed.to_wire()]},
            None,  # type: ignore[arg-type]
        )


async def test_deliveries_only_for_tasks_about_to_start(harness: Harness) -> None:
    await harness.create("Secret", "db-pass", SECRET)
    await harness.create("Secret", "unused", b"not for this task")
    await harness.create("Config", "app", b"listen 80\n")
    refs = {"secrets": [{"source": "db-pass"}], "configs": [{"source": "app"}]}
    delivered = harness.secrets.deliveries([task(TaskState.ASSIGNED, **refs)])
    assert delivered == {
        "secrets": {"db-pass": base64.b64encode(SECRET).decode()},
        "configs": {"app": base64.b64encode(b"listen 80\n").decode()},
    }
    for state in (TaskState.PENDING, TaskState.RUNNING, TaskState.COMPLETE):
        assert harness.secrets.deliveries([task(state, **refs)]) is None
    assert harness.secrets.deliveries([task(TaskState.ASSIGNED)]) is None
    stopping = task(TaskState.ASSIGNED, **refs).model_copy(update={"desired_state": "shutdown"})
    assert harness.secrets.deliveries([stopping]) is None


async def test_sealed_value_moved_to_another_name_does_not_open(harness: Harness) -> None:
    await harness.create("Secret", "db-pass", SECRET)
    sealed = harness.informer.secrets["db-pass"].obj
    moved = sealed.model_copy(update={"metadata": sealed.metadata.model_copy(update={"name": "x"})})
    await harness.informer.commit([Change.put(moved, 0)])
    assert harness.secrets.deliveries([task(TaskState.ASSIGNED, secrets=[{"source": "x"}])]) == {
        "secrets": {},
        "configs": {},
    }


async def test_apply_with_locate_answers_where_each_problem_is_and_writes_nothing(
    harness: Harness,
) -> None:
    # What the CLI sends: documents as the YAML gave them, for the manager to validate.
    control = harness.control()
    good = {"apiVersion": "shoal/v1", "kind": "Service", **web().to_wire()}
    bad = {
        "apiVersion": "shoal/v1",
        "kind": "Service",
        "metadata": {"name": "bad"},
        "spec": {"replicas": "lots", "template": {"command": ["x"], "runtime": "dockerd"}},
    }
    config = {"apiVersion": "shoal/v1", "kind": "Config", "metadata": {"name": "c"}, "data": 7}
    request = {"documents": [good, bad], "configs": [config], "locate": True}
    reply = await control.apply(request, None)  # type: ignore[arg-type]
    assert reply["results"] == []
    assert [(p.get("document", p.get("config")), p["loc"]) for p in reply["problems"]] == [
        (1, ["spec", "replicas"]),
        (1, ["spec", "template", "runtime"]),
        (0, ["data"]),
    ]
    assert "config" in reply["problems"][2]
    assert reply["problems"][0]["message"].startswith("input should be a valid integer")
    assert reply["problems"][1]["message"].startswith("unknown runtime 'dockerd' (known: ")
    assert harness.informer.services == {}
    # Without it (an older client), the same problems are one INVALID_ARGUMENT, as before.
    del request["locate"]
    with pytest.raises(SpecError, match=r"document 2 \(bad\): spec.replicas"):
        await control.apply(request, None)  # type: ignore[arg-type]
    assert harness.informer.services == {}
