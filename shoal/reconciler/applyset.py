"""Applying documents in one transaction, optionally as a named apply set that can prune.

``shoal apply`` (through the Control service) and the Sync controller apply
the same way, so both go through ``plan_apply``: it compares every document
with the informer's copy, decides ``created``, ``configured`` or
``unchanged`` for each, and returns the changes for one transaction, so an
apply of many documents is all or nothing.

An *apply set* is a name under which the store records what an apply owns
(``/applysets/<name>``, an ``ApplySet``). Applying with a set name records the
services of this apply as the set's members; with ``prune`` the members of the
previous record that this apply no longer contains are deleted in the same
transaction. Only members are ever pruned: a service applied without a set,
or by another set, is never touched. A service belongs to at most one set
(applying it under another set is refused, naming the owner), and pruning
every member of a set is refused unless ``allow_empty`` (an emptied
directory or a wrong path is more often a mistake than a wish).

Only the fields users write are compared and written (``shoal.specdiff``):
``status`` and the manager's metadata (generation, times, sync requests) are
kept from the stored object, so applying ``get -o yaml`` output changes
nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shoal.dependencies import cycle_message, dependency_order, distinct_cycles, find_cycle
from shoal.errors import ApplySetError, SpecError
from shoal.models import Service
from shoal.models.sync import ApplySet, ApplySetMember, Sync
from shoal.reconciler.informer import Informer
from shoal.reconciler.rollout import new_revision_status
from shoal.specdiff import changed_fields, comparable, same
from shoal.store.typed import SERVICES, SYNCS, Change

Document = Service | Sync


@dataclass(frozen=True, slots=True)
class ApplyOptions:
    set_name: str | None = None
    prune: bool = False
    allow_empty: bool = False
    # Recorded in the set: where the documents came from and which revision.
    source: str = ""
    revision: str = ""
    # Recorded with a new template revision of a service (``shoal rollout history``).
    cause: str = "apply"


@dataclass(frozen=True, slots=True)
class Result:
    kind: str
    name: str
    action: str  # created | configured | unchanged | pruned
    changed: tuple[str, ...] = ()  # "spec.replicas: 5 → 3" for configured
    revision: int | None = None  # a service's template revision

    @property
    def ref(self) -> str:
        return f"{self.kind.lower()}/{self.name}"

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {"kind": self.kind, "name": self.name, "action": self.action}
        if self.changed:
            wire["changed"] = list(self.changed)
        if self.revision is not None:
            wire["revision"] = self.revision
        return wire


@dataclass
class ApplyPlan:
    results: list[Result] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    revision: str = ""
    # The services the set owns after this apply (None when applied without a set).
    members: list[str] | None = None

    @property
    def changed(self) -> list[Result]:
        return [r for r in self.results if r.action != "unchanged"]

    @property
    def services(self) -> list[str]:
        return sorted(r.name for r in self.results if r.kind == "Service" and r.action != "pruned")


def digest(documents: Sequence[Document]) -> str:
    """A content digest of the documents: equal for equal specs in any order or layout."""
    canonical = sorted(
        json.dumps(comparable(d), sort_keys=True, separators=(",", ":")) for d in documents
    )
    return "sha256:" + hashlib.sha256("\n".join(canonical).encode()).hexdigest()[:16]


def plan_apply(
    informer: Informer, documents: Sequence[Document], options: ApplyOptions, now: datetime
) -> ApplyPlan:
    """What applying ``documents`` would change; raises ``ApplySetError`` when a set refuses."""
    plan = ApplyPlan(revision=options.revision or digest(documents))
    services = [d for d in documents if isinstance(d, Service)]
    syncs = [d for d in documents if isinstance(d, Sync)]
    if options.set_name is not None:
        _check_owners(informer, [*services, *syncs], options.set_name)
    if syncs:
        check_dependencies(informer, syncs)
    services = check_service_dependencies(informer, services)
    # Dependencies first: the transaction, the results and the events list them so.
    for service in services:
        _plan_service(informer, service, options.cause, now, plan)
    for sync in syncs:
        _plan_sync(informer, sync, now, plan)
    if options.set_name is not None:
        _plan_set(informer, [*services, *syncs], options, now, plan)
    return plan


def _plan_service(
    informer: Informer, service: Service, cause: str, now: datetime, plan: ApplyPlan
) -> None:
    entry = informer.service(service.name)
    if entry is None:
        status = new_revision_status(None, service.spec, cause, now)
        meta = service.metadata.model_copy(
            update={"generation": 1, "created_at": now, "updated_at": now}
        )
        stored = service.model_copy(update={"metadata": meta, "status": status})
        plan.changes.append(Change.put(stored, 0))
        plan.results.append(Result("Service", service.name, "created", revision=1))
        return
    current = entry.obj
    current_revision = current.status.revision if current.status else None
    if same(current, service):
        plan.results.append(Result("Service", service.name, "unchanged", revision=current_revision))
        return
    if current.spec.mode != service.spec.mode:
        raise ValueError(
            f"service {service.name!r}: spec.mode cannot change "
            f"({current.spec.mode} → {service.spec.mode}); delete and create it again"
        )
    status = new_revision_status(current, service.spec, cause, now) or current.status
    meta = current.metadata.model_copy(
        update={
            "labels": service.metadata.labels,
            "generation": (current.metadata.generation or 0) + 1,
            "updated_at": now,
        }
    )
    stored = current.model_copy(update={"spec": service.spec, "metadata": meta, "status": status})
    plan.changes.append(Change.put(stored, entry.revision))
    plan.results.append(
        Result(
            "Service",
            service.name,
            "configured",
            tuple(changed_fields(current, service)),
            revision=status.revision if status else None,
        )
    )


def _plan_sync(informer: Informer, sync: Sync, now: datetime, plan: ApplyPlan) -> None:
    entry = informer.syncs.get(sync.name)
    if entry is None:
        meta = sync.metadata.model_copy(
            update={"generation": 1, "created_at": now, "updated_at": now, "requested_at": None}
        )
        plan.changes.append(
            Change.put(sync.model_copy(update={"metadata": meta, "status": None}), 0)
        )
        plan.results.append(Result("Sync", sync.name, "created"))
        return
    current = entry.obj
    if same(current, sync):
        plan.results.append(Result("Sync", sync.name, "unchanged"))
        return
    meta = current.metadata.model_copy(
        update={
            "labels": sync.metadata.labels,
            "generation": (current.metadata.generation or 0) + 1,
            "updated_at": now,
        }
    )
    stored = current.model_copy(update={"spec": sync.spec, "metadata": meta})
    plan.changes.append(Change.put(stored, entry.revision))
    plan.results.append(
        Result("Sync", sync.name, "configured", tuple(changed_fields(current, sync)))
    )


def check_dependencies(informer: Informer, syncs: Sequence[Sync]) -> None:
    """Refuse Syncs whose ``dependsOn`` would form a cycle with each other or the stored ones."""
    graph = {name: [d.name for d in e.obj.spec.depends_on] for name, e in informer.syncs.items()}
    graph.update({s.name: [d.name for d in s.spec.depends_on] for s in syncs})
    problems = []
    for sync in syncs:
        cycle = find_cycle(graph, sync.name)
        if cycle:
            problems.append(
                f"sync/{sync.name}: spec.dependsOn: dependency cycle {' → '.join(cycle)}; "
                "a Sync in a cycle could never apply"
            )
    if problems:
        raise SpecError(problems)


def check_service_dependencies(informer: Informer, services: Sequence[Service]) -> list[Service]:
    """``services`` in dependency order; refuses ``dependsOn`` cycles among them and the
    stored services (the new specs replacing the stored ones of the same name)."""
    graph = {
        name: [d.service for d in e.obj.spec.depends_on] for name, e in informer.services.items()
    }
    graph.update({s.name: [d.service for d in s.spec.depends_on] for s in services})
    names = [s.name for s in services]
    problems = [
        f"service/{name}: spec.dependsOn[{index}].service: {cycle_message(cycle)}"
        for name, index, cycle in distinct_cycles(graph, names)
    ]
    # Services that restart when a service they discover changes, around a loop: each
    # restart changes the endpoints the next one restarts on, for ever.
    restarts = {name: _restarts_on(e.obj) for name, e in informer.services.items()}
    restarts.update({s.name: _restarts_on(s) for s in services})
    problems += [
        f"service/{name}: spec.template.onEndpointsChange: restart loop "
        f"{' → '.join(cycle)}: each restart changes the endpoints the next one restarts "
        "on; use signal:SIGNAL or none on one of them"
        for name, _, cycle in distinct_cycles(restarts, names)
    ]
    if problems:
        raise SpecError(problems)
    by_name = {s.name: s for s in services}
    return [by_name[name] for name in dependency_order(list(by_name), graph)]


def _restarts_on(service: Service) -> list[str]:
    """The services whose endpoint changes restart ``service``'s tasks."""
    template = service.spec.template
    return list(template.discover) if template.on_endpoints_change == "restart" else []


