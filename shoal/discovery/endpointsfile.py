"""Endpoints for tasks that do not use DNS: environment variables and a JSON file.

A task whose template lists ``discover: [web, db]`` gets, at its start::

    SHOAL_ENDPOINTS_WEB=127.0.0.2:20417,127.0.0.3:21873   every endpoint, at its first port
    SHOAL_ENDPOINTS_WEB_HTTP=127.0.0.2:20417,...          the same for each named port
    SHOAL_ENDPOINTS_DB=                                   known, or not (yet): no endpoints
    SHOAL_ENDPOINTS_FILE=/path/to/endpoints.json

Names are upper-cased with ``-`` as ``_``; an endpoint without ports is its address
alone; IPv6 addresses are bracketed (``[::1]:20417``). Endpoints are in slot order. The
environment is fixed at the start; the file is rewritten, atomically (a new file renamed
over the old one: a reader sees the old or the new, never half of one), whenever the
endpoints of a discovered service change::

    {"services": {"web": [{"address": "127.0.0.2", "port": 20417,
                           "ports": {"http": {"port": 20417, "protocol": "tcp"}},
                           "slot": 1, "node": "n1", "task": "..."}, ...],
                  "db": []}}

``address`` and ``port`` are where the task reaches the endpoint from where it runs
(``shoal.discovery.perspective``: a container on the same node is given container
addresses), ``port`` being the first port (None without ports). A service that does not
exist (yet, or any more) is listed with no endpoints, like one with none healthy.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shoal.discovery.catalog import Catalog, Endpoint
from shoal.discovery.perspective import Perspective

FILE_NAME = "endpoints.json"
# Where a container finds the file's directory (bound read-only: a bind of the file
# itself would keep showing the replaced file after the first rename).
CONTAINER_DIR = "/run/shoal/endpoints"
ENV_PREFIX = "SHOAL_ENDPOINTS_"
FILE_ENV = "SHOAL_ENDPOINTS_FILE"


def env_key(*names: str) -> str:
    """``env_key("web-api", "http")`` → ``SHOAL_ENDPOINTS_WEB_API_HTTP``."""
    return ENV_PREFIX + "_".join(n.upper().replace("-", "_") for n in names)


def _sorted(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    return sorted(endpoints, key=lambda e: (e.slot, e.node_id, e.task_id))


def _host_port(address: str, port: int | None) -> str:
    shown = f"[{address}]" if ":" in address else address
    return shown if port is None else f"{shown}:{port}"


class View:
    """The endpoints of some services as one task sees them (see the module docstring)."""

    def __init__(
        self, catalog: Catalog, services: Iterable[str], node_id: str, perspective: Perspective
    ) -> None:
        self.catalog = catalog
        self.services = list(services)
        self.node_id = node_id
        self.perspective = perspective

    def _address(self, endpoint: Endpoint) -> str:
        address = self.perspective.address(endpoint, self.node_id)
        return endpoint.address if address is None else str(address)

    def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for service in self.services:
            endpoints = _sorted(self.catalog.endpoints(service) or ())
            named: dict[str, list[str]] = {}
            first: list[str] = []
            for endpoint in endpoints:
                address = self._address(endpoint)
                ports = [
                    (p.name, self.perspective.port(endpoint, p, self.node_id))
                    for p in endpoint.ports
                ]
                first.append(_host_port(address, ports[0][1] if ports else None))
                for name, number in ports:
                    named.setdefault(name, []).append(_host_port(address, number))
            for name, listed in named.items():
                env.setdefault(env_key(service, name), ",".join(listed))
            env[env_key(service)] = ",".join(first)  # the service's own name wins a clash
        return env

    def document(self) -> dict[str, Any]:
        services: dict[str, list[dict[str, Any]]] = {}
        for service in self.services:
            listed = []
            for endpoint in _sorted(self.catalog.endpoints(service) or ()):
                ports = {
                    p.name: {
                        "port": self.perspective.port(endpoint, p, self.node_id),
                        "protocol": p.protocol,
                    }
                    for p in endpoint.ports
                }
                listed.append(
                    {
                        "address": self._address(endpoint),
                        "port": next(iter(ports.values()))["port"] if ports else None,
                        "ports": ports,
                        "slot": endpoint.slot,
                        "node": endpoint.node_id,
                        "task": endpoint.task_id,
                    }
                )
            services[service] = listed
        return {"services": services}

    def render(self) -> bytes:
        return json.dumps(self.document(), indent=2, sort_keys=True).encode() + b"\n"


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a new file beside ``path`` and rename it over ``path``."""
    # A name of its own per write: two writers at once (the start's, a change's) must not
    # share one scratch file and tear it or rename it from under each other.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
