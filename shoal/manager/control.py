"""The Control service: what the CLI talks to.

Every method takes and returns JSON objects (see ``shoal.api.transport``).
Reads are served from the informer; writes go to the store in one transaction
per call, so an ``apply`` of several services is all or nothing.
Objects go out as ``{metadata, spec, status}`` (tasks and nodes keep their own
shape with ``status``), lists as ``{"items": [...]}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import grpc.aio
from pydantic import ValidationError

import shoal
from shoal.api.transport import Method, Payload, ServerStream, Unary
from shoal.errors import NotFoundError, SpecError
from shoal.logtimes import parse_since
from shoal.manager.backupapi import BackupApi
from shoal.manager.dispatcher import Dispatcher
from shoal.manager.endpointsapi import EndpointsApi
from shoal.manager.eventsapi import EventsApi
from shoal.manager.execapi import ExecApi
from shoal.manager.jobs import JobControl
from shoal.manager.logstream import LogScope, ServiceLogs
from shoal.manager.rollouts import RolloutControl, apply_warnings
from shoal.manager.secretstore import SecretStore
from shoal.manager.syncapi import SyncApi
from shoal.manager.taskpages import TaskListings, decode_token, parse_limit
from shoal.manifest import APPLIED, located_errors, validation_problems
from shoal.models import (
    Availability,
    DesiredState,
    Node,
    Service,
    ServiceSpec,
    ServiceStatus,
    Task,
)
from shoal.models.secret import ConfigDocument
from shoal.models.sync import ApplySet
from shoal.reconciler.applyset import ApplyOptions, Document, plan_apply
from shoal.reconciler.events import EventFilter, EventRecorder, node_update_event
from shoal.reconciler.informer import Informer
from shoal.reconciler.reports import Reports
from shoal.selectors import Selector, parse_selector
from shoal.store.retry import retry_on_conflict
from shoal.store.typed import SERVICES, Change

# ``describe service`` lists at most this many tasks (and says how many it left out).
DESCRIBE_TASKS = 200

KINDS = {
    "service": "services",
    "services": "services",
    "svc": "services",
    "task": "tasks",
    "tasks": "tasks",
    "node": "nodes",
    "nodes": "nodes",
    "sync": "syncs",
    "syncs": "syncs",
}


def parse_documents(raw: list[Any], validation: dict[str, Any] | None = None) -> list[Document]:
    """Validate wire documents (Service or Sync); every problem is raised as one SpecError."""
    problems: list[str] = []
    documents: list[Document] = []
    seen: set[tuple[str, str]] = set()
    for index, doc in enumerate(raw):
        kind = doc.get("kind", "Service") if isinstance(doc, dict) else None
        model = APPLIED.get(str(kind))
        if model is None:
            problems.append(f"document {index + 1}: kind: unknown kind {kind!r}")
            continue
        try:
            document = model.model_validate(doc, context=validation)
        except ValidationError as exc:
            name = doc.get("metadata", {}).get("name") if isinstance(doc, dict) else None
            where = f"document {index + 1}" + (f" ({name})" if isinstance(name, str) else "")
            problems += [f"{where}: {p}" for p in validation_problems(exc, model)]
            continue
        key = (document.kind, document.name)
        if key in seen:
            problems.append(
                f"document {index + 1}: metadata.name: duplicate {document.kind} name "
                f"{document.name!r}"
            )
        seen.add(key)
        documents.append(document)
    if problems:
        raise SpecError(problems)
    return documents


def locate_problems(
    raw: list[Any], configs: Any, validation: dict[str, Any] | None = None
) -> list[Payload]:
    """Every validation problem of the documents (and configs) of an apply, where it is:
    ``{"document": N | "config": N, "loc": [field path], "message"}``, for a client
    that kept each document's YAML to name the file, line and field (the CLI)."""
    problems: list[Payload] = []
    for index, doc in enumerate(raw):
        kind = doc.get("kind", "Service") if isinstance(doc, dict) else None
        model = APPLIED.get(str(kind))
        if model is None:
            problems.append(
                {"document": index, "loc": ["kind"], "message": f"unknown kind {kind!r}"}
            )
            continue
        try:
            model.model_validate(doc, context=validation)
        except ValidationError as exc:
            problems += [{"document": index, **error} for error in located_errors(exc, model)]
    for index, doc in enumerate(configs if isinstance(configs, list) else []):
        try:
            ConfigDocument.model_validate(doc)
        except ValidationError as exc:
            problems += [
                {"config": index, **error} for error in located_errors(exc, ConfigDocument)
            ]
    return problems