def owner_of(informer: Informer, service: str, kind: str = "Service") -> str | None:
    """The apply set that owns ``service`` (or the Sync of that name), if any."""
    for name, entry in informer.applysets.items():
        if entry.obj.owns(kind, service):
            return name
    return None


def _check_owners(informer: Informer, documents: Sequence[Document], set_name: str) -> None:
    problems = []
    for doc in documents:
        owner = owner_of(informer, doc.name, doc.kind)
        if owner is not None and owner != set_name:
            problems.append(f"{doc.kind.lower()}/{doc.name} belongs to apply set {_shown(owner)}")
    if problems:
        raise ApplySetError(
            f"{'; '.join(problems)}; apply it with that set, or remove it from that set's "
            f"files and apply them with --prune first (this apply is set {_shown(set_name)})"
        )


def _shown(set_name: str) -> str:
    if set_name.startswith("sync."):
        return f"{set_name!r} (Sync {set_name.removeprefix('sync.')!r})"
    if set_name.startswith("stack."):
        return f"{set_name!r} (stack {set_name.removeprefix('stack.')!r})"
    return repr(set_name)


def _stored(informer: Informer, member: ApplySetMember) -> tuple[str, int] | None:
    """The key and revision of a set member that still exists."""
    if member.kind == "Sync":
        sync = informer.syncs.get(member.name)
        return (SYNCS + member.name, sync.revision) if sync is not None else None
    service = informer.service(member.name)
    return (SERVICES + member.name, service.revision) if service is not None else None


