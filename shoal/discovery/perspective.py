"""Where an endpoint is reached from: a process on some node, or a container on this one.

The catalog holds, for each endpoint, its node's advertise address and published ports,
and for a container its own address on its engine network and the ports inside it. Who
asks decides which of those works:

- a process (``HOST``) reaches every endpoint at its node's address and published port;
- a container on this node (``Perspective.container(gateway)``, ``gateway`` being the
  host's address on the container's network) reaches a container endpoint of this node
  at its container address and in-container port, a process endpoint of this node whose
  node address is a loopback one at ``gateway`` (the loopback is the host's own, not the
  container's), and everything on other nodes like a process does: at their node's
  address and published port (there is no overlay network).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from shoal.discovery.catalog import Endpoint, EndpointPort

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Perspective:
    """Who asks: a process (``gateway`` None) or a container behind ``gateway``."""

    gateway: str | None = None

    @classmethod
    def container(cls, gateway: str) -> Perspective:
        return cls(gateway)

    def address(self, endpoint: Endpoint, node_id: str) -> IP | None:
        """The address to reach ``endpoint`` at; None for a host name (not an IP)."""
        if self.gateway is not None and endpoint.node_id == node_id:
            if endpoint.container_address:
                return ip(endpoint.container_address)
            address = ip(endpoint.address)
            if address is None or address.is_loopback:
                return ip(self.gateway)
            return address
        return ip(endpoint.address)

    def port(self, endpoint: Endpoint, port: EndpointPort, node_id: str) -> int:
        """The port number to reach ``port`` of ``endpoint`` at."""
        inside = self.gateway is not None and endpoint.node_id == node_id
        if inside and endpoint.container_address and port.target:
            return port.target
        return port.port


HOST = Perspective()


@functools.lru_cache(maxsize=4096)  # a few node addresses, parsed for every endpoint
def ip(text: str) -> IP | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:  # a host name as advertise address
        return None
