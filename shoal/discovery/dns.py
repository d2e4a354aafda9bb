"""DNS for the ``shoal.`` zone, answered by every agent from its copy of the catalog.

The agent answers from ``shoal.discovery.catalog.Catalog``, so lookups stay on the node
and keep working while the managers are away (with the last catalog they sent). Names,
relative to ``shoal.``:

================================  ========================================================
``<service>``                     ``A``/``AAAA``: the addresses of the nodes that run a
                                  healthy task of it, de-duplicated, shuffled per answer
``<instance>.<service>``          the same for one task: ``<instance>`` is its slot, or
                                  the node's id for a global service (slot 0)
``_<port>._<proto>.<service>``    ``SRV``: one record per endpoint with that named port,
                                  target ``<instance>.<service>.shoal.``, whose address
                                  is in the additional section
``<name>.<stack>``                another name for the service ``<stack>-<name>`` (how a
                                  stack names its services), in each form above
================================  ========================================================

Answers: a name the catalog does not know is ``NXDOMAIN`` (so is an instance that is not
a healthy endpoint now, and a port or protocol none of the service's endpoints has); a
known service with no healthy endpoint (or none of the asked family) is ``NODATA``
(``NOERROR``, no answer, the zone's ``SOA`` in the authority section, so the empty answer
is cached for its short TTL too).
Every record has a TTL of ``TTL`` seconds. There is no recursion (``RA`` is clear) and a
name outside the zone is ``REFUSED``, except on a containers' listener, which relays it to
the host's name servers (``shoal.discovery.forward``). Before the first catalog arrived
nothing is known for sure: every name is ``SERVFAIL``, so a client tries again instead of
caching a ``NXDOMAIN``. A packet that is not a DNS query is dropped (no header) or ``FORMERR``.

Sources: a listener containers use (on an engine's bridge gateway, where anything that
reaches the gateway could ask) answers only this machine's loopback and the subnets of the
engines' networks it serves; a query from anywhere else is dropped over UDP (no answer to
reflect off it) and its connection closed over TCP. The node's own listener answers anyone
who reaches the address it was given.

Perspectives: a query that came in on a listener containers use is answered as a
container on this node sees the cluster (``shoal.discovery.perspective``): a container
endpoint on this node by its container address (and its in-container port in ``SRV``).

The server speaks UDP (at most ``UDP_RECORDS`` records, picked at random, cut at 512 bytes
or the client's EDNS size with ``TC`` set, so the client asks again over TCP) and TCP
(length-prefixed, several queries per connection, closed after ``TCP_IDLE`` seconds of
silence).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import structlog
from dns.rdataclass import IN
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

from shoal.discovery.catalog import Catalog, Endpoint
from shoal.discovery.forward import Forwarder
from shoal.discovery.perspective import HOST, IP, Perspective

log = structlog.get_logger(__name__)

ZONE = dns.name.from_text("shoal.")
# Seconds every answer (and, through the SOA's minimum, every empty answer) may be cached.
TTL = 2
TCP_IDLE = 10.0
# The most simultaneous TCP connections one listener serves; more are closed at once.
TCP_CONNECTIONS = 64
# UDP answers without EDNS stop at 512 bytes (RFC 1035); with EDNS, at the client's size
# up to this (the common safe ceiling against fragmentation).
UDP_PLAIN = 512
UDP_CEILING = 1232
# A UDP answer lists at most this many records, picked at random (more would not fit in
# UDP_CEILING bytes anyway; building them cost the agent's loop seconds for a large
# service). TCP answers list them all.
UDP_RECORDS = 32
# The zone's SOA: refresh, retry, expire (only meaningful to secondaries, which do not
# exist) and the negative-caching TTL.
_SOA = "ns.shoal. hostmaster.shoal. {serial} 60 10 3600 " + str(TTL)
_HEADER = 12
# Linux's socket options (Python names neither): bind an address not (yet) configured.
_IP_FREEBIND = 15
_IPV6_FREEBIND = 78

Observe = Callable[[str], None]
# dnspython's record constructors (untyped there); built directly, not parsed from text.
_A = cast(Callable[..., dns.rdata.Rdata], A)
_AAAA = cast(Callable[..., dns.rdata.Rdata], AAAA)
_SRV = cast(Callable[..., dns.rdata.Rdata], SRV)


@dataclass(frozen=True, slots=True)
class _Found:
    """What a name in the zone resolved to."""

    service: str
    endpoints: tuple[Endpoint, ...]
    # SRV names only: the named port and its protocol.
    port: tuple[str, str] | None = None


class Resolver:
    """Turns one query's wire bytes into the response's; see the module docstring."""

    def __init__(
        self,
        catalog: Catalog,
        node_id: str,
        *,
        rng: random.Random | None = None,
        observe: Observe | None = None,
    ) -> None:
        self.catalog = catalog
        self.node_id = node_id
        self._rng = rng or random.Random()
        # Called with each answer's rcode name, or "error" for a query the handler failed
        # on (metrics).
        self._observe = observe or (lambda rcode: None)

    # ---------------------------------------------------------------- wire

    def handle(
        self, wire: bytes, perspective: Perspective = HOST, *, udp: bool = False
    ) -> bytes | None:
        """The response to ``wire``; None when it is not worth one. Never raises."""
        try:
            return self._handle(wire, perspective, udp)
        except Exception:  # a bug must cost one answer, never the listener
            log.exception("dns.handler_failed")
            self._observe("error")
            return _bare(wire, dns.rcode.SERVFAIL)

    def _handle(self, wire: bytes, perspective: Perspective, udp: bool) -> bytes | None:
        if len(wire) < _HEADER or wire[2] & 0x80:  # no header, or a response: no answer
            return None
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            self._observe("FORMERR")
            return _bare(wire, dns.rcode.FORMERR)
        if query.opcode() != dns.opcode.QUERY:
            self._observe("NOTIMP")
            return _bare(wire, dns.rcode.NOTIMP)
        response = dns.message.make_response(query, recursion_available=False)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            self._answer(query.question[0], response, perspective, UDP_RECORDS if udp else None)
        self._observe(dns.rcode.to_text(response.rcode()))
        limit = 65535
        if udp:  # the client's EDNS size, else the classic 512; TC tells it to use TCP
            limit = UDP_PLAIN
            if query.edns >= 0:
                limit = min(max(query.payload, UDP_PLAIN), UDP_CEILING)
        return response.to_wire(max_size=limit, prefer_truncation=True)

    # ------------------------------------------------------------- answers

    def _answer(
        self,
        question: dns.rrset.RRset,
        response: dns.message.Message,
        perspective: Perspective,
        most: int | None,
    ) -> None:
        name, rdtype = question.name, question.rdtype
        if question.rdclass != dns.rdataclass.IN or not name.is_subdomain(ZONE):
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        if not self.catalog.received:
            response.set_rcode(dns.rcode.SERVFAIL)
            return
        labels = [
            label.decode("ascii", "replace").lower() for label in name.relativize(ZONE).labels
        ]
        if not labels:  # the apex: its SOA, nothing else
            if rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
                response.answer.append(self._soa())
            else:
                response.authority.append(self._soa())
            return
        found = self._lookup(labels)
        if found is None:
            if not self._has_children(labels):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa())
            return
        if found.port is not None:
            if rdtype in (dns.rdatatype.SRV, dns.rdatatype.ANY):
                self._srv(name, found, response, perspective, most)
        elif rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.ANY):
            if rdtype == dns.rdatatype.ANY:
                wanted: tuple[int, ...] = (4, 6)
            else:
                wanted = (4,) if rdtype == dns.rdatatype.A else (6,)
            addresses = self._addresses(found.endpoints, perspective)[:most]
            for version in wanted:
                rrset = _address_rrset(name, [a for a in addresses if a.version == version])
                if rrset is not None:
                    response.answer.append(rrset)
        if not response.answer:
            response.authority.append(self._soa())

    def _srv(
        self,
        name: dns.name.Name,
        found: _Found,
        response: dns.message.Message,
        perspective: Perspective,
        most: int | None,
    ) -> None:
        assert found.port is not None
        port_name, protocol = found.port
        records: list[dns.rdata.Rdata] = []
        glued: set[dns.name.Name] = set()  # a set: a list scan per record was quadratic
        for endpoint in self._shuffled(found.endpoints):
            if most is not None and len(records) == most:
                break
            port = endpoint.port(port_name)
            if port is None or port.protocol != protocol:
                continue
            address = perspective.address(endpoint, self.node_id)
            number = perspective.port(endpoint, port, self.node_id)
            target = dns.name.from_text(f"{_instance(endpoint)}.{endpoint.service}", ZONE)
            records.append(_SRV(IN, dns.rdatatype.SRV, 0, 1, number, target))
            if address is not None and target not in glued:
                rrset = _address_rrset(target, [address])
                if rrset is not None:
                    glued.add(target)
                    response.additional.append(rrset)
        if records:
            response.answer.append(dns.rrset.from_rdata_list(name, TTL, records))

    def _addresses(self, endpoints: Iterable[Endpoint], perspective: Perspective) -> list[IP]:
        seen: dict[IP, None] = {}
        for endpoint in endpoints:
            address = perspective.address(endpoint, self.node_id)
            if address is not None:
                seen.setdefault(address, None)
        addresses = list(seen)
        self._rng.shuffle(addresses)
        return addresses

    def _shuffled(self, endpoints: tuple[Endpoint, ...]) -> list[Endpoint]:
        listed = list(endpoints)
        self._rng.shuffle(listed)
        return listed

    def _soa(self) -> dns.rrset.RRset:
        return dns.rrset.from_text(ZONE, TTL, "IN", "SOA", _SOA.format(serial=self.catalog.version))

    # --------------------------------------------------------------- names

    def _service(self, labels: list[str]) -> str | None:
        """The service ``labels`` name: ``[web]`` or, for a stack, ``[web, stack]``."""
        if len(labels) == 1 and self.catalog.endpoints(labels[0]) is not None:
            return labels[0]
        if len(labels) == 2:
            joined = f"{labels[1]}-{labels[0]}"
            if self.catalog.endpoints(joined) is not None:
                return joined
        return None

    def _lookup(self, labels: list[str]) -> _Found | None:
        if (
            len(labels) >= 3
            and labels[0].startswith("_")
            and labels[1] in ("_tcp", "_udp")
            and len(labels[0]) > 1
        ):
            inner = self._lookup(labels[2:])
            if inner is None or inner.port is not None:
                return None
            port = (labels[0][1:], labels[1][1:])
            if inner.endpoints and not any(_has_port(e, *port) for e in inner.endpoints):
                return None  # a port none of its endpoints has: no such name
            return _Found(inner.service, inner.endpoints, port)
        service = self._service(labels)
        if service is not None:
            return _Found(service, self.catalog.endpoints(service) or ())
        service = self._service(labels[1:])
        if service is None:
            return None
        instance = labels[0]
        one = tuple(e for e in self.catalog.endpoints(service) or () if _instance(e) == instance)
        # An instance is known only while it is an endpoint (the catalog lists healthy
        # tasks only): a slot that does not exist and one not healthy now are both NXDOMAIN,
        # cached for ``TTL`` seconds at most.
        return _Found(service, one) if one else None

    def _has_children(self, labels: list[str]) -> bool:
        """Whether a name exists below ``labels`` (an empty non-terminal: NODATA, not NXDOMAIN).

        ``<stack>`` is one when a service ``<stack>-...`` exists, ``_<proto>.<service>`` when
        the service is known.
        """
        if len(labels) == 1:
            prefix = f"{labels[0]}-"
            return any(s.startswith(prefix) for s in self.catalog.services())
        if labels[0] in ("_tcp", "_udp"):
            found = self._lookup(labels[1:])
            return found is not None and found.port is None
        return False


def _has_port(endpoint: Endpoint, name: str, protocol: str) -> bool:
    port = endpoint.port(name)
    return port is not None and port.protocol == protocol


def _instance(endpoint: Endpoint) -> str:
    """The first label of one task's name: its slot, or its node for a global service."""
    if endpoint.slot > 0:
        return str(endpoint.slot)
    label = endpoint.node_id.lower()
    valid = label and len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)
    return label if valid and not label.isdigit() else f"task-{endpoint.task_id[:12].lower()}"


