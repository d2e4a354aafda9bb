"""Discovery on one node: the agent's DNS listeners over its copy of the catalog.

The agent answers the ``shoal.`` zone (``shoal.discovery.dns``) on:

- ``--dns-listen`` (default ``DEFAULT_DNS_LISTEN``, a loopback address beside
  systemd-resolved's ``127.0.0.53:53``), for processes and for a stub resolver of the
  node (docs/discovery.md);
- with ``--container-dns auto`` (the default), port 53 of each container engine's bridge
  gateway (the host's address on the network its containers are started on: found
  through the engine's API), where containers reach the node. The container runtimes then
  give every container they start that address as its only name server, with the search
  domains ``<stack>.shoal`` and ``shoal``. Queries there are answered as a container on
  this node sees the cluster (``Perspective.container``).

A listener that cannot bind is left out with a warning (two agents on one machine share
the engines' gateways: the first one answers for both), except an explicit
``--dns-listen``, which the agent cannot start without.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter

from shoal.api.address import split_host_port
from shoal.discovery.catalog import Catalog
from shoal.discovery.dns import DnsListener, Perspective, Resolver, open_listener
from shoal.errors import RuntimeBackendError
from shoal.runtimes.base import Runtime

log = structlog.get_logger(__name__)

DEFAULT_DNS_LISTEN = "127.0.0.1:8653"
# Containers cannot name a port for their name server: resolv.conf takes addresses only.
CONTAINER_DNS_PORT = 53


@dataclass(frozen=True, slots=True)
class DnsSettings:
    # HOST:PORT, or None for no listener on the node.
    listen: str | None = DEFAULT_DNS_LISTEN
    # Whether ``listen`` was asked for (then failing to bind it stops the agent).
    required: bool = False
    # Answer on the engines' bridge gateways and give containers that name server.
    containers: bool = True


class NodeDiscovery:
    """The DNS listeners of one agent; ``start`` opens them, ``aclose`` releases them."""

    def __init__(
        self,
        catalog: Catalog,
        node_id: str,
        settings: DnsSettings,
        registry: CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.queries = Counter(
            "shoal_agent_dns_queries_total",
            "DNS queries answered by this agent, by response code (error: the handler failed).",
            ["rcode"],
            registry=registry,
        )
        self.resolver = Resolver(
            catalog, node_id, observe=lambda rcode: self.queries.labels(rcode).inc()
        )
        self.listener: DnsListener | None = None
        # Runtime name → its listener on the engine's gateway.
        self.container_listeners: dict[str, DnsListener] = {}

    @property
    def address(self) -> str | None:
        """Where the node's own listener answers (HOST:PORT), if it has one."""
        return self.listener.address if self.listener is not None else None

    async def start(self, runtimes: Mapping[str, Runtime]) -> None:
        """Open the node's listener, then the containers' (see the module docstring)."""
        listen = self.settings.listen
        if listen is not None:
            host, port = split_host_port(listen)
            try:
                self.listener = await open_listener(self.resolver, host, port)
            except OSError as exc:
                if self.settings.required:
                    raise RuntimeBackendError(f"cannot answer DNS on {listen}: {exc}") from exc
                log.warning("dns.listen_failed", listen=listen, error=str(exc))
            else:
                log.info("dns.listening", address=self.listener.address)
        await self.watch_runtimes(runtimes)

    async def watch_runtimes(self, runtimes: Mapping[str, Runtime]) -> None:
        """Answer on the gateway of each runtime that has one and has no listener yet.

        Called at start and whenever the runtimes changed (an engine that came up later).
        """
        if not self.settings.containers:
            return
        for name, runtime in runtimes.items():
            if name in self.container_listeners:
                continue
            try:
                gateway = await runtime.dns_gateway()
            except RuntimeBackendError as exc:  # the engine is down: try when it is back
                log.debug("dns.no_gateway", runtime=name, error=str(exc))
                continue
            if gateway is None:
                continue
            try:
                listener = await open_listener(
                    self.resolver,
                    gateway,
                    CONTAINER_DNS_PORT,
                    Perspective.container(gateway),
                    freebind=True,
                )
            except OSError as exc:
                log.warning(
                    "dns.container_listen_failed",
                    runtime=name,
                    address=f"{gateway}:{CONTAINER_DNS_PORT}",
                    error=str(exc),
                )
                continue
            self.container_listeners[name] = listener
            runtime.use_dns(gateway)
            log.info("dns.listening_for_containers", runtime=name, address=listener.address)

    async def aclose(self) -> None:
        for listener in [self.listener, *self.container_listeners.values()]:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.aclose()
        self.listener = None
        self.container_listeners.clear()
