"""The Control methods of Syncs: ``shoal sync now|suspend|resume|status``.

Syncs are created, changed and deleted like every other document (``Apply``,
``Get`` with kind ``syncs``); these are the verbs on top. ``SyncNow`` stamps
``metadata.requestedAt``, which the Sync controller answers with a run and
records in ``status.lastHandledRequest`` (so the CLI can wait for exactly its
own request). ``SyncSuspend`` sets ``spec.suspend`` (a new generation, as an
apply would). ``SyncDelete`` deletes the Sync and leaves its services running
(the controller then drops its apply set). ``DescribeSync`` adds the events
the leader recorded and the apply set the Sync owns. Each retries a few times
when the controller writes the status in between (a lost compare-on-revision).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import grpc.aio

from shoal.api.transport import Method, Payload, Unary
from shoal.errors import ConflictError, NotFoundError, ShoalError
from shoal.models.sync import Sync, sync_set_name
from shoal.reconciler.events import EventRecorder
from shoal.reconciler.informer import Informer
from shoal.store.typed import SYNCS, Change

ATTEMPTS = 5


class SyncApi:
    """Handlers of the Sync methods of the Control service."""

    def __init__(self, informer: Informer, events: EventRecorder) -> None:
        self.informer = informer
        self.events = events

    def methods(self) -> dict[str, Method]:
        return {
            "SyncNow": Unary(self.sync_now),
            "SyncSuspend": Unary(self.suspend),
            "DescribeSync": Unary(self.describe),
            "SyncDelete": Unary(self.delete),
        }

    def _get(self, name: str) -> Sync:
        entry = self.informer.syncs.get(name)
        if entry is None:
            raise NotFoundError(f"sync {name!r} not found")
        return entry.obj

    async def _update(self, name: str, change: Callable[[Sync], Sync | None]) -> Sync:
        """Apply ``change`` to the stored Sync (None: nothing to write), retrying races."""
        for _ in range(ATTEMPTS):
            entry = self.informer.syncs.get(name)
            if entry is None:
                raise NotFoundError(f"sync {name!r} not found")
            updated = change(entry.obj)
            if updated is None:
                return entry.obj
            try:
                await self.informer.commit([Change.put(updated, entry.revision)])
            except ConflictError:
                continue
            return updated
        raise ConflictError(f"sync {name!r} kept changing; try again")

    async def sync_now(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        name = str(request.get("name", ""))
        if self._get(name).spec.suspend:
            raise ShoalError(
                f"sync/{name} is suspended: resume it first (shoal sync resume {name})"
            )
        now = datetime.now(UTC)

        def stamp(sync: Sync) -> Sync:
            return sync.model_copy(
                update={"metadata": sync.metadata.model_copy(update={"requested_at": now})}
            )

        updated = await self._update(name, stamp)
        self.events.record(f"sync/{name}", "SyncRequested", "a run was requested")
        return {"requestedAt": updated.to_wire()["metadata"]["requestedAt"]}

    async def suspend(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        name = str(request.get("name", ""))
        wanted = bool(request.get("suspend", True))
        now = datetime.now(UTC)

        def flip(sync: Sync) -> Sync | None:
            if sync.spec.suspend == wanted:
                return None
            meta = sync.metadata.model_copy(
                update={"generation": (sync.metadata.generation or 0) + 1, "updated_at": now}
            )
            spec = sync.spec.model_copy(update={"suspend": wanted})
            return sync.model_copy(update={"spec": spec, "metadata": meta})

        before = self._get(name).spec.suspend
        await self._update(name, flip)
        changed = before != wanted
        if changed:
            verb = "Suspended" if wanted else "Resumed"
            self.events.record(f"sync/{name}", verb, verb.lower() + " by hand")
        return {"suspend": wanted, "changed": changed}

    async def delete(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        """Delete a Sync; the services it applied keep running, owned by no set."""
        name = str(request.get("name", ""))
        entry = self.informer.syncs.get(name)
        if entry is None:
            raise NotFoundError(f"sync {name!r} not found")
        await self.informer.commit([Change.delete(SYNCS + name, entry.revision)])
        inventory = entry.obj.status.inventory if entry.obj.status else []
        return {"deleted": name, "kept": inventory}

    async def describe(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        name = str(request.get("name", ""))
        sync = self._get(name)
        record = self.informer.applysets.get(sync_set_name(name))
        return {
            "sync": sync.to_wire(),
            "set": record.obj.to_wire() if record is not None else None,
            "events": [e.to_wire() for e in self.events.for_object(f"sync/{name}")],
        }
