"""The Control method ``Endpoints``: a service's endpoints, once or as they change.

Served by every manager from its own ``EndpointIndex`` (its informer), like
``Get``: a follower answers without asking the leader. The stream's first item
is the service's current list; with ``watch`` every change follows as the whole
list again (``{"service", "endpoints": [...]}``), and a deleted service ends
the stream with ``{"service", "deleted": true}``. An unknown service is
``NOT_FOUND``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc.aio

from shoal.api.transport import Method, Payload, ServerStream
from shoal.errors import NotFoundError
from shoal.manager.endpoints import EndpointIndex


class EndpointsApi:
    """The ``Endpoints`` handler over one manager's index."""

    def __init__(self, index: EndpointIndex) -> None:
        self.index = index

    def methods(self) -> dict[str, Method]:
        return {"Endpoints": ServerStream(self.endpoints)}

    async def endpoints(
        self, request: Payload, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Payload]:
        service = request.get("service")
        if not isinstance(service, str) or not service:
            raise ValueError("service: name the service whose endpoints to list")
        watch = request.get("watch", False)
        if not isinstance(watch, bool):
            raise ValueError(f"watch: must be true or false (got {watch!r})")
        if not self.index.known(service):
            raise NotFoundError(f"service {service!r} not found")
        changed = asyncio.Event()

        def heard(names: frozenset[str]) -> None:
            if service in names:
                changed.set()

        unsubscribe = self.index.subscribe(heard)
        try:
            yield {"service": service, "endpoints": self.index.wire(service)}
            while watch:
                await changed.wait()
                changed.clear()
                if not self.index.known(service):
                    yield {"service": service, "deleted": True}
                    return
                yield {"service": service, "endpoints": self.index.wire(service)}
        finally:
            unsubscribe()
