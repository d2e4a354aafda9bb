"""The endpoint catalog: what the managers push and what every agent keeps.

An *endpoint* is one running task of a service that is healthy (or has no health check):
the node it runs on, the address other nodes reach that node at, and its ports by name.

On an agent's session stream the catalog travels as::

    {"type": "endpoints", "full": true, "services": {"web": [Endpoint, ...], "db": []}}
    {"type": "endpoints", "full": false, "services": {"web": [...]}, "removed": ["old"]}

The first message after the assignments is ``full``: every service that exists, each with
its complete endpoint list, an empty list for a service that has no healthy endpoint (so a
resolver can tell "no such service" from "nothing healthy right now"). Later messages carry
only the services whose list changed, each list complete, and the names of deleted
services. The agent keeps the last catalog when the managers are unreachable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import structlog
from pydantic import Field

from shoal.models.base import Model

log = structlog.get_logger(__name__)


class EndpointPort(Model):
    """One named port of an endpoint: ``port`` is where the node listens."""

    name: str
    port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    # Containers only: the port inside the container, reached at ``container_address``.
    target: int | None = Field(default=None, ge=1, le=65535)


class Endpoint(Model):
    """One healthy task of a service, and where to reach it."""

    service: str
    task_id: str
    slot: int
    node_id: str
    # The node's advertise address (``shoal agent --advertise-address``).
    address: str
    ports: list[EndpointPort] = Field(default_factory=list)
    # Containers only: the container's own address on its engine network, reachable from
    # other containers on the same node.
    container_address: str | None = None

    def port(self, name: str) -> EndpointPort | None:
        return next((p for p in self.ports if p.name == name), None)


Listener = Callable[[frozenset[str]], None]


class Catalog:
    """An agent's copy of the endpoint catalog, fed by the session's ``endpoints`` messages.

    ``endpoints(name)`` is ``None`` for a service the catalog does not know and an empty
    tuple for a known service with no healthy endpoint. Listeners are called, on the
    agent's event loop, with the names of the services whose endpoints changed.
    """

    def __init__(self) -> None:
        self._services: dict[str, tuple[Endpoint, ...]] = {}
        self._listeners: list[Listener] = []
        # How many messages changed something; 0 until the first full catalog arrives.
        self.version = 0

    @property
    def received(self) -> bool:
        """Whether a full catalog ever arrived (before that, every name is unknown)."""
        return self.version > 0

    def services(self) -> list[str]:
        return sorted(self._services)

    def endpoints(self, service: str) -> tuple[Endpoint, ...] | None:
        return self._services.get(service)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after every change; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def apply(self, message: Mapping[str, Any]) -> frozenset[str]:
        """Apply one ``endpoints`` message; returns the names whose endpoints changed."""
        incoming = {
            str(name): tuple(Endpoint.from_wire(e) for e in endpoints)
            for name, endpoints in message.get("services", {}).items()
        }
        if message.get("full"):
            return self.replace(incoming)
        return self.update(incoming, message.get("removed", ()))

    def replace(self, services: Mapping[str, Iterable[Endpoint]]) -> frozenset[str]:
        new = {name: tuple(endpoints) for name, endpoints in services.items()}
        changed = {
            n for n in self._services.keys() | new.keys() if self._services.get(n) != new.get(n)
        }
        self._services = new
        return self._changed(changed, first=not self.received)

    def update(
        self, services: Mapping[str, Iterable[Endpoint]], removed: Iterable[str] = ()
    ) -> frozenset[str]:
        changed: set[str] = set()
        for name, endpoints in services.items():
            listed = tuple(endpoints)
            if self._services.get(name) != listed:
                self._services[name] = listed
                changed.add(name)
        for name in removed:
            if self._services.pop(name, None) is not None:
                changed.add(name)
        return self._changed(changed, first=False)

    def _changed(self, changed: set[str], *, first: bool) -> frozenset[str]:
        names = frozenset(changed)
        if not names and not first:
            return names
        self.version += 1
        for listener in list(self._listeners):
            try:
                listener(names)
            except Exception:  # one broken consumer must not starve the others
                log.exception("catalog.listener_failed", listener=repr(listener))
        return names


def message(
    services: Mapping[str, Iterable[Endpoint]], *, full: bool, removed: Iterable[str] = ()
) -> dict[str, Any]:
    """The session message for ``services`` (see the module docstring)."""
    payload: dict[str, Any] = {
        "type": "endpoints",
        "full": full,
        "services": {name: [e.to_wire() for e in eps] for name, eps in services.items()},
    }
    gone = sorted(removed)
    if gone and not full:
        payload["removed"] = gone
    return payload