def _address_rrset(name: dns.name.Name, addresses: list[IP]) -> dns.rrset.RRset | None:
    if not addresses:
        return None
    # Rdata built directly: parsing record text cost most of a large answer's time.
    if addresses[0].version == 4:
        records = [_A(IN, dns.rdatatype.A, str(a)) for a in addresses]
    else:
        records = [_AAAA(IN, dns.rdatatype.AAAA, str(a)) for a in addresses]
    return dns.rrset.from_rdata_list(name, TTL, records)


def _bare(wire: bytes, rcode: dns.rcode.Rcode) -> bytes | None:
    """A header-only response with ``wire``'s id and ``rcode`` (for what cannot be parsed)."""
    if len(wire) < _HEADER:
        return None
    query_id = struct.unpack("!H", wire[:2])[0]
    opcode = (wire[2] >> 3) & 0xF
    flags = 0x8000 | (opcode << 11) | (int(rcode) & 0xF)
    if wire[2] & 0x01:  # keep RD as asked
        flags |= 0x0100
    return struct.pack("!HHHHHH", query_id, flags, 0, 0, 0, 0)


# ------------------------------------------------------------------------- server


# Relayed queries in flight on one listener, at most (more are answered REFUSED).
RELAYS = 256


def _to_relay(wire: bytes, forwarder: Forwarder | None) -> dns.message.Message | None:
    """The query, if ``forwarder`` should relay it: one question, outside the zone."""
    if forwarder is None or not forwarder.servers or len(wire) < _HEADER or wire[2] & 0x80:
        return None
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
        return None
    return None if query.question[0].name.is_subdomain(ZONE) else query


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(
        self,
        resolver: Resolver,
        perspective: Perspective,
        forwarder: Forwarder | None,
        accepts: Callable[[object], bool],
    ) -> None:
        self.resolver = resolver
        self.perspective = perspective
        self.forwarder = forwarder
        self.accepts = accepts
        self.transport: asyncio.DatagramTransport | None = None
        self.relays: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self.accepts(addr[0]):
            return  # dropped, not refused: no answer to bounce off this listener
        query = _to_relay(data, self.forwarder)
        if query is not None and len(self.relays) < RELAYS:
            relay = asyncio.create_task(self._relay(query, addr))
            self.relays.add(relay)
            relay.add_done_callback(self.relays.discard)
            return
        reply = self.resolver.handle(data, self.perspective, udp=True)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    async def _relay(self, query: dns.message.Message, addr: tuple[str | int, ...]) -> None:
        assert self.forwarder is not None
        reply = await self.forwarder.relay(query, tcp=False)
        if self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("dns.udp_error", error=str(exc))