def _kind(name: str) -> str:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(
            f"unknown resource type {name!r} (use services, tasks, nodes or syncs)"
        ) from None


def _selector(request: Payload) -> Selector:
    """The request's ``selector`` (``app=web,tier!=db``); a bad one names the field."""
    text = request.get("selector") or ""
    if not isinstance(text, str):
        raise ValueError("selector: must be a string such as 'app=web,tier!=db'")
    try:
        return parse_selector(text)
    except ValueError as exc:
        raise ValueError(f"selector: {exc}") from None


def _parse_configs(raw: list[dict[str, Any]]) -> list[ConfigDocument]:
    problems: list[str] = []
    configs: list[ConfigDocument] = []
    for index, doc in enumerate(raw):
        try:
            configs.append(ConfigDocument.model_validate(doc))
        except ValueError as exc:
            problems.append(f"config document {index + 1}: {exc}")
    if problems:
        raise SpecError(problems)
    return configs


class Control:
    """Handlers of the Control service."""

    def __init__(
        self,
        informer: Informer,
        dispatcher: Dispatcher,
        events: EventRecorder,
        reports: Reports,
        runtimes: Mapping[str, bool],
        secret_store: SecretStore | None = None,
    ) -> None:
        self.informer = informer
        self.dispatcher = dispatcher
        self.events = events
        # The orchestrator's notes and outcomes per service (a read model).
        self.reports = reports
        self.secret_store = secret_store
        self.rollouts = RolloutControl(informer, events)
        self.jobs = JobControl(informer, events)
        # The runtimes specs may name: name → takes container fields
        # (``shoal.runtimes.registry.runtime_catalogue``).
        self.validation = {"runtimes": dict(runtimes)}
        # Recent task listings' orders, for their later pages.
        self.task_listings = TaskListings()

    def methods(self) -> dict[str, Method]:
        return {
            "Rollout": Unary(self.rollouts.rollout),
            "RunJob": Unary(self.jobs.run_job),
            "Apply": Unary(self.apply),
            "GetApplySet": Unary(self.apply_set),
            **SyncApi(self.informer, self.events).methods(),
            **EventsApi(self.events).methods(),
            **BackupApi(self.informer.store).methods(),
            **EndpointsApi(self.dispatcher.endpoints).methods(),
            **ExecApi(self.informer, self.dispatcher, self.validation["runtimes"]).methods(),
            "Get": Unary(self.get),
            "Describe": Unary(self.describe),
            "Delete": Unary(self.delete),
            "Scale": Unary(self.scale),
            "UpdateNode": Unary(self.update_node),
            "Logs": ServerStream(self.logs),
            "Version": Unary(self.version),
        }

    # ----------------------------------------------------------------- writes

    async def apply(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        """Create or update documents in one transaction.

        Request: ``documents`` (Services and Syncs; ``services`` from older
        clients), ``configs`` (``kind: Config`` documents), ``dryRun``,
        ``cause`` (recorded with a new template revision), and for an apply
        set ``set``, ``prune``, ``allowEmpty``, ``source``. Response:
        ``results`` [{kind, name, action, changed, revision, warnings}] with
        action created, configured, unchanged or pruned; ``dryRun``; ``revision``.

        With ``locate``, documents that do not validate are not an error: the
        answer's ``problems`` (``locate_problems``) say where each problem is,
        nothing is applied and ``results`` is empty.
        """
        raw = request.get("documents")
        if raw is None:
            raw = request.get("services", [])
        if not isinstance(raw, list):
            raise ValueError("documents: expected a list of documents")
        dry_run = bool(request.get("dryRun"))
        if request.get("locate"):
            problems = locate_problems(raw, request.get("configs", []), self.validation)
            if problems:
                return {
                    "problems": problems,
                    "results": [],
                    "dryRun": dry_run,
                    "revision": self.informer.revision,
                }
        documents = parse_documents(raw, self.validation)
        set_name = request.get("set")
        options = ApplyOptions(
            set_name=str(set_name) if set_name else None,
            prune=bool(request.get("prune")),
            allow_empty=bool(request.get("allowEmpty")),
            source=str(request.get("source", "")),
            cause=str(request.get("cause") or "apply"),
        )
        if options.prune and options.set_name is None:
            raise ValueError("prune needs an apply set: give 'set'")
        if options.set_name is not None:
            ApplySet(name=options.set_name)  # a bad name is an INVALID_ARGUMENT here
        # The orchestrator may write a rollout status meanwhile: recompute then.
        return await retry_on_conflict(
            lambda: self._apply(request, documents, options, dry_run), "the services"
        )

    async def _apply(
        self, request: Payload, documents: list[Document], options: ApplyOptions, dry_run: bool
    ) -> Payload:
        config_changes: list[Change] = []
        config_results: list[dict[str, Any]] = []
        if self.secret_store is not None:  # configs first: services may reference them
            configs = _parse_configs(request.get("configs", []))
            config_changes, config_results, problems = self.secret_store.config_changes(configs)
            services = [d for d in documents if isinstance(d, Service)]
            problems += self.secret_store.reference_problems(services, configs)
            if problems:
                raise SpecError(problems)
        plan = plan_apply(self.informer, documents, options, datetime.now(UTC))
        revision = self.informer.revision
        if (plan.changes or config_changes) and not dry_run:
            revision = await self.informer.commit([*config_changes, *plan.changes], atomic=True)
            for config in config_results:
                if config["action"] != "unchanged":
                    self.events.record(f"config/{config['name']}", "Applied", config["action"])
            for result in plan.changed:
                reason = "Pruned" if result.action == "pruned" else "Applied"
                message = result.action
                if result.changed:
                    message += ": " + "; ".join(result.changed)
                if options.set_name:
                    message += f" (apply set {options.set_name})"
                self.events.record(result.ref, reason, message)
        specs = {d.name: d.spec for d in documents if isinstance(d, Service)}
        results = []
        for result in plan.results:
            wire = result.to_wire()
            if result.kind == "Service" and result.action in ("created", "configured"):
                wire["warnings"] = apply_warnings(specs[result.name])
            results.append(wire)
        return {"results": [*config_results, *results], "dryRun": dry_run, "revision": revision}

    async def apply_set(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        """``{"set": ApplySet | None}`` for ``name``: what the set owns now."""
        entry = self.informer.applysets.get(str(request.get("name", "")))
        return {"set": entry.obj.to_wire() if entry is not None else None}

    async def delete(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        if _kind(str(request.get("kind", "services"))) != "services":
            raise ValueError("only services can be deleted")
        names = [str(n) for n in request.get("names", [])]
        selector = _selector(request)
        if selector:
            if names:
                raise ValueError("selector: give either names or a selector, not both")
            names = sorted(
                n
                for n, e in self.informer.services.items()
                if selector.matches(e.obj.metadata.labels)
            )
        missing = [n for n in names if self.informer.service(n) is None]
        if missing and not request.get("ignoreNotFound"):
            raise NotFoundError(f"service(s) not found: {', '.join(missing)}")
        changes = []
        for name in names:
            entry = self.informer.service(name)
            if entry is not None:
                changes.append(Change.delete(SERVICES + name, entry.revision))
        await self.informer.commit(changes)
        for change in changes:
            self.events.record(change.key.replace("/services/", "service/"), "Deleted", "deleted")
        return {"deleted": [c.key[len(SERVICES) :] for c in changes], "missing": missing}

    async def scale(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        # The orchestrator may write a rollout status meanwhile: recompute then.
        return await retry_on_conflict(lambda: self._scale(request), "the services")

    async def _scale(self, request: Payload) -> Payload:
        targets = {str(k): int(v) for k, v in dict(request.get("replicas", {})).items()}
        changes = []
        now = datetime.now(UTC)
        for name, replicas in targets.items():
            entry = self.informer.service(name)
            if entry is None:
                raise NotFoundError(f"service {name!r} not found")
            service = entry.obj
            if service.spec.mode == "global":
                raise ValueError(f"service {name!r} is global: it runs one task per node")
            if replicas < 0:
                raise ValueError(f"replicas for {name!r} cannot be negative")
            spec = ServiceSpec.model_validate({**service.spec.model_dump(), "replicas": replicas})
            meta = service.metadata.model_copy(
                update={"generation": (service.metadata.generation or 0) + 1, "updated_at": now}
            )
            changes.append(
                Change.put(
                    service.model_copy(update={"spec": spec, "metadata": meta}), entry.revision
                )
            )
        await self.informer.commit(changes)
        for name, replicas in targets.items():
            self.events.record(f"service/{name}", "Scaled", f"replicas set to {replicas}")
        return {"scaled": targets}

    async def update_node(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        node_id = str(request["name"])

        async def attempt() -> Node:
            entry = self.informer.nodes.get(node_id)
            if entry is None:
                raise NotFoundError(f"node {node_id!r} not found")
            spec = entry.obj.spec
            update: dict[str, Any] = {}
            if request.get("availability"):
                update["availability"] = Availability(str(request["availability"]))
            labels = {
                **spec.labels,
                **{str(k): str(v) for k, v in request.get("labelAdd", {}).items()},
            }
            for key in request.get("labelRemove", []):
                labels.pop(str(key), None)
            update["labels"] = labels
            node = entry.obj.model_copy(update={"spec": spec.model_copy(update=update)})
            await self.informer.commit([Change.put(node, entry.revision)])
            return node

        node = await retry_on_conflict(attempt, f"node {node_id!r}")
        self.events.record(f"node/{node_id}", *node_update_event(node))
        return {"node": node.to_wire()}

    # ------------------------------------------------------------------ reads

    def _service_view(self, service: Service) -> dict[str, Any]:
        live, running = self.informer.task_counts(service.name)
        desired = (
            live
            if service.spec.mode == "global" or service.spec.is_job
            else service.spec.replica_count
        )
        kept = service.status or ServiceStatus()
        status = kept.model_copy(
            update={
                "desired_tasks": desired,
                "running_tasks": running,
                "observed_generation": service.metadata.generation,
                "error": self.reports.error(service.name),
            }
        )
        return service.model_copy(update={"status": status}).to_wire()

    def _task_view(self, task: Task) -> dict[str, Any]:
        view = task.to_wire()
        view["name"] = task.name
        return view

    async def get(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        kind = _kind(str(request.get("kind", "")))
        name = request.get("name")
        selector = _selector(request)
        if kind == "services":
            entries = sorted(self.informer.services.items())
            items = [
                self._service_view(e.obj)
                for n, e in entries
                if name in (None, n) and selector.matches(e.obj.metadata.labels)
            ]
            if name and not items:
                raise NotFoundError(f"service {name!r} not found")
        elif kind == "tasks":
            return self._get_tasks(request, name, selector)
        elif kind == "syncs":
            items = [
                e.obj.to_wire()
                for n, e in sorted(self.informer.syncs.items())
                if name in (None, n) and selector.matches(e.obj.metadata.labels)
            ]
            if name and not items:
                raise NotFoundError(f"sync {name!r} not found")
        else:
            items = [
                e.obj.to_wire()
                for n, e in sorted(self.informer.nodes.items())
                if name in (None, n) and selector.matches(e.obj.labels)
            ]
            if name and not items:
                raise NotFoundError(f"node {name!r} not found")
            # What `get nodes` shows in its TASKS column, without listing every task.
            counts = {
                n: sum(1 for t in self.informer.tasks_on_node(n) if not t.obj.status.state.terminal)
                for n in (item["id"] for item in items)
            }
            return {"items": items, "revision": self.informer.revision, "taskCounts": counts}
        return {"items": items, "revision": self.informer.revision}

    def _get_tasks(self, request: Payload, name: Any, selector: Selector) -> Payload:
        """``Get`` of tasks: with ``limit``, one page of them (``shoal.manager.taskpages``)."""
        limit = parse_limit(request.get("limit"))
        cursor = decode_token(request.get("continue"))
        service = request.get("service")
        if service is not None and not isinstance(service, str):
            raise ValueError("service: must be a service name")
        history = bool(request.get("all"))
        # Tasks carry the labels of their service.
        labels = {n: e.obj.metadata.labels for n, e in self.informer.services.items()}

        def matches(task: Task) -> bool:
            return (
                service in (None, task.service)
                and name in (None, task.id, task.name)
                and (not selector or selector.matches(labels.get(task.service, {})))
                and (
                    history
                    or task.desired_state == DesiredState.RUNNING
                    or not task.status.state.terminal
                )
            )

        def find(task_id: str) -> Task | None:
            entry = self.informer.tasks.get(task_id)
            return entry.obj if entry is not None else None

        entries = (
            self.informer.tasks_of_service(service)
            if service is not None
            else self.informer.all_tasks()
        )
        filters = (service, name if isinstance(name, str) else repr(name), str(selector), history)
        listed = self.task_listings.page(
            (e.obj for e in entries if matches(e.obj)), find, matches, filters, limit, cursor
        )
        answer: Payload = {
            "items": [self._task_view(t) for t in listed["tasks"]],
            "revision": self.informer.revision,
        }
        if limit is not None:
            answer["remaining"] = listed["remaining"]
        if "continue" in listed:
            answer["continue"] = listed["continue"]
        return answer

    async def describe(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        kind = _kind(str(request.get("kind", "services")))
        name = str(request["name"])
        if kind == "nodes":
            node_entry = self.informer.nodes.get(name)
            if node_entry is None:
                raise NotFoundError(f"node {name!r} not found")
            tasks = sorted(
                (e.obj for e in self.informer.tasks_on_node(name)), key=lambda t: t.created_at
            )
            return {
                "node": node_entry.obj.to_wire(),
                "tasks": [self._task_view(t) for t in tasks],
                "events": [e.to_wire() for e in self.events.events(EventFilter(node=name), 50)],
            }
        entry = self.informer.service(name)
        if entry is None:
            raise NotFoundError(f"service {name!r} not found")
        tasks = sorted(
            (e.obj for e in self.informer.tasks_of_service(name)),
            key=lambda t: (t.slot, t.node_id or "", t.created_at),
        )
        return {
            "service": self._service_view(entry.obj),
            # A service of 100,000 replicas is described, not dumped: `get tasks` lists them all.
            "tasks": [self._task_view(t) for t in tasks[:DESCRIBE_TASKS]],
            "tasksOmitted": max(0, len(tasks) - DESCRIBE_TASKS),
            "notes": self.reports.notes(name),
            "events": [e.to_wire() for e in self.events.events(EventFilter(service=name), 50)],
        }

    async def logs(
        self, request: Payload, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Payload]:
        """Output of ``service``'s tasks, of the services ``selector`` matches, or of one
        ``task`` (id, unique id prefix or name); see ``shoal.manager.logstream``."""
        tail = request.get("tail")
        if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
            raise ValueError(f"tail: must be a whole number >= 0 (got {tail!r})")
        service, task = request.get("service"), request.get("task")
        selector = _selector(request)
        if sum(1 for given in (service, task, str(selector)) if given) != 1:
            raise ValueError(
                "service: name the service (or give task or selector) whose logs to send"
            )
        for field, value in (("service", service), ("task", task)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{field}: must be a name")
        since = request.get("since")
        if since is not None:
            if not isinstance(since, str):
                raise ValueError(
                    f"since: must be a duration like '10m' or an RFC 3339 time (got {since!r})"
                )
            try:
                since = parse_since(since)
            except ValueError as exc:
                raise ValueError(f"since: {exc}") from None
        scope = LogScope(self.informer, service, selector if selector else None, task)
        logs = ServiceLogs(self.informer, self.dispatcher)
        async for item in logs.stream(scope, bool(request.get("follow")), tail, since=since):
            yield item

    async def version(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        await asyncio.sleep(0)
        return {"version": shoal.__version__}
