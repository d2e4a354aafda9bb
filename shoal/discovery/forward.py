"""Names outside ``shoal.``, asked by a container: relayed to the host's own name servers.

A container started by shoal gets the agent's listener as its only name server (see
``shoal.runtimes.containers``). Listing the host's servers beside it would not do: some
resolvers (musl's, in Alpine images) ask every listed server at once and take the first
answer, and an upstream server's ``NXDOMAIN`` for ``web.shoal`` would often win. So the
container listener answers the zone itself and relays everything else, as Docker's
embedded DNS does. The agent runs on the host, so it can use the host's servers as
``/etc/resolv.conf`` lists them, loopback stubs (systemd-resolved's 127.0.0.53) included.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import structlog

log = structlog.get_logger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")
# Seconds each upstream server gets before the next one is asked.
TIMEOUT = 2.0


class Forwarder:
    """Relays one query to the first of ``servers`` that answers (``SERVFAIL`` if none)."""

    def __init__(self, servers: Sequence[tuple[str, int]], timeout: float = TIMEOUT) -> None:
        self.servers = list(servers)
        self.timeout = timeout

    @classmethod
    def from_resolv_conf(cls, path: Path = RESOLV_CONF) -> Forwarder:
        servers: list[tuple[str, int]] = []
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    with contextlib.suppress(ValueError):
                        servers.append((str(ipaddress.ip_address(words[1].split("%")[0])), 53))
        return cls(servers)

    async def relay(self, query: dns.message.Message, *, tcp: bool) -> bytes:
        for host, port in self.servers:
            try:
                if tcp:
                    answer = await dns.asyncquery.tcp(query, host, self.timeout, port)
                else:
                    answer = await dns.asyncquery.udp(
                        query, host, self.timeout, port, raise_on_truncation=False
                    )
                return answer.to_wire()
            except (dns.exception.DNSException, OSError) as exc:
                log.debug("dns.forward_failed", server=f"{host}:{port}", error=str(exc))
        failed = dns.message.make_response(query, recursion_available=True)
        failed.set_rcode(dns.rcode.SERVFAIL)
        return failed.to_wire()