class DnsListener:
    """One address the resolver answers on, over UDP and TCP; ``aclose`` releases both."""

    def __init__(
        self,
        resolver: Resolver,
        perspective: Perspective,
        forwarder: Forwarder | None = None,
        sources: Iterable[Network] | None = None,
    ) -> None:
        self.resolver = resolver
        self.perspective = perspective
        # Containers' listeners: names outside the zone go to the host's servers.
        self.forwarder = forwarder
        # Who may ask besides loopback (None: anyone), see ``accepts``.
        self.sources: list[Network] | None = None if sources is None else list(sources)
        self.address = ""
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def allow(self, networks: Iterable[Network]) -> None:
        """Answer queries from ``networks`` too (another engine's subnets on this gateway)."""
        self.sources = [*(self.sources or []), *networks]

    def accepts(self, source: object) -> bool:
        """Whether a query from ``source`` (an address) is answered: from anywhere on a
        listener without ``sources``; else from loopback or one of ``sources``."""
        if self.sources is None:
            return True
        try:
            address = ipaddress.ip_address(str(source).partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback or any(address in network for network in self.sources)

    async def start(self, host: str, port: int, *, freebind: bool = False) -> None:
        """Bind ``host:port`` (port 0: any free one, the same for UDP and TCP).

        ``freebind``: bind even while ``host`` is not (yet) an address of this machine, as
        an engine's bridge is only there once its first container runs.
        """
        loop = asyncio.get_running_loop()
        for attempt in range(5):
            udp = _bound(host, port, socket.SOCK_DGRAM, freebind)
            bound = int(udp.getsockname()[1])
            try:
                tcp = _bound(host, bound, socket.SOCK_STREAM, freebind)
            except OSError:
                udp.close()
                if port != 0 or attempt == 4:  # a fixed port taken over TCP: say so
                    raise
                continue
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self.resolver, self.perspective, self.forwarder, self.accepts),
                sock=udp,
            )
            self._udp = transport
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
            shown = f"[{host}]" if ":" in host else host
            self.address = f"{shown}:{bound}"
            return

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        if len(self._connections) >= TCP_CONNECTIONS or not self.accepts(peer[0] if peer else ""):
            writer.close()
            return
        self._connections.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    wire = await reader.readexactly(size)
                query = _to_relay(wire, self.forwarder)
                if query is not None and self.forwarder is not None:
                    reply: bytes | None = await self.forwarder.relay(query, tcp=True)
                else:
                    reply = self.resolver.handle(wire, self.perspective)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def aclose(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._tcp.wait_closed()


def _bound(host: str, port: int, kind: socket.SocketKind, freebind: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if freebind:
            if family == socket.AF_INET:
                sock.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def open_listener(
    resolver: Resolver,
    host: str,
    port: int,
    perspective: Perspective = HOST,
    *,
    freebind: bool = False,
    forwarder: Forwarder | None = None,
    sources: Iterable[Network] | None = None,
) -> DnsListener:
    """A started ``DnsListener`` on ``host:port``; raises ``OSError`` if it cannot bind."""
    listener = DnsListener(resolver, perspective, forwarder, sources)
    await listener.start(host, port, freebind=freebind)
    return listener
