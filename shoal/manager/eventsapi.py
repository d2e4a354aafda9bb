"""The Control API's event calls, answered by every manager from its own event log.

``Events``: request ``service``, ``node``, ``object``, ``type`` (Normal or
Warning), ``sinceSeconds``, ``limit`` (the newest N); response ``events`` (oldest
first, each with its ``cursor``) and ``cursor``, the revision the log reflects.
``WatchEvents``: the same filters and ``cursor``; streams ``{"event": …}`` for
every matching event written after the cursor, as it is written. A watcher
that falls too far behind is ended with ``ABORTED`` (list again and watch from
the last cursor seen). Both are reads: followers answer them themselves (the
log follows the store), and the viewer role may call them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio

from shoal.api.transport import Method, Payload, ServerStream, Unary
from shoal.errors import ConflictError
from shoal.reconciler.events import EventFilter, EventRecorder

MAX_LIMIT = 100_000


def _limit(request: Payload) -> int | None:
    limit = request.get("limit")
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_LIMIT:
        raise ValueError(f"limit: must be a whole number from 1 to {MAX_LIMIT} (got {limit!r})")
    return limit


def _cursor(request: Payload) -> int:
    cursor = request.get("cursor", 0)
    if not isinstance(cursor, int) or isinstance(cursor, bool) or cursor < 0:
        raise ValueError(f"cursor: must be a whole number >= 0 (got {cursor!r})")
    return cursor


class EventsApi:
    """``Events`` and ``WatchEvents`` over one ``EventRecorder``."""

    def __init__(self, events: EventRecorder) -> None:
        self.log = events

    def methods(self) -> dict[str, Method]:
        return {"Events": Unary(self.events), "WatchEvents": ServerStream(self.watch)}

    async def events(self, request: Payload, context: grpc.aio.ServicerContext) -> Payload:
        selector = EventFilter.from_wire(request, self.log.clock.now())
        found = self.log.events(selector, _limit(request))
        return {"events": [e.to_wire() for e in found], "cursor": self.log.revision}

    async def watch(
        self, request: Payload, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Payload]:
        selector = EventFilter.from_wire(request, self.log.clock.now())
        cursor = _cursor(request)
        async for event in self.log.watch(cursor, selector):
            cursor = event.cursor
            yield {"event": event.to_wire()}
        raise ConflictError(
            f"this watch fell behind the events at cursor {cursor}: list and watch again"
        )
