"""Secrets and configs on the manager: the Control calls, apply's checks, and delivery.

The bytes enter through ``CreateSecret`` / ``CreateConfig`` (or a ``kind:
Config`` document in an apply), are sealed with the data key at once, and are
stored sealed (``shoal.models.secret``). They leave the manager in exactly one
way: ``deliveries(tasks)``, which the dispatcher attaches to an agent's
assignment message for the tasks that are about to start there. Nothing else
ever opens them: list and inspect answers show names, labels, sizes and dates
(``view``), and events name the object only.

Rules, Swarm's: names are immutable (creating an existing name is refused, and
applying a ``kind: Config`` with other text than the stored one is refused);
``Remove`` is refused while a service's template references the object;
apply refuses a service that references a secret or config that does not exist,
naming the field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import grpc.aio
import structlog

from shoal.api.transport import Method, Payload, Unary
from shoal.errors import ConflictError, DataKeyError, NotFoundError, SpecError
from shoal.models import DesiredState, Service, Task, TaskState
from shoal.models.secret import Config, ConfigDocument, FileMetadata, Secret, check_size
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Entry, Informer
from shoal.security.datakey import DataKey
from shoal.store.typed import CONFIGS, SECRETS, Change

log = structlog.get_logger(__name__)

# Control methods that write (the router forwards them to the leader).
WRITE_METHODS = ("CreateSecret", "RemoveSecret", "CreateConfig", "RemoveConfig")
_PREFIX = {"secret": SECRETS, "config": CONFIGS}


def _decode_data(request: Payload) -> bytes:
    try:
        return base64.b64decode(str(request.get("data", "")), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("data: expected base64") from None


class SecretStore:
    """The handlers and checks described in the module docstring."""

    def __init__(self, informer: Informer, data_key: DataKey, events: EventRecorder) -> None:
        self.informer = informer
        self.data_key = data_key
        self.events = events

    def methods(self) -> dict[str, Method]:
        return {
            "CreateSecret": Unary(self._create("secret")),
            "GetSecrets": Unary(self._get("secret")),
            "RemoveSecret": Unary(self._remove("secret")),
            "CreateConfig": Unary(self._create("config")),
            "GetConfigs": Unary(self._get("config")),
            "RemoveConfig": Unary(self._remove("config")),
        }

    # ------------------------------------------------------------- objects

    def _table(self, kind: str) -> Mapping[str, Entry[Any]]:
        return self.informer.secrets if kind == "secret" else self.informer.configs

    def seal(self, kind: str, name: str, data: bytes, labels: dict[str, str]) -> Secret | Config:
        """A new record for ``name`` holding ``data`` sealed for its store key."""
        check_size(kind, len(data))
        metadata = FileMetadata(name=name, labels=labels, created_at=datetime.now(UTC))
        sealed = self.data_key.seal(data, (_PREFIX[kind] + name).encode())
        fields: dict[str, Any] = {
            "metadata": metadata,
            "size": len(data),
            "sealed": base64.b64encode(sealed).decode(),
        }
        return Secret(**fields) if kind == "secret" else Config(**fields)

    def open(self, obj: Secret | Config) -> bytes:
        prefix = SECRETS if isinstance(obj, Secret) else CONFIGS
        return self.data_key.open(base64.b64decode(obj.sealed), (prefix + obj.name).encode())

    def secret_bytes(self, name: str) -> bytes | None:
        """The clear bytes of secret ``name`` (a Sync's git login), None when there is none."""
        entry = self.informer.secrets.get(name)
        return self.open(entry.obj) if entry is not None else None

    def users(self, kind: str, name: str) -> list[str]:
        """What references ``name``: ``service/NAME`` templates, ``sync/NAME`` git logins."""
        found = []
        for service_name, entry in sorted(self.informer.services.items()):
            template = entry.obj.spec.template
            refs = template.secrets if kind == "secret" else template.configs
            if any(ref.source == name for ref in refs):
                found.append(f"service/{service_name}")
        if kind == "secret":
            for sync_name, sync_entry in sorted(self.informer.syncs.items()):
                git = sync_entry.obj.spec.source.git
                if git is not None and git.secret_ref == name:
                    found.append(f"sync/{sync_name}")
        return found

    # ---------------------------------------------------------------- RPCs

    def _create(self, kind: str) -> Any:
        async def create(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
            try:
                metadata = FileMetadata.model_validate(
                    {"name": request.get("name"), "labels": request.get("labels") or {}}
                )
            except ValueError as exc:
                raise SpecError([f"{kind} {request.get('name')!r}: {exc}"]) from exc
            data = _decode_data(request)
            name = metadata.name
            existing = self._table(kind).get(name)
            if (
                existing is not None
                and request.get("ifSame")
                and existing.obj.metadata.labels == metadata.labels
                and self.open(existing.obj) == data
            ):
                # A stack redeployed with the same file: nothing to do. Only a
                # request with the same labels (the same stack) is compared, so
                # ifSame is no way to test guesses against another's secret.
                return {kind: existing.obj.view(), "unchanged": True}
            if existing is not None:
                raise ConflictError(
                    f"{kind} {name!r} already exists and {kind}s never change: create one "
                    f"under a new name and update the services that use it"
                )
            obj = self.seal(kind, name, data, metadata.labels)
            try:
                await self.informer.commit([Change.put(obj, 0)])
            except ConflictError:
                raise ConflictError(f"{kind} {name!r} already exists") from None
            self.events.record(f"{kind}/{name}", "Created", f"{obj.size} bytes")
            log.info(f"{kind}.created", name=name, size=obj.size)
            return {kind: obj.view()}

        return create

    def _get(self, kind: str) -> Any:
        async def get(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
            name = request.get("name")
            table = self._table(kind)
            items = []
            for item_name, entry in sorted(table.items()):
                if name in (None, item_name):
                    view = entry.obj.view()
                    view["usedBy"] = self.users(kind, item_name)
                    items.append(view)
            if name is not None and not items:
                raise NotFoundError(f"{kind} {name!r} not found")
            return {"items": items, "revision": self.informer.revision}

        return get

    def _remove(self, kind: str) -> Any:
        async def remove(request: Payload, context: grpc.aio.ServicerContext) -> Payload:
            names = [str(n) for n in request.get("names", [])]
            table = self._table(kind)
            missing = [n for n in names if n not in table]
            if missing:
                raise NotFoundError(f"{kind}(s) not found: {', '.join(missing)}")
            in_use = {n: self.users(kind, n) for n in names}
            busy = [f"{n} (used by {', '.join(users)})" for n, users in in_use.items() if users]
            if busy:
                raise ConflictError(
                    f"cannot remove a {kind} in use: {'; '.join(busy)}; "
                    "remove it from their specs first"
                )
            changes = [Change.delete(_PREFIX[kind] + n, table[n].revision) for n in names]
            await self.informer.commit(changes)
            for name in names:
                self.events.record(f"{kind}/{name}", "Removed", "removed")
            return {"removed": names}

        return remove

    # ------------------------------------------------------------ for apply

    def reference_problems(
        self, services: list[Service], configs: list[ConfigDocument]
    ) -> list[str]:
        """Each reference to a secret or config that neither exists nor comes in this apply."""
        incoming = {doc.name for doc in configs}
        problems = []
        for service in services:
            template = service.spec.template
            for index, secret_ref in enumerate(template.secrets):
                if secret_ref.source not in self.informer.secrets:
                    problems.append(
                        f"service {service.name}: spec.template.secrets[{index}].source: "
                        f"no secret named {secret_ref.source!r} (create it first: "
                        f"shoal secret create {secret_ref.source} -f FILE)"
                    )
            for index, config_ref in enumerate(template.configs):
                known = config_ref.source in self.informer.configs or config_ref.source in incoming
                if not known:
                    problems.append(
                        f"service {service.name}: spec.template.configs[{index}].source: "
                        f"no config named {config_ref.source!r} (create it with shoal config "
                        "create, or apply a kind: Config document)"
                    )
        return problems

    def config_changes(
        self, documents: list[ConfigDocument]
    ) -> tuple[list[Change], list[dict[str, str]], list[str]]:
        """Changes, per-document results and problems for the ``kind: Config`` of an apply."""
        changes: list[Change] = []
        results: list[dict[str, str]] = []
        problems: list[str] = []
        for doc in documents:
            data = doc.data.encode()
            entry = self.informer.configs.get(doc.name)
            if entry is None:
                try:
                    obj = self.seal("config", doc.name, data, doc.metadata.labels)
                except ValueError as exc:
                    problems.append(f"config {doc.name}: data: {exc}")
                    continue
                changes.append(Change.put(obj, 0))
                results.append({"kind": "Config", "name": doc.name, "action": "created"})
                continue
            try:
                same = self.open(entry.obj) == data
            except DataKeyError as exc:
                problems.append(f"config {doc.name}: {exc}")
                continue
            if not same:
                problems.append(
                    f"config {doc.name}: data: configs never change; put the new text under a "
                    "new name and point the services at it"
                )
                continue
            results.append({"kind": "Config", "name": doc.name, "action": "unchanged"})
        return changes, results, problems

    # ------------------------------------------------------------ delivery

    def deliveries(self, tasks: list[Task]) -> Payload | None:
        """The bytes the tasks about to start need: ``{"secrets": {name: b64}, "configs": …}``.

        Only tasks that are assigned and not yet started on the node get them,
        and only the objects they reference.
        """
        wanted: dict[str, set[str]] = {"secret": set(), "config": set()}
        for task in tasks:
            if (
                task.status.state != TaskState.ASSIGNED
                or task.desired_state != DesiredState.RUNNING
            ):
                continue
            wanted["secret"].update(ref.source for ref in task.template.secrets)
            wanted["config"].update(ref.source for ref in task.template.configs)
        if not wanted["secret"] and not wanted["config"]:
            return None
        payload: Payload = {"secrets": {}, "configs": {}}
        for kind, names in wanted.items():
            table = self._table(kind)
            for name in sorted(names):
                entry = table.get(name)
                if entry is None:
                    continue  # removed meanwhile: the agent rejects the task, naming it
                try:
                    data = self.open(entry.obj)
                except DataKeyError as exc:
                    log.error("secret.undecryptable", kind=kind, name=name, error=str(exc))
                    continue
                payload[f"{kind}s"][name] = base64.b64encode(data).decode()
        return payload