def _plan_set(
    informer: Informer,
    documents: Sequence[Document],
    options: ApplyOptions,
    now: datetime,
    plan: ApplyPlan,
) -> None:
    assert options.set_name is not None
    entry = informer.applysets.get(options.set_name)
    previous = entry.obj if entry is not None else None
    wanted = {ApplySetMember(kind=d.kind, name=d.name) for d in documents}
    members = wanted
    if options.prune and previous is not None:
        gone = [
            (m, stored)
            for m in previous.members
            if m not in wanted and (stored := _stored(informer, m)) is not None
        ]
        if gone and not wanted and not options.allow_empty:
            refs = ", ".join(f"{m.kind.lower()}/{m.name}" for m, _ in gone)
            raise ApplySetError(
                f"refusing to prune everything apply set {_shown(options.set_name)} owns "
                f"({refs}): the source holds nothing; allow an empty set to do that "
                "(apply --allow-empty, or allowEmpty: true on a Sync)"
            )
        for member, (key, revision) in gone:
            plan.changes.append(Change.delete(key, revision))
            plan.results.append(Result(member.kind, member.name, "pruned"))
    elif previous is not None:
        # Without prune the set keeps what it owned: those objects still exist
        # and a later prune must still find them.
        members = wanted | {m for m in previous.members if _stored(informer, m) is not None}
    ordered = sorted(members, key=lambda m: (m.kind, m.name))
    plan.members = [m.name for m in ordered if m.kind == "Service"]
    record = ApplySet(
        name=options.set_name,
        source=options.source,
        revision=plan.revision,
        members=ordered,
        updated_at=now,
    )
    if previous is not None and (
        previous.source,
        previous.revision,
        previous.members,
    ) == (record.source, record.revision, record.members):
        return
    plan.changes.append(Change.put(record, entry.revision if entry is not None else 0))
