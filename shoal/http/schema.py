"""What the HTTP API takes and returns, as pydantic models, and its OpenAPI document.

The objects are the models themselves (``Service``, ``Task``, ``Node``): the API
sends what the Control API sends, so one set of models describes both. The
few shapes that exist only here (action requests, the event and log line of a
stream, the error body) are declared below. ``openapi(routes)`` builds the
document from the route table of ``shoal.http.api`` and these models, so a
route or a field cannot be added without appearing in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

import shoal
from shoal.models import Availability, Node, Service, Task
from shoal.models.base import Model


class TaskView(Task):
    """A task as the API lists it: with its ``name`` (``SERVICE.SLOT.ID``)."""

    # ``name`` on the wire; not the attribute: ``Task.name`` is a property.
    task_name: str = Field(default="", alias="name")


class ServiceList(Model):
    items: list[Service]
    revision: int


class TaskList(Model):
    items: list[TaskView]
    revision: int


class NodeList(Model):
    items: list[Node]
    revision: int
    # How many tasks that have not ended each node has (``shoal get nodes``' TASKS).
    task_counts: dict[str, int] = Field(default_factory=dict)


class EventView(Model):
    """One event (``shoal events -o json``); ``cursor`` resumes a stream after it."""

    time: str
    object: str
    reason: str
    message: str
    type: Literal["Normal", "Warning"]
    count: int
    first_time: str
    cursor: int
    id: str
    service: str | None = None
    node: str | None = None


class ServiceDetail(Model):
    """``describe service``: the service, its tasks (up to 200), notes, recent events."""

    service: Service
    tasks: list[TaskView]
    tasks_omitted: int
    # Why slots are not restarted, by slot or topic (what `describe service` prints).
    notes: dict[str, str]
    events: list[EventView]


class LogLine(Model):
    """One line of a service's output; ``task`` is empty for a note about a node."""

    task_id: str
    task: str
    line: str
    # When it was written (RFC 3339), with timestamps=true.
    time: str | None = None


class ScaleRequest(Model):
    replicas: int = Field(ge=0, le=1_000_000)


class ScaleReply(Model):
    scaled: dict[str, int]


class RolloutRequest(Model):
    action: Literal["undo", "pause", "resume", "promote", "restart"]
    # undo only: the revision to go back to (default: the one before).
    to_revision: int | None = Field(default=None, ge=1)


class RolloutReply(Model):
    name: str
    state: str
    revision: int | None = None
    message: str


class AvailabilityRequest(Model):
    availability: Availability


class NodeReply(Model):
    node: Node


class SessionView(Model):
    """Who is signed in; ``csrf`` is the page token the caller sent (``X-Shoal-CSRF``)."""

    user: str
    role: Literal["admin", "viewer"]
    csrf: str
    expires_at: str
    actions: bool


class SignedOut(Model):
    signed_out: bool


class ErrorDetail(Model):
    code: str  # the gRPC status name the Control API would answer with
    message: str
    field: str | None = None  # the request field at fault, when one is


class ErrorBody(Model):
    error: ErrorDetail


@dataclass(frozen=True)
class RouteDoc:
    """What the OpenAPI document says of one route."""

    method: str
    path: str
    summary: str
    # The Control method it calls (its role rule applies), or None.
    control: str | None
    response: type[BaseModel] | None
    body: type[BaseModel] | None = None
    # Server-sent events: each ``data:`` line is one ``response`` object.
    stream: bool = False
    query: tuple[tuple[str, str, str], ...] = ()  # (name, type, description)
    form: tuple[tuple[str, str, str], ...] = ()  # fields of a posted HTML form, as query
    public: bool = False  # needs no session


ERRORS = {
    "400": "the request is malformed; error.field names what",
    "401": "not signed in, or the session ended",
    "403": "the session's role may not do this, or the CSRF header is missing",
    "404": "no such object",
    "409": "the object changed meanwhile, or is in a state that does not allow this",
    "429": "the manager is busy; try again shortly",
    "503": "the store or the leader cannot be reached",
}


def openapi(routes: Sequence[RouteDoc]) -> dict[str, Any]:
    models: list[type[BaseModel]] = [ErrorBody]
    for route in routes:
        models += [m for m in (route.response, route.body) if m is not None]
    unique = list(dict.fromkeys(models))
    _, defs = models_json_schema(
        [(m, "serialization") for m in unique],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}{_operation_name(route.path)}",
            "responses": {},
        }
        if route.control:
            operation["x-shoal-control-method"] = route.control
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(route.path)
        ]
        parameters += [
            {"name": name, "in": "query", "schema": {"type": kind}, "description": text}
            for name, kind, text in route.query
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(route.body)}},
            }
        if route.form:
            fields = {name: {"type": kind, "description": text} for name, kind, text in route.form}
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {"type": "object", "properties": fields, "required": list(fields)}
                    }
                },
            }
        if route.response is not None:
            media = "text/event-stream" if route.stream else "application/json"
            operation["responses"]["200"] = {
                "description": (
                    "a stream of server-sent events, each data line one of these"
                    if route.stream
                    else "OK"
                ),
                "content": {media: {"schema": _ref(route.response)}},
            }
        elif route.path == "/login":
            operation["responses"]["200"] = {
                "description": "a page: the Sign in button (GET), or signed in, on to the UI "
                "(POST); a link that is not valid (401) or a form posted from another page "
                "(403) is a page that says so"
            }
        else:
            operation["responses"]["200"] = {"description": "a page or asset of the web UI"}
        for status, text in ERRORS.items():
            if route.public and status in ("401", "403", "409", "429", "503"):
                continue
            operation["responses"][status] = {
                "description": text,
                "content": {"application/json": {"schema": _ref(ErrorBody)}},
            }
        if not route.public:
            operation["security"] = [{"session": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shoal HTTP API",
            "version": shoal.__version__,
            "description": "What the web UI uses; every call maps onto a Control API "
            "method with the same role rules (docs/ui.md).",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "shoal_session"}
            },
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _operation_name(path: str) -> str:
    parts = [p.strip("{}") for p in path.split("/") if p and p not in ("api", "v1")]
    return "".join(p[:1].upper() + p[1:] for p in parts) or "Index"
