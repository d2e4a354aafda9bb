"""The OpenAPI document: generated from the route table and the models, so it lists
every route the listener serves and describes what each one really answers."""

from __future__ import annotations

from typing import Any

from shoal.http import schema
from shoal.http.api import ROUTES, WebApi
from shoal.http.sessions import Sessions
from tests.http.conftest import Browser, Web


def served_routes() -> set[tuple[str, str]]:
    app = WebApi({}, Sessions(), lambda caller: False, lambda *args: None).app()
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD",) or "prefix" in info:
            continue  # HEAD is added beside each GET; /static/ is the assets' directory
        found.add((route.method, str(path)))
    return found


async def test_every_route_served_is_in_the_document(web: Web, admin: Browser) -> None:
    status, document = await admin.get("/api/v1/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    served = served_routes()
    assert served == documented
    assert ("POST", "/api/v1/services/{name}/scale") in served
    assert ("GET", "/api/v1/events") in served
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for response in operation["responses"].values():
                for media in response.get("content", {}).values():
                    ref = media["schema"]["$ref"].rsplit("/", 1)[1]
                    assert ref in document["components"]["schemas"], (path, ref)
    scale = document["paths"]["/api/v1/services/{name}/scale"]["post"]
    body = scale["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert (
        document["components"]["schemas"][body.rsplit("/", 1)[1]]["properties"]["replicas"][
            "minimum"
        ]
        == 0
    )
    assert scale["x-shoal-control-method"] == "Scale"


async def test_what_the_api_answers_validates_against_the_documented_models(
    web: Web, admin: Browser
) -> None:
    await web.apply("api", 2)
    await web.running("api", 2)
    answers: list[tuple[str, type[Any]]] = [
        ("/api/v1/services", schema.ServiceList),
        ("/api/v1/tasks?all=true", schema.TaskList),
        ("/api/v1/nodes", schema.NodeList),
        ("/api/v1/services/api", schema.ServiceDetail),
        ("/api/v1/session", schema.SessionView),
    ]
    for path, model in answers:
        status, body = await admin.get(path)
        assert status == 200, body
        model.model_validate(body)  # the models forbid fields they do not declare
    tasks = schema.TaskList.model_validate((await admin.get("/api/v1/tasks"))[1])
    assert all(t.task_name.startswith("api.") for t in tasks.items)
    events = await web.control("Events", {"service": "api"})
    assert events["events"]
    for event in events["events"]:
        schema.EventView.model_validate(event)


def test_the_route_table_has_one_entry_per_method_and_path() -> None:
    keys = [(doc.method, doc.path) for doc, _ in ROUTES]
    assert len(keys) == len(set(keys))
