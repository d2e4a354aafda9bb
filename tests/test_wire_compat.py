"""Objects written by a newer shoal still read; specs written by a user still refuse typos.

A manager one version newer may add fields to what it stores and sends. The
older managers and agents of a rolling upgrade must go on reading all of it,
while a spec a user writes keeps refusing unknown fields with file and line.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.errors import SpecError
from shoal.manager.election import ManagerInfo
from shoal.manifest import load_text
from shoal.models import Task, TaskStatus
from shoal.models.base import Model
from shoal.reconciler.informer import Informer
from shoal.store import MemoryStore
from shoal.store.typed import NODES, SERVICES, TASKS, TypedStore
from tests.reconciler.world import node, service


def newer(obj: Model, **extra: Any) -> dict[str, Any]:
    """``obj`` as a newer version would write it: with fields this version lacks."""
    return {**obj.to_wire(), **extra}


def a_task() -> Task:
    return Task(
        id="t1",
        service="web",
        slot=1,
        node_id="n1",
        template=service().spec.template,
        created_at=datetime.now(UTC),
    )


def with_nested(data: dict[str, Any], path: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    inner = data
    for key in path:
        inner = inner[key]
    inner.update(extra)
    return data


TASK, SERVICE, NODE = a_task(), service(), node("n1")
MANAGER = ManagerInfo(id="m", address="a:1", started_at=datetime.now(UTC))


@pytest.mark.parametrize(
    ("original", "data"),
    [
        pytest.param(TASK, newer(TASK, priorityClass="gold"), id="task"),
        pytest.param(TASK, with_nested(newer(TASK), ("template",), gpus=2), id="task-template"),
        pytest.param(SERVICE, newer(SERVICE, ownerReferences=[]), id="service"),
        pytest.param(
            SERVICE,
            with_nested(newer(SERVICE), ("spec", "restartPolicy"), jitter="1s"),
            id="service-restart-policy",
        ),
        pytest.param(NODE, with_nested(newer(NODE), ("status",), lagMs=3), id="node"),
        pytest.param(
            NODE.description, newer(NODE.description, kernel="6.1"), id="node-description"
        ),
        pytest.param(TaskStatus(), newer(TaskStatus(), progress=0.5), id="task-status"),
        pytest.param(MANAGER, newer(MANAGER, zone="b"), id="manager-info"),
    ],
)
def test_objects_from_a_newer_version_read_with_every_known_field(
    original: Model, data: dict[str, Any]
) -> None:
    model = type(original)
    assert model.from_wire(data) == original
    assert model.from_wire(json.dumps(data).encode()) == original
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        model.model_validate(data)  # the user-facing path still refuses them


async def test_a_store_written_by_a_newer_manager_loads_into_an_older_one() -> None:
    store = MemoryStore()
    await store.put(SERVICES + "web", json.dumps(newer(service(), futureField=1)).encode())
    await store.put(TASKS + "t1", json.dumps(newer(a_task(), futureField=1)).encode())
    await store.put(NODES + "n1", json.dumps(newer(node("n1"), futureField=1)).encode())
    informer = Informer(store, TypedStore(store))
    await informer.start()
    try:
        assert set(informer.services) == {"web"}
        assert set(informer.tasks) == {"t1"}
        assert set(informer.nodes) == {"n1"}
    finally:
        await informer.aclose()
        await store.aclose()


def test_a_spec_a_user_writes_still_refuses_unknown_fields_with_file_and_line() -> None:
    text = (
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: web}\n"
        "spec:\n  replicas: 1\n  template:\n    command: [sleep, '60']\n    gpus: 2\n"
    )
    with pytest.raises(SpecError) as caught:
        load_text(text, "web.yaml")
    assert "web.yaml:8" in str(caught.value)
    assert "spec.template.gpus" in str(caught.value)


def test_tasks_read_back_share_one_template_per_distinct_template() -> None:
    # An agent's assignment set or a relist decodes thousands of tasks of a few
    # services: each distinct template is validated (and kept in memory) once.
    first = a_task()
    second = first.model_copy(update={"id": "t2", "slot": 2})
    other = first.model_copy(update={"id": "t3", "template": service(env={"V": "2"}).spec.template})
    decoded = [Task.from_wire(t.to_json_bytes()) for t in (first, second, other)]
    assert decoded == [first, second, other]
    assert decoded[0].template is decoded[1].template
    assert decoded[2].template is not decoded[0].template
    assert Task.from_wire(first.to_wire()).template is decoded[0].template


def test_a_task_with_a_bad_template_is_refused_naming_the_field() -> None:
    data = with_nested(a_task().to_wire(), ("template",), stopSignal="SIGNOPE")
    for _ in range(2):  # the second time too: a refused template is never cached
        with pytest.raises(ValueError, match=r"template\.stopSignal"):
            Task.from_wire(json.dumps(data).encode())
