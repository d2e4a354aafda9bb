"""The ``Rollout`` Control method: what ``shoal rollout undo|pause|resume|promote|restart`` asks.

Each action rewrites the service's ``status.update`` (and, for ``undo``, its
template) in one compare-on-revision write; the orchestrator's updater
(``shoal.reconciler.rollout``) then does the work at the update's pace.
``history`` needs nothing here: kept revisions are part of the service view.

A request is ``{"name", "action", "toRevision"?}``; the answer is
``{"name", "state", "revision", "message"}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc.aio

from shoal.api.transport import Payload
from shoal.clock import SYSTEM_CLOCK, Clock
from shoal.errors import ConflictError, NotFoundError
from shoal.models import Service
from shoal.models.rollout import UpdateState, UpdateStatus
from shoal.models.service import ServiceSpec, ServiceStatus
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.reconciler.rollout import rollback_to
from shoal.store.typed import Change

ACTIONS = ("undo", "pause", "resume", "promote", "restart")


def apply_warnings(spec: ServiceSpec) -> list[str]:
    """What an apply accepts but should say: a health check slower than the monitor window."""
    check = spec.template.healthcheck
    if check is None or spec.mode.endswith("-job"):
        return []
    found = []
    takes = check.interval * check.retries
    for name, monitor in (
        ("update", spec.update_config.monitor),
        ("rollback", spec.rollback_config.monitor),
    ):
        if takes > monitor:
            found.append(
                f"spec.{name}.monitor ({monitor:g}s) is shorter than the health check's "
                f"interval x retries ({takes:g}s): a task that turns unhealthy after the "
                "monitor window does not count as a failed update"
            )
    return found


class RolloutControl:
    """Handlers behind ``Rollout``."""

    def __init__(
        self,
        informer: Informer,
        events: EventRecorder,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.informer = informer
        self.events = events
        self.clock = clock

    async def rollout(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        name = str(request.get("name", ""))
        action = str(request.get("action", ""))
        if action not in ACTIONS:
            known = ", ".join(ACTIONS)
            raise ValueError(f"action: unknown rollout action {action!r} (use {known})")
        to_revision = request.get("toRevision")
        if to_revision is not None and (not isinstance(to_revision, int) or to_revision < 1):
            raise ValueError(f"toRevision: must be a revision number, got {to_revision!r}")
        for _ in range(5):
            entry = self.informer.service(name)
            if entry is None:
                raise NotFoundError(f"service {name!r} not found")
            changed = self._act(entry.obj, action, to_revision, self.clock.now())
            try:
                await self.informer.commit([Change.put(changed, entry.revision)])
            except ConflictError:
                continue
            update = changed.status.update if changed.status else None
            message = update.message if update else ""
            self.events.record(f"service/{name}", "Rollout", f"{action}: {message}")
            return {
                "name": name,
                "state": update.state.value if update else "",
                "revision": changed.status.revision if changed.status else None,
                "message": message,
            }
        raise ConflictError(f"service {name!r} kept changing; try again")

    def _act(self, service: Service, action: str, to_revision: Any, now: datetime) -> Service:
        status = service.status or ServiceStatus()
        update = status.update
        if service.spec.mode.endswith("-job"):
            raise ValueError(f"service {service.name!r} is a job: jobs have no rollouts")
        if action == "undo":
            target = to_revision
            if target is None:
                target = update.previous_revision if update else None
                if target is None:
                    older = [r.number for r in status.revisions if r.number != status.revision]
                    target = max(older) if older else None
            if target is None:
                raise ValueError(f"service {service.name!r} has no earlier revision to go back to")
            if target == status.revision:
                raise ValueError(f"service {service.name!r} already runs revision {target}")
            try:
                template, new_status = rollback_to(
                    service, int(target), now, f"rolling back to revision {target} (undo)"
                )
            except LookupError as exc:
                raise ValueError(f"toRevision: {exc}") from exc
            return self._write(service, new_status, template_from=template, now=now)
        if action == "restart":
            number = status.revision or 1
            new_update = UpdateStatus(
                state=UpdateState.UPDATING,
                revision=number,
                previous_revision=number,
                message=f"restarting every slot on revision {number}",
                started_at=now,
                progress_at=now,
                restarted_at=now,
            )
            return self._write(service, status.model_copy(update={"update": new_update}), now=now)
        if update is None:
            raise ValueError(f"service {service.name!r} has no rollout to {action}")
        if action == "pause":
            if update.state not in (UpdateState.UPDATING, UpdateState.ROLLBACK_STARTED):
                raise ValueError(f"the rollout of {service.name!r} is {update.state.value}")
            state = (
                UpdateState.ROLLBACK_PAUSED
                if update.state == UpdateState.ROLLBACK_STARTED
                else UpdateState.PAUSED
            )
            new = update.model_copy(
                update={"state": state, "paused_by_user": True, "message": "paused by a user"}
            )
        elif action == "resume":
            if not update.state.paused:
                raise ValueError(
                    f"the rollout of {service.name!r} is {update.state.value}, not paused"
                )
            state = (
                UpdateState.ROLLBACK_STARTED
                if update.state == UpdateState.ROLLBACK_PAUSED
                else UpdateState.UPDATING
            )
            new = update.model_copy(
                update={
                    "state": state,
                    "paused_by_user": False,
                    "failed_tasks": [],
                    "failures_since": now,
                    "progress_at": now,
                    "message": "resumed",
                }
            )
        else:  # promote
            if service.spec.update_config.canary == 0:
                raise ValueError(f"service {service.name!r} has no canaries to promote")
            if update.promoted or update.state not in (
                UpdateState.AWAITING_PROMOTION,
                UpdateState.UPDATING,
            ):
                raise ValueError(f"the rollout of {service.name!r} is {update.state.value}")
            new = update.model_copy(
                update={
                    "state": UpdateState.UPDATING,
                    "promoted": True,
                    "progress_at": now,
                    "message": "canaries promoted",
                }
            )
        return self._write(service, status.model_copy(update={"update": new}), now=now)

    def _write(
        self,
        service: Service,
        status: ServiceStatus,
        now: datetime,
        template_from: Any = None,
    ) -> Service:
        spec = service.spec
        if template_from is not None:
            spec = spec.model_copy(update={"template": template_from})
        metadata = service.metadata.model_copy(
            update={"generation": (service.metadata.generation or 0) + 1, "updated_at": now}
        )
        return service.model_copy(update={"spec": spec, "status": status, "metadata": metadata})
