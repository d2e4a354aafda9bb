"""The agent's DNS: a catalog fed by hand, real UDP and TCP sockets, dnspython as the client."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.discovery.catalog import Catalog, Endpoint, EndpointPort, message
from shoal.discovery.dns import TTL, DnsListener, Resolver, open_listener
from shoal.discovery.perspective import Perspective

NODE = "n1"


def endpoint(
    service: str,
    slot: int,
    port: int,
    *,
    node: str = NODE,
    address: str = "127.0.0.2",
    container: str | None = None,
    target: int | None = None,
) -> Endpoint:
    return Endpoint(
        service=service,
        task_id=f"{service}-task-{slot}",
        slot=slot,
        node_id=node,
        address=address,
        ports=[EndpointPort(name="http", port=port, target=target)],
        container_address=container,
    )


def fed() -> Catalog:
    catalog = Catalog()
    catalog.apply(
        message(
            {
                "web": [
                    endpoint("web", 1, 20001),
                    endpoint("web", 2, 20002),
                    endpoint("web", 3, 20003, node="n2", address="127.0.0.3"),
                ],
                "db": [],
                "v6": [endpoint("v6", 1, 20010, address="::1")],
                "shop-api": [
                    endpoint("shop-api", 1, 8080, container="172.17.0.5", target=80),
                ],
            },
            full=True,
        )
    )
    return catalog


@pytest.fixture
async def listener() -> AsyncIterator[DnsListener]:
    served = await open_listener(Resolver(fed(), NODE), "127.0.0.1", 0)
    yield served
    await served.aclose()


def where(listener: DnsListener) -> tuple[str, int]:
    host, _, port = listener.address.rpartition(":")
    return host, int(port)


async def ask(
    listener: DnsListener, name: str, rdtype: str = "A", *, tcp: bool = False
) -> dns.message.Message:
    host, port = where(listener)
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(query, host, port=port, timeout=5)
    return await dns.asyncquery.udp(query, host, port=port, timeout=5)


def answers(response: dns.message.Message, rdtype: str) -> list[str]:
    return sorted(
        rdata.to_text()
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.from_text(rdtype)
        for rdata in rrset
    )


@pytest.mark.parametrize("tcp", [pytest.param(False, id="udp"), pytest.param(True, id="tcp")])
async def test_a_records_are_the_nodes_of_healthy_tasks(listener: DnsListener, tcp: bool) -> None:
    response = await ask(listener, "web.shoal.", tcp=tcp)
    assert response.rcode() == dns.rcode.NOERROR
    # Two tasks on 127.0.0.2 give one address: de-duplicated.
    assert answers(response, "A") == ["127.0.0.2", "127.0.0.3"]
    assert response.answer[0].ttl == TTL
    assert response.flags & dns.flags.AA
    assert not response.flags & dns.flags.RA


async def test_one_task_by_slot(listener: DnsListener) -> None:
    assert answers(await ask(listener, "3.web.shoal."), "A") == ["127.0.0.3"]
    assert answers(await ask(listener, "1.web.shoal."), "A") == ["127.0.0.2"]


async def test_aaaa_and_the_family_a_service_lacks(listener: DnsListener) -> None:
    assert answers(await ask(listener, "v6.shoal.", "AAAA"), "AAAA") == ["::1"]
    empty = await ask(listener, "v6.shoal.", "A")
    assert empty.rcode() == dns.rcode.NOERROR and not empty.answer
    assert empty.authority[0].rdtype == dns.rdatatype.SOA


@pytest.mark.parametrize("tcp", [pytest.param(False, id="udp"), pytest.param(True, id="tcp")])
async def test_srv_lists_every_endpoint_with_its_port(listener: DnsListener, tcp: bool) -> None:
    response = await ask(listener, "_http._tcp.web.shoal.", "SRV", tcp=tcp)
    assert answers(response, "SRV") == [
        "0 1 20001 1.web.shoal.",
        "0 1 20002 2.web.shoal.",
        "0 1 20003 3.web.shoal.",
    ]
    glue = {rrset.name.to_text(): [r.to_text() for r in rrset] for rrset in response.additional}
    assert glue == {
        "1.web.shoal.": ["127.0.0.2"],
        "2.web.shoal.": ["127.0.0.2"],
        "3.web.shoal.": ["127.0.0.3"],
    }


async def test_a_port_protocol_or_instance_nobody_has_is_no_such_name(
    listener: DnsListener,
) -> None:
    # No records exist at or below these names: NXDOMAIN (RFC 8020), not an empty answer.
    for name, rdtype in (
        ("_grpc._tcp.web.shoal.", "SRV"),
        ("_http._udp.web.shoal.", "SRV"),
        ("99.web.shoal.", "A"),
        ("foo.web.shoal.", "A"),
        ("01.web.shoal.", "A"),
    ):
        response = await ask(listener, name, rdtype)
        assert response.rcode() == dns.rcode.NXDOMAIN and not response.answer, name


async def test_unknown_names_are_nxdomain_and_empty_ones_nodata(listener: DnsListener) -> None:
    for name in ("nope.shoal.", "7.nope.shoal.", "_http._tcp.nope.shoal.", "a.b.c.shoal."):
        response = await ask(listener, name)
        assert response.rcode() == dns.rcode.NXDOMAIN, name
        assert response.authority[0].rdtype == dns.rdatatype.SOA
    for name in ("db.shoal.", "shoal.", "shop.shoal.", "_tcp.web.shoal."):
        response = await ask(listener, name)
        assert response.rcode() == dns.rcode.NOERROR and not response.answer, name
        assert response.authority[0].rdtype == dns.rdatatype.SOA
        assert response.authority[0].ttl == TTL


async def test_names_outside_the_zone_are_refused(listener: DnsListener) -> None:
    response = await ask(listener, "example.com.")
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.answer and not response.flags & dns.flags.RA


async def test_before_the_first_catalog_every_name_is_servfail() -> None:
    catalog = Catalog()
    served = await open_listener(Resolver(catalog, NODE), "127.0.0.1", 0)
    try:
        assert (await ask(served, "web.shoal.")).rcode() == dns.rcode.SERVFAIL
        catalog.apply(message({"web": [endpoint("web", 1, 20001)]}, full=True))
        assert answers(await ask(served, "web.shoal."), "A") == ["127.0.0.2"]
    finally:
        await served.aclose()


async def test_the_last_catalog_answers_and_changes_show_at_once(listener: DnsListener) -> None:
    catalog = listener.resolver.catalog
    catalog.apply(message({"web": [endpoint("web", 2, 20002)]}, full=False, removed=["db"]))
    assert answers(await ask(listener, "_http._tcp.web.shoal.", "SRV"), "SRV") == [
        "0 1 20002 2.web.shoal."
    ]
    assert (await ask(listener, "db.shoal.")).rcode() == dns.rcode.NXDOMAIN


async def test_stack_services_answer_to_their_names_within_the_stack(
    listener: DnsListener,
) -> None:
    assert answers(await ask(listener, "api.shop.shoal."), "A") == ["127.0.0.2"]
    assert answers(await ask(listener, "shop-api.shoal."), "A") == ["127.0.0.2"]
    response = await ask(listener, "_http._tcp.api.shop.shoal.", "SRV")
    assert answers(response, "SRV") == ["0 1 8080 1.shop-api.shoal."]


async def test_containers_get_container_addresses_of_this_nodes_containers() -> None:
    resolver = Resolver(fed(), NODE)
    served = await open_listener(resolver, "127.0.0.1", 0, Perspective.container("172.17.0.1"))
    try:
        # The container endpoint here: its own address and the port inside it.
        assert answers(await ask(served, "api.shop.shoal."), "A") == ["172.17.0.5"]
        srv = await ask(served, "_http._tcp.shop-api.shoal.", "SRV")
        assert answers(srv, "SRV") == ["0 1 80 1.shop-api.shoal."]
        # Processes here on a loopback address: the gateway; elsewhere: their node.
        assert answers(await ask(served, "web.shoal."), "A") == ["127.0.0.3", "172.17.0.1"]
    finally:
        await served.aclose()


async def test_answers_are_shuffled() -> None:
    catalog = Catalog()
    many = [endpoint("web", i, 20000 + i, address=f"127.0.1.{i}") for i in range(1, 9)]
    catalog.apply(message({"web": many}, full=True))
    resolver = Resolver(catalog, NODE, rng=random.Random(7))
    orders = set()
    for _ in range(20):
        wire = resolver.handle(dns.message.make_query("web.shoal.", "A").to_wire())
        assert wire is not None
        response = dns.message.from_wire(wire)
        orders.add(tuple(r.to_text() for r in response.answer[0]))
        srv = resolver.handle(dns.message.make_query("_http._tcp.web.shoal.", "SRV").to_wire())
        assert srv is not None
        orders.add(tuple(r.to_text() for r in dns.message.from_wire(srv).answer[0]))
    assert len(orders) > 10  # 8! orders each: repeats would be a broken shuffle


async def test_a_large_udp_answer_is_truncated_and_complete_over_tcp() -> None:
    catalog = Catalog()
    many = [
        endpoint("web", i, 20000 + i, address=f"127.0.{i // 200}.{i % 200}") for i in range(1, 120)
    ]
    catalog.apply(message({"web": many}, full=True))
    served = await open_listener(Resolver(catalog, NODE), "127.0.0.1", 0)
    try:
        udp = await ask(served, "_http._tcp.web.shoal.", "SRV")
        assert udp.flags & dns.flags.TC
        tcp = await ask(served, "_http._tcp.web.shoal.", "SRV", tcp=True)
        assert not tcp.flags & dns.flags.TC and len(answers(tcp, "SRV")) == 119
    finally:
        await served.aclose()


async def test_garbage_gets_formerr_or_nothing_and_the_listener_lives_on(
    listener: DnsListener,
) -> None:
    host, port = where(listener)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, port))
        header = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
        await loop.sock_sendall(sock, header + b"\x07broken")
        reply = await asyncio.wait_for(loop.sock_recv(sock, 512), 5)
        assert reply[:2] == b"\xbe\xef" and reply[3] & 0x0F == dns.rcode.FORMERR
        await loop.sock_sendall(sock, b"\x01")  # no header: dropped
    # A TCP client that sends half a message and leaves.
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"\x00\x40abc")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    assert answers(await ask(listener, "web.shoal."), "A") == ["127.0.0.2", "127.0.0.3"]
    assert answers(await ask(listener, "web.shoal.", tcp=True), "A") == ["127.0.0.2", "127.0.0.3"]


# One resolver for the property tests; ``seen`` collects every outcome it observed.
seen: list[str] = []
PROPERTY_RESOLVER = Resolver(fed(), NODE, observe=seen.append)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    seen.clear()
    reply = PROPERTY_RESOLVER.handle(data, udp=True)
    assert "error" not in seen
    if reply is not None:
        assert len(reply) >= 12 and reply[:2] == data[:2]


label = st.one_of(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20),
    st.sampled_from(["web", "shop", "api", "db", "v6", "_http", "_tcp", "_udp", "1", "3", "n1"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(label, min_size=0, max_size=5),
    st.sampled_from(["A", "AAAA", "SRV", "ANY", "TXT", "SOA", "MX"]),
    st.booleans(),
)
def test_random_names_never_raise(labels: list[str], rdtype: str, container: bool) -> None:
    seen.clear()
    perspective = Perspective.container("172.17.0.1") if container else Perspective()
    name = dns.name.Name([*(x.encode() for x in labels), *dns.name.from_text("shoal.").labels])
    wire = PROPERTY_RESOLVER.handle(dns.message.make_query(name, rdtype).to_wire(), perspective)
    assert wire is not None and "error" not in seen
    response = dns.message.from_wire(wire)
    assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)


def outside_address() -> str:
    """An address of this machine that is not loopback (the one its default route uses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        address = str(probe.getsockname()[0])
    assert not ipaddress.ip_address(address).is_loopback, "this machine has no route out"
    return address


async def test_a_containers_listener_answers_only_its_subnets_and_loopback() -> None:
    """A listener on an engine's gateway answers the containers of that engine's networks
    (and this machine's loopback); queries from anywhere else are dropped (UDP) or the
    connection closed (TCP): it is no open resolver for whoever reaches the gateway."""
    resolver = Resolver(fed(), NODE)
    served = await open_listener(
        resolver,
        "0.0.0.0",
        0,
        Perspective.container("172.17.0.1"),
        sources=[ipaddress.ip_network("10.123.0.0/16")],
    )
    try:
        _, port = where(served)
        outside = outside_address()
        query = dns.message.make_query("web.shoal.", "A")
        with pytest.raises(dns.exception.Timeout):
            await dns.asyncquery.udp(query, outside, port=port, timeout=1, source=outside)
        with pytest.raises((EOFError, ConnectionError)):
            await dns.asyncquery.tcp(query, outside, port=port, timeout=5, source=outside)
        local = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=5)
        assert answers(local, "A") == ["127.0.0.3", "172.17.0.1"]
        served.allow([ipaddress.ip_network(f"{outside}/32")])  # the engine's subnet now
        got = await dns.asyncquery.udp(query, outside, port=port, timeout=5, source=outside)
        assert answers(got, "A") == ["127.0.0.3", "172.17.0.1"]
        got = await dns.asyncquery.tcp(query, outside, port=port, timeout=5, source=outside)
        assert answers(got, "A") == ["127.0.0.3", "172.17.0.1"]
    finally:
        await served.aclose()
